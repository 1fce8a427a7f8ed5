"""Memory that scales: LoRA -> MergeAdapterWeights -> ModelBuilder int4 on random models from 0.1B to 3.8B.

Each model is a random-weight Phi-3 (or Llama) built on the meta device and written tensor by tensor as bf16
safetensors (``honed.models.shards.ShardWriter``), so no fp32 copy is ever held.  The workflow is the seed's
shape: LoRA r16/alpha32 on every linear layer, sequence length 128 (rows filled to it), 8 rows a step, a few
steps; MergeAdapterWeights; ModelBuilder int4 with ``int4_algo_config: rtn`` and no fidelity rows (honed rounds the
codes itself, streamed, ``honed.models.rtn``; ``int4_codes_mb`` in a row says so).  Each pass runs
in its own ``honed run`` process over one cache (the earlier passes come from it), so each pass's peak RSS
(``wait4`` of its process) is its own.  Reported per pass: wall time (the pass, from footprints), peak RSS,
bytes written, and train tokens/s; the goals: merge and build peak <= 1.2x the model's bf16 bytes, LoRA peak
<= stored bytes + activations + adapter optimizer state (``honed.models.memory.lora_estimate`` without the
runtime term... plus it).  JSON is rewritten after each model, so a long run reports what finished.

    python bench/scale.py                          # phi3 0.1b and 0.5b
    python bench/scale.py --sizes 0.1b 0.5b 1.5b 3.8b --family phi3 llama
    python bench/scale.py --smoke                  # two tiny models, seconds
    python bench/scale.py --seed --sizes 3.8b --append   # the seed's own config on the 3.8B model

``--seed`` runs, per model, the seed's config as the seed writes it (Olive's schema, ``seed_workflow``): QLoRA's
LoRA settings without the 4-bit base (r 64, alpha 64, dropout 0.1 on o_proj/qkv_proj, batch 1 x 4 accumulated,
lr 1e-4, a 30% eval split with ``evaluation_strategy: steps`` and ``eval_steps: 187``, which a few steps never
reach: no evaluation may run), the emotion rows joined to 128 tokens, MergeAdapterWeights, and ``{type:
ModelBuilder, precision: int4}`` with its defaults, the fidelity check on 32 rows included.  It is one ``honed
run`` (the output folder holds only the int4 model: a 3.8B merge is 7.2 GiB on disk) in its own work folder
(``work-<model>-seed``; the base model is reused); per pass: wall time and the sampled peak RSS from footprints,
the process's peak (wait4), the fidelity metrics, whether any evaluation ran, and a few tokens generated from the
genai folder in a fresh process.

Olive is not run side by side here: it needs bench/.work/olive-venv (``bench/run.py`` builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import benchlib

SHAPES: dict[str, dict[str, int]] = {
    # hidden, intermediate, layers, heads (vocab 32064, Phi-3's, untied head)
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    "0.1b": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12},
    "0.5b": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16},
    "1.5b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 28, "num_attention_heads": 16},
    "3.8b": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32},
}
VOCAB = 32064
SEQ = 128
BATCH = 8  # rows a step (--batch)


def build_model(folder: Path, family: str, size: str) -> Path:
    """A random ``family`` model of ``size`` in ``folder``: config from the meta device, weights drawn tensor by
    tensor directly in bf16 (norms at 1) and written shard by shard; the tiny BPE tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config

    from honed.models.shards import SHARD_BYTES, ShardWriter

    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tok = benchlib.tiny_tokenizer(folder)
    shape = SHAPES[size]
    common = dict(vocab_size=VOCAB if size != "tiny" else 512, max_position_embeddings=4096,
                  tie_word_embeddings=False, bos_token_id=tok.bos_token_id if hasattr(tok, "bos_token_id") else 1,
                  eos_token_id=2, pad_token_id=0, **shape)
    if family == "phi3":
        cfg = Phi3Config(num_key_value_heads=shape["num_attention_heads"], original_max_position_embeddings=4096,
                         **common)
    else:
        cfg = LlamaConfig(num_key_value_heads=max(1, shape["num_attention_heads"] // 4), **common)
    cfg.dtype = "bfloat16"
    cfg.architectures = ["Phi3ForCausalLM" if family == "phi3" else "LlamaForCausalLM"]
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(cfg)
    named = [(n, tuple(p.shape)) for n, p in meta.state_dict().items()]
    del meta
    layout: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
    size_b = 0
    for name, shp in named:
        nbytes = 2 * int(torch.tensor(shp).prod()) if shp else 2
        if layout[-1] and size_b + nbytes > SHARD_BYTES:
            layout.append([])
            size_b = 0
        layout[-1].append((name, "BF16", shp))
        size_b += nbytes
    gen = torch.Generator().manual_seed(0)

    def make(name: str) -> torch.Tensor:
        shp = dict(named)[name]
        if len(shp) == 1:  # norms
            return torch.ones(shp, dtype=torch.bfloat16)
        return torch.empty(shp, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=gen)

    ShardWriter(folder, layout).write(make)
    cfg.save_pretrained(folder)
    return folder


def rows_file(folder: Path, n: int = 64) -> Path:
    """JSON Lines of ``n`` rows, each longer than 128 tokens of the tiny tokenizer (truncated to the length)."""
    phrases = [json.loads(line)["phrase"] for line in benchlib.DEFAULT_DATA.read_text(encoding="utf-8").splitlines()
               if line.strip()]
    out = folder / "rows.jsonl"
    with out.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"text": " ".join(phrases[(i * 7 + j) % len(phrases)] for j in range(12))}) + "\n")
    return out


