"""``honed optimize``: export, quantize and optimize a model for a device in one line (Olive's auto-opt)."""

from __future__ import annotations

import argparse

from honed.cli.shortcuts import add_common, common_kwargs, finish
from honed.workflows import optimize

EPILOG = """example:
  honed optimize -m HuggingFaceTB/SmolLM2-135M-Instruct --device cpu --precision int4 -o models/smol-int4

A causal LM becomes an onnxruntime-genai folder (ModelBuilder at --precision); an encoder or
classifier goes through OnnxConversion + OrtTransformersOptimization, then int8:
OnnxDynamicQuantization, fp16: OnnxFloatToFloat16, int4: OnnxBlockWiseRtnQuantization.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "optimize", help="Export, quantize and optimize a model for CPU or GPU (one-line workflow).",
        description="Export a model to ONNX, quantize it and apply the graph optimizations for a device.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="Device the model will run on (default: cpu).")
    p.add_argument("--precision", choices=["int4", "int8", "fp16", "fp32"], default="int4",
                   help="Weight precision of the result (default: int4).")
    p.set_defaults(func=_optimize)


def _optimize(args: argparse.Namespace) -> int:
    config = optimize(args.model, device=args.device, precision=args.precision, **common_kwargs(args))
    return finish(args, config)
