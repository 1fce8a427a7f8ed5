"""OnnxStaticQuantization: int8 QDQ with activation ranges calibrated on sample data
(``onnxruntime.quantization.quantize_static``). Takes an ONNX model or an onnxruntime-genai folder (the
decoder is calibrated with an empty past) and returns the same kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.passes._onnx_common import (
    ORT_STATIC_EXTRA_OPTIONS,
    Int8QuantConfig,
    calibration_feeds,
    check_ort_extra_options,
    finish_onnx_output,
    load_graph_only,
    onnx_file,
    output_file,
    prepare_input,
    quantized_counts,
    require_quantizable,
    require_quantized,
)
from honed.passes.base import Pass, PassContext, register_pass
from honed.util.runtime_flavour import import_runtime


class OnnxStaticQuantizationConfig(Int8QuantConfig):
    """Static int8 quantization options (Olive's names)."""

    data_config: str = Field(description="Name of the data config whose rows calibrate activation ranges.")
    calibration_sampling_size: int = Field(64, gt=0, description="Calibration samples to run.")
    calibrate_method: Literal["MinMax", "Entropy", "Percentile", "Distribution"] = Field(
        "MinMax", description="How activation ranges are chosen from the calibration runs."
    )
    quant_format: Literal["QDQ", "QOperator"] = Field(
        "QDQ", description="QDQ (Quantize/DequantizeLinear pairs) or QOperator (QLinear* ops)."
    )
    activation_type: Literal["QInt8", "QUInt8", "QInt16", "QUInt16"] = Field(
        "QInt8", description="Data type of quantized activations."
    )
    extra_options: dict[str, Any] = Field(
        default_factory=dict, description="onnxruntime quantize_static extra_options, passed through; only the "
        "keys onnxruntime documents (e.g. MatMulConstBOnly, ActivationSymmetric, WeightSymmetric, QuantizeBias, "
        "CalibMovingAverage, SmoothQuant, TensorQuantOverrides) plus DefaultTensorType and CalibPercentile. "
        "MatMulConstBOnly defaults to false here (onnxruntime's static default): activation x activation "
        "MatMuls are quantized too."
    )

    @field_validator("extra_options")
    @classmethod
    def _known_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_ort_extra_options(v, ORT_STATIC_EXTRA_OPTIONS, "static")


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)


class OnnxStaticQuantization(Pass):
    name = "OnnxStaticQuantization"
    description = "Quantize an ONNX model to int8 QDQ, calibrating activation ranges on a data config."
    config_class = OnnxStaticQuantizationConfig
    libraries = ("onnxruntime", "onnx")
    accepts: ClassVar[tuple[str, ...]] = ("onnx", "genai")
    produces: ClassVar[tuple[str, ...]] = ("onnx", "genai")  # the kind it was given

    def run(self, model: ModelHandle, config: OnnxStaticQuantizationConfig, output_dir: Path,
            ctx: PassContext) -> ModelHandle:
        import_runtime("onnxruntime")  # missing: a UserError naming the extra
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        if config.data_config not in ctx.data_configs:
            raise UserError(
                f"OnnxStaticQuantization: data_config '{config.data_config}' is not defined; "
                f"define it under data_configs (defined: {', '.join(ctx.data_configs) or 'none'})"
            )
        src = onnx_file(model)
        graph = load_graph_only(src)
        registry = QDQRegistry if config.quant_format == "QDQ" else QLinearOpsRegistry
        op_types = tuple(config.op_types_to_quantize or sorted(registry))
        require_quantizable(graph, op_types, self.name, ctx,
                            any_matmul=not config.extra_options.get("MatMulConstBOnly", False))
        before = quantized_counts(graph)
        staged = prepare_input(src, ctx.work_dir, config.quant_preprocess)
        feeds = calibration_feeds(staged, model, ctx.data_configs[config.data_config],
                                  config.calibration_sampling_size)
        out = output_file(model, src, output_dir)
        quantize_static(
            staged, out, _Reader(feeds), quant_format=getattr(QuantFormat, config.quant_format),
            op_types_to_quantize=config.op_types_to_quantize, per_channel=config.per_channel,
            reduce_range=config.reduce_range, activation_type=getattr(QuantType, config.activation_type),
            weight_type=getattr(QuantType, config.weight_type), nodes_to_quantize=config.nodes_to_quantize,
            nodes_to_exclude=config.nodes_to_exclude, use_external_data_format=True,
            calibrate_method=getattr(CalibrationMethod, config.calibrate_method),
            extra_options=config.extra_options,
        )
        ctx.metrics["calibration_samples"] = len(feeds)
        require_quantized(before, out, self.name, ctx)
        return finish_onnx_output(model, src, out, config, ctx, quantization="int8-static")


register_pass(OnnxStaticQuantization)