def workflow(model: Path, data: Path, cache: Path, out: Path, passes: list[str], steps: int) -> dict:
    allp = {
        "lora": {"type": "LoRA", "r": 16, "alpha": 32, "train_data_config": "rows",
                 "training_args": {"max_steps": steps, "per_device_train_batch_size": BATCH, "learning_rate": 5e-4,
                                   "logging_steps": 1, "save_steps": 1000}},
        "merge": {"type": "MergeAdapterWeights"},
        "int4": {"type": "ModelBuilder", "precision": "int4", "int4_algo_config": "rtn", "fidelity_samples": 0},
    }
    return {
        "input_model": {"model_path": str(model)},
        "data_configs": [{"name": "rows", "load_dataset_config": {"data_files": str(data)},
                          "pre_process_data_config": {"text_template": "{text}", "max_seq_len": SEQ,
                                                      "overflow": "truncate", "completion_only": False}}],
        "passes": {k: allp[k] for k in passes},
        "engine": {"cache_dir": str(cache), "output_dir": str(out)},
    }


def seed_workflow(model: Path, cache: Path, out: Path, steps: int) -> dict:
    """The seed's workflow (shared/seed: Olive's nested schema, its data config, LoRA, merge and int4 build) on
    ``model`` with the emotion rows; ``max_steps`` ``steps`` and ``source_max_len`` ``SEQ`` (the seed's 2048 joined
    tokens at batch 1 need about 20 GiB of activations at 3.8B), its 4-bit options dropped (a plain LoRA)."""
    return {
        "input_model": {"type": "PyTorchModel", "config": {"hf_config": {"model_name": str(model),
                                                                        "task": "text-generation"}}},
        "data_configs": [{
            "name": "dataset_default_train", "type": "HuggingfaceContainer",
            "load_dataset_config": {"params": {"data_name": "json", "data_files": str(benchlib.DEFAULT_DATA),
                                               "split": "train"}},
            "pre_process_data_config": {"params": {
                "dataset_type": "corpus", "text_cols": ["phrase", "tone"],
                "text_template": "### Text: {phrase}\n### The tone is:\n{tone}", "corpus_strategy": "join",
                "source_max_len": SEQ, "pad_to_max_len": False, "use_attention_mask": False}},
        }],
        "passes": {
            "lora": {"type": "LoRA", "config": {
                "target_modules": ["o_proj", "qkv_proj"], "lora_r": 64, "lora_alpha": 64, "lora_dropout": 0.1,
                "train_data_config": "dataset_default_train", "eval_dataset_size": 0.3,
                "training_args": {"seed": 0, "data_seed": 42, "per_device_train_batch_size": 1,
                                  "per_device_eval_batch_size": 1, "gradient_accumulation_steps": 4,
                                  "gradient_checkpointing": False, "learning_rate": 0.0001, "num_train_epochs": 3,
                                  "max_steps": steps, "logging_steps": 10, "evaluation_strategy": "steps",
                                  "eval_steps": 187, "group_by_length": True, "adam_beta2": 0.999,
                                  "max_grad_norm": 0.3}}},
            "merge_adapter_weights": {"type": "MergeAdapterWeights"},
            "builder": {"type": "ModelBuilder", "config": {"precision": "int4"}},
        },
        "engine": {"log_severity_level": 0, "search_strategy": False, "cache_dir": str(cache),
                   "output_dir": str(out)},
    }


