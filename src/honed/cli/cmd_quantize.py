"""``honed quantize``: quantize an ONNX model (or an HF model, converted first) in one line."""

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
from honed.data.config import PreProcessDataConfig
from honed.errors import UserError
from honed.passes.gptq import GptqConfig as Gptq
from honed.passes.onnx_blockwise_rtn_quantization import OnnxBlockWiseRtnQuantizationConfig as Rtn
from honed.passes.onnx_conversion import OnnxConversionConfig
from honed.passes.onnx_dynamic_quantization import OnnxDynamicQuantizationConfig as Dynamic
from honed.passes.onnx_static_quantization import OnnxStaticQuantizationConfig as Static
from honed.workflows import quantize
from honed.workflows.build import QUANTIZERS

PASS_FLAGS = [
    FieldFlag("--block-size", Rtn, "block_size", "pass_options"),
    FieldFlag("--is-symmetric", Rtn, "is_symmetric", "pass_options"),
    FieldFlag("--accuracy-level", Rtn, "accuracy_level", "pass_options"),
    FieldFlag("--per-channel", Dynamic, "per_channel", "pass_options"),
    FieldFlag("--weight-type", Dynamic, "weight_type", "pass_options"),
    FieldFlag("--nodes-to-exclude", Dynamic, "nodes_to_exclude", "pass_options"),
    FieldFlag("--calibration-sampling-size", Static, "calibration_sampling_size", "pass_options"),
    FieldFlag("--calibrate-method", Static, "calibrate_method", "pass_options"),
    FieldFlag("--quant-format", Static, "quant_format", "pass_options"),
    FieldFlag("--group-size", Gptq, "group_size", "pass_options"),
    FieldFlag("--num-samples", Gptq, "num_samples", "pass_options"),
]
CONVERSION_FLAGS = [
    FieldFlag("--target-opset", OnnxConversionConfig, "target_opset", "conversion_options"),
]
DATA_FLAGS = [
    FieldFlag("--text-template", PreProcessDataConfig, "text_template", "data_options", escapes=True),
    FieldFlag("--max-seq-len", PreProcessDataConfig, "max_seq_len", "data_options"),
]
FLAGS = PASS_FLAGS + CONVERSION_FLAGS + DATA_FLAGS
AWQ_RENAMES = {"group_size": "q_group_size"}
"""Gptq field names the shared flags set -> the Awq field of the same meaning (Olive's AutoAWQQuantizer names)."""

EPILOG = """examples:
  honed quantize -m models/bert-onnx --algorithm dynamic --precision int8 -o models/bert-int8
  honed quantize -m HuggingFaceTB/SmolLM2-135M-Instruct --algorithm rtn --precision int4 -o models/smol-rtn4
  honed quantize -m models/bert-onnx --algorithm static --precision int8 --data calib.jsonl \\
      --text-template '{text}' -o models/bert-static
  honed quantize -m HuggingFaceTB/SmolLM2-135M-Instruct --algorithm gptq --precision int4 --group-size 64 \\
      --data calib.jsonl --text-template '{text}' -o models/smol-gptq4
  honed quantize -m HuggingFaceTB/SmolLM2-135M-Instruct --algorithm awq --precision int4 --group-size 64 \\
      --data calib.jsonl --text-template '{text}' -o models/smol-awq4

algorithm/precision pairs: rtn int4|int8 (OnnxBlockWiseRtnQuantization), hqq int4 (OnnxHqqQuantization),
dynamic int8 (OnnxDynamicQuantization), static int8 (OnnxStaticQuantization, calibrated on --data),
gptq int4|int8 (Gptq on the Hugging Face model, calibrated on --data, then ModelBuilder: a genai folder),
awq int4 (Awq on a Llama-architecture Hugging Face model, calibrated on --data, then ModelBuilder).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize", help="Quantize an ONNX model, or an HF model converted to ONNX first (one-line workflow).",
        description="Quantize the weights (and with static, the activations) of an ONNX model.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument("--algorithm", choices=sorted({a for a, _ in QUANTIZERS}), default="rtn",
                   help="rtn (round to nearest, blockwise), hqq (half-quadratic, blockwise), dynamic "
                   "(int8 weights, activations at run time), static (calibrated int8), gptq (calibrated int4/int8 "
                   "weights of a Hugging Face LM, built with ModelBuilder) or awq (activation-aware int4 weights "
                   "of a Llama-architecture LM, built with ModelBuilder) (default: rtn).")
    p.add_argument("--precision", choices=["int4", "int8"], default="int4", help="Bits per weight (default: int4).")
    p.add_argument("-d", "--data", help="Calibration rows for --algorithm static, gptq or awq: a local "
                   "json/jsonl/csv/parquet file.")
    add_field_flags(p.add_argument_group("quantizer (pass fields)"), PASS_FLAGS)
    add_field_flags(p.add_argument_group("conversion of an HF model (OnnxConversion fields)"), CONVERSION_FLAGS)
    add_field_flags(p.add_argument_group("calibration data (data config fields)"), DATA_FLAGS)
    p.set_defaults(func=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    from honed.passes.base import get_pass

    values = collect(args, FLAGS)
    quantizer = QUANTIZERS.get((args.algorithm, args.precision))
    pass_options = values.get("pass_options", {})
    if args.algorithm == "awq":
        pass_options = {AWQ_RENAMES.get(k, k): v for k, v in pass_options.items()}
    if quantizer is not None:
        check_applies(pass_options, FLAGS, get_pass(quantizer["type"]).config_class, "pass_options",
                      f"to --algorithm {args.algorithm} ({quantizer['type']})")
    if values.get("data_options") and not args.data:
        raise UserError("--text-template/--max-seq-len describe calibration data; give --data FILE with them")
    config = quantize(
        args.model, algorithm=args.algorithm, precision=args.precision, pass_options=pass_options,
        conversion_options=values.get("conversion_options"), data=args.data,
        data_options=values.get("data_options"), **common_kwargs(args),
    )
    return finish(args, config)
