"""``honed capture-onnx-graph``: export a model to ONNX (torch exporter or ModelBuilder) in one line."""

from __future__ import annotations

import argparse

from honed.cli.shortcuts import (
    FieldFlag,
    add_common,
    add_field_flags,
    check_applies,
    collect,
    common_kwargs,
    finish,
)
from honed.passes.model_builder import ModelBuilderConfig
from honed.passes.onnx_conversion import OnnxConversionConfig
from honed.workflows import capture_onnx_graph

CONVERSION_FLAGS = [
    FieldFlag("--target-opset", OnnxConversionConfig, "target_opset", "pass_options"),
    FieldFlag("--use-dynamo-exporter", OnnxConversionConfig, "use_dynamo_exporter", "pass_options"),
    FieldFlag("--torch-dtype", OnnxConversionConfig, "torch_dtype", "pass_options"),
    FieldFlag("--use-past", OnnxConversionConfig, "use_past", "pass_options"),
]
BUILDER_FLAGS = [
    FieldFlag("--precision", ModelBuilderConfig, "precision", "builder_options"),
    FieldFlag("--int4-block-size", ModelBuilderConfig, "int4_block_size", "builder_options"),
    FieldFlag("--int4-accuracy-level", ModelBuilderConfig, "int4_accuracy_level", "builder_options"),
]
FLAGS = CONVERSION_FLAGS + BUILDER_FLAGS

EPILOG = """examples:
  honed capture-onnx-graph -m models/bert-classifier -o models/bert-onnx
  honed capture-onnx-graph -m HuggingFaceTB/SmolLM2-135M-Instruct --use-model-builder --precision fp32 -o models/smol-genai
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "capture-onnx-graph", help="Export a model to ONNX with the torch exporter or ModelBuilder (one-line workflow).",
        description="Export a Hugging Face model (or adapter over its base) to an ONNX graph: OnnxConversion "
        "by default, or the onnxruntime-genai ModelBuilder for causal LMs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument("--use-model-builder", action="store_true",
                   help="Build an onnxruntime-genai folder with ModelBuilder (causal LMs) instead of OnnxConversion.")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="Device the model will run on (default: cpu).")
    add_field_flags(p.add_argument_group("OnnxConversion fields"), CONVERSION_FLAGS)
    add_field_flags(p.add_argument_group("ModelBuilder fields (with --use-model-builder)"), BUILDER_FLAGS)
    p.set_defaults(func=_capture)


def _capture(args: argparse.Namespace) -> int:
    values = collect(args, FLAGS)
    if args.use_model_builder:
        check_applies(values.get("pass_options", {}), FLAGS, ModelBuilderConfig, "pass_options",
                      "with --use-model-builder (it is an OnnxConversion option)")
        options = values.get("builder_options", {})
    else:
        check_applies(values.get("builder_options", {}), FLAGS, OnnxConversionConfig, "builder_options",
                      "without --use-model-builder (it is a ModelBuilder option)")
        options = values.get("pass_options", {})
    config = capture_onnx_graph(args.model, use_model_builder=args.use_model_builder, pass_options=options,
                                device=args.device, **common_kwargs(args))
    return finish(args, config)