SEED_PASSES = ("lora", "merge_adapter_weights", "builder")


def seed_run(family: str, size: str, root: Path, steps: int, env: dict[str, str]) -> dict:
    """The seed's workflow on the ``family``-``size`` random model in one ``honed run``; see the module docstring."""
    from honed.models.memory import weights

    model = build_model(root / "models" / f"{family}-{size}", family, size)
    w = weights(model)
    work = benchlib.fresh_dir(root / f"work-{family}-{size}-seed")
    cfg, out = work / "seed.json", work / "out"
    cfg.write_text(json.dumps(seed_workflow(model, work / "cache", out, steps), indent=2))
    rec: dict = {"family": family, "size": size, "params": w.params, "bf16_bytes": w.bytes_as("bfloat16"),
                 "workflow": "seed", "memory_limit": os.environ.get("HONED_MEMORY_LIMIT_GB", "unset")}
    start = time.perf_counter()
    with open(work / "seed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "honed.cli.main", "run", "--config", str(cfg)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    rec.update(rc=os.waitstatus_to_exitcode(status), process_s=round(time.perf_counter() - start, 1),
               peak_rss_mb=round(usage.ru_maxrss / 1024, 1))
    text = (work / "seed.log").read_text()
    rec["evaluations_logged"] = [line.strip() for line in text.splitlines()
                                 if "eval loss" in line or "evaluat" in line.lower()][:5]
    if rec["rc"] != 0:
        rec["log_tail"] = text[-2000:].replace(f"{benchlib.ROOT}/", "")
        return rec
    fp = json.loads((out / "footprints.json").read_text())
    steps_rec = fp.get("passes") or fp.get("steps") or []
    for name in SEED_PASSES:
        r = next((s for s in steps_rec if s.get("name") == name), None) if isinstance(steps_rec, list) else (
            steps_rec.get(name))
        if not r:
            continue
        metrics = r.get("metrics") or {}
        rec[name] = {"pass_s": r.get("wall_s"), "sampled_peak_mb": r.get("peak_rss_mb"),
                     **{k: metrics[k] for k in ("train_tokens_per_s", "eval_loss", "best_eval_loss", "merge_streamed",
                                                "int4_codes_mb", "onnx_size_mb", "kl_mean", "kl_p99",
                                                "top1_agreement", "perplexity", "source_perplexity") if k in metrics}}
    gen = subprocess.run([sys.executable, "-c", GENERATE, str(out)], capture_output=True, text=True, env=env,
                         check=False)
    rec["generated"] = json.loads(gen.stdout) if gen.returncode == 0 else {"rc": gen.returncode,
                                                                          "error": gen.stderr[-500:]}
    return rec


GENERATE = r"""
import json, sys, time
from honed.models.runtime import load_generator
rt = load_generator(sys.argv[1])
ids = rt.encode("### Text: I got the job!\n### The tone is:\n")
t = time.perf_counter()
out = rt.generate_ids(ids, max_new_tokens=8, stop_at_eos=False)
print(json.dumps({"prompt_tokens": len(ids), "new_tokens": len(out), "s": round(time.perf_counter() - t, 2),
                  "text": rt.tokenizer.decode(out)}))
"""


def run_pass(work: Path, model: Path, data: Path, upto: str, steps: int, env: dict[str, str]) -> dict:
    """``honed run`` of the workflow up to ``upto`` in a fresh process (the earlier passes are cached): the
    process's peak RSS (wait4), the pass's wall time and metrics from footprints, the bytes it wrote."""
    order = ["lora", "merge", "int4"]
    passes = order[: order.index(upto) + 1]
    cfg = work / f"{upto}.json"
    out = work / f"out-{upto}"
    cfg.write_text(json.dumps(workflow(model, data, work / "cache", out, passes, steps), indent=2))
    start = time.perf_counter()
    with open(work / f"{upto}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "honed.cli.main", "run", "--config", str(cfg)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    result: dict = {"rc": rc, "process_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    if rc != 0:
        # paths relative to the repository (results files never name a machine's folders)
        result["log_tail"] = (work / f"{upto}.log").read_text()[-2000:].replace(f"{benchlib.ROOT}/", "")
        return result
    fp = json.loads((out / "footprints.json").read_text())
    steps_rec = fp.get("passes") or fp.get("steps") or []
    rec = next((s for s in steps_rec if s.get("name") == upto), None) if isinstance(steps_rec, list) else None
    if rec is None and isinstance(steps_rec, dict):
        rec = steps_rec.get(upto)
    if rec:
        result["pass_s"] = rec.get("wall_s")
        result["sampled_peak_mb"] = rec.get("peak_rss_mb")
        metrics = rec.get("metrics") or {}
        for k in ("train_tokens_per_s", "tokens_per_s", "train_runtime", "merge_streamed", "merge_max_abs_diff",
                  "onnx_size_mb", "int4_codes_mb"):
            if k in metrics:
                result[k] = metrics[k]
    entries = sorted((work / "cache" / "entries").glob("*/model"), key=lambda p: p.stat().st_mtime)
    if entries:
        newest = entries[-1]
        result["bytes_written"] = sum(f.stat().st_size for f in newest.rglob("*") if f.is_file())
    return result


def one_model(family: str, size: str, root: Path, data: Path, steps: int, env: dict[str, str]) -> dict:
    from honed.models.memory import GIB, lora_estimate, weights

    model = root / "models" / f"{family}-{size}"
    t = time.perf_counter()
    build_model(model, family, size)
    build_s = time.perf_counter() - t
    w = weights(model)
    work = benchlib.fresh_dir(root / f"work-{family}-{size}")
    rec = {"family": family, "size": size, "batch": BATCH, "params": w.params, "bf16_bytes": w.bytes_as("bfloat16"),
           "model_build_s": round(build_s, 1)}
    c = w.config
    est = lora_estimate("bench", w, held_dtype="bfloat16", compute_dtype=_compute(), tokens=SEQ * BATCH, r=16,
                        targets=["qkv_proj", "o_proj", "gate_up_proj", "down_proj", "q_proj", "k_proj", "v_proj",
                                 "gate_proj", "up_proj"], processes=1)
    rec["lora_estimate_gib"] = round(est.total / GIB, 2)
    rec["lora_goal_bytes"] = est.total
    rec["layers"] = c.get("num_hidden_layers")
    for upto in ("lora", "merge", "int4"):
        rec[upto] = run_pass(work, model, data, upto, steps, env)
        if rec[upto]["rc"] != 0:
            break
    return rec


def _compute() -> str:
    from honed.training.finetune import default_dtype

    return default_dtype("cpu")


def table(results: list[dict]) -> str:
    head = ("model", "params", "bf16 MiB", "pass", "pass s", "peak MiB", "peak / bf16", "written MiB", "train tok/s",
            "goal")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in results:
        bf16 = r["bf16_bytes"] / 2**20
        for p in ("lora", "merge", "int4"):
            x = r.get(p)
            if not x:
                continue
            if x["rc"] != 0:
                lines.append(f"{r['family']}-{r['size']} | | | {p} | failed rc {x['rc']} | | | | |")
                continue
            peak = x["peak_rss_mb"]
            if p == "lora":
                goal = f"<= {r['lora_goal_bytes'] / 2**20:.0f}: {'yes' if peak * 2**20 <= r['lora_goal_bytes'] else 'no'}"
            else:
                goal = f"<= 1.2x: {'yes' if peak <= 1.2 * bf16 else 'no'}"
            tok = x.get("train_tokens_per_s") or x.get("tokens_per_s") or ""
            lines.append(" | ".join([f"{r['family']}-{r['size']}", f"{r['params'] / 1e9:.2f}B", f"{bf16:.0f}", p,
                                     f"{x.get('pass_s') or 0:.1f}", f"{peak:.0f}", f"{peak / bf16:.2f}",
                                     f"{(x.get('bytes_written') or 0) / 2**20:.0f}",
                                     f"{tok:.1f}" if tok else "", goal]))
    return "\n".join(lines)


def main() -> int:
    global BATCH
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["0.1b", "0.5b"], choices=[s for s in SHAPES if s != "tiny"])
    ap.add_argument("--family", nargs="+", default=["phi3"], choices=["phi3", "llama"])
    ap.add_argument("--steps", type=int, default=2, help="LoRA optimizer steps (8 rows of 128 tokens each)")
    ap.add_argument("--work", type=Path, default=benchlib.WORK / "scale", help="models and caches (emptied per model)")
    ap.add_argument("--out", type=Path, default=benchlib.RESULTS / "scale.json")
    ap.add_argument("--batch", type=int, default=BATCH, help="LoRA rows a step (8, the seed's)")
    ap.add_argument("--append", action="store_true", help="keep the other models' results already in --out")
    ap.add_argument("--smoke", action="store_true", help=benchlib.SMOKE_HELP)
    ap.add_argument("--seed", action="store_true", help="run the seed's own config (LoRA -> merge -> ModelBuilder "
                    "int4 with its default fidelity check) on each model instead; rows go under 'seed' in --out")
    a = ap.parse_args()
    BATCH = a.batch
    if a.smoke:
        tmp = benchlib.smoke_dir("scale")
        a.work, a.out, a.sizes, a.family, a.steps = tmp / "work", tmp / "scale.json", ["tiny"], ["phi3", "llama"], 2
    a.work.mkdir(parents=True, exist_ok=True)
    data = rows_file(a.work)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    olive = benchlib.WORK / "olive-venv" / "bin" / "python"
    print(f"Olive skipped: {'not run by this bench' if olive.is_file() else 'no bench/.work/olive-venv'}")
    if a.seed:
        return seed_main(a, env)
    results: list[dict] = []
    if a.append and a.out.is_file():
        done = {(f, z) for f in a.family for z in a.sizes}
        results = [r for r in json.loads(a.out.read_text())["results"] if (r["family"], r["size"]) not in done]
    doc = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "train_dtype": _compute()},
           "seq": SEQ, "steps": a.steps, "threads": os.environ.get("OMP_NUM_THREADS", "physical cores"),
           "results": results}
    for family in a.family:
        for size in a.sizes:
            print(f"{family}-{size} ...", flush=True)
            results.append(one_model(family, size, a.work, data, a.steps, env))
            a.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = a.out.with_name(f".{a.out.name}.tmp")
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
            os.replace(tmp, a.out)
            print(table(results[-1:]), flush=True)
    print()
    print("memory that scales (peak RSS of each pass's own process)")
    print(table(results))
    print(f"wrote {a.out}")
    return 0 if all(r.get(p, {}).get("rc", 0) == 0 for r in results for p in ("lora", "merge", "int4")) else 1


def seed_table(rows: list[dict]) -> str:
    head = ("model", "pass", "pass s", "sampled peak MiB", "x bf16", "notes")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        bf16 = r["bf16_bytes"] / 2**20
        if r["rc"] != 0:
            lines.append(f"{r['family']}-{r['size']} | seed | failed rc {r['rc']} | | | ")
            continue
        for name in SEED_PASSES:
            x = r.get(name) or {}
            peak = x.get("sampled_peak_mb") or 0
            notes = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in x.items()
                              if k not in ("pass_s", "sampled_peak_mb"))
            lines.append(f"{r['family']}-{r['size']} | {name} | {x.get('pass_s') or 0:.1f} | {peak:.0f} | "
                         f"{peak / bf16:.2f} | {notes}")
        lines.append(f"{r['family']}-{r['size']} | process | {r['process_s']:.1f} | {r['peak_rss_mb']:.0f} (wait4) | "
                     f"{r['peak_rss_mb'] / bf16:.2f} | evaluations logged: {len(r['evaluations_logged'])}; "
                     f"generated: {r.get('generated')}")
    return "\n".join(lines)


def seed_main(a: argparse.Namespace, env: dict[str, str]) -> int:
    """``--seed``: the seed's workflow per model; its rows replace the same models' under ``seed`` in ``a.out``."""
    doc = json.loads(a.out.read_text()) if a.out.is_file() else {"results": []}
    done = {(f, z) for f in a.family for z in a.sizes}
    rows = [r for r in doc.get("seed", []) if (r["family"], r["size"]) not in done]
    doc["seed"] = rows
    for family in a.family:
        for size in a.sizes:
            print(f"seed workflow on {family}-{size} ...", flush=True)
            rows.append(seed_run(family, size, a.work, a.steps, env))
            a.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = a.out.with_name(f".{a.out.name}.tmp")
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
            os.replace(tmp, a.out)
            print(seed_table(rows[-1:]), flush=True)
    print(f"wrote {a.out}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
