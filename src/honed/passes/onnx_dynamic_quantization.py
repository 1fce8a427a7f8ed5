"""OnnxDynamicQuantization: int8 weights, activations quantized at run time
(``onnxruntime.quantization.quantize_dynamic``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, StrictBool

from honed.models.handle import ModelHandle
from honed.passes._onnx_common import OnnxSaveConfig, finish_onnx_output, onnx_file, prepare_input
from honed.passes.base import Pass, PassContext, register_pass


class OnnxDynamicQuantizationConfig(OnnxSaveConfig):
    """Dynamic int8 quantization options (Olive's names)."""

    weight_type: Literal["QInt8", "QUInt8"] = Field("QInt8", description="Data type of quantized weights.")
    per_channel: StrictBool = Field(False, description="One scale per output channel instead of per tensor.")
    reduce_range: StrictBool = Field(False, description="7-bit weights, for old CPUs without VNNI.")
    op_types_to_quantize: list[str] | None = Field(
        None, description="Operator types to quantize (default: all that onnxruntime supports)."
    )
    nodes_to_quantize: list[str] | None = Field(None, description="Quantize only these node names.")
    nodes_to_exclude: list[str] | None = Field(None, description="Node names left in float.")
    quant_preprocess: StrictBool = Field(
        True, description="Run shape inference and graph optimization first (onnxruntime's quant_pre_process)."
    )
    extra_options: dict[str, Any] = Field(
        default_factory=dict, description="onnxruntime quantizer extra_options (e.g. MatMulConstBOnly)."
    )


class OnnxDynamicQuantization(Pass):
    name = "OnnxDynamicQuantization"
    description = "Quantize an ONNX model to int8 with run-time activation scales (no calibration data)."
    config_class = OnnxDynamicQuantizationConfig
    libraries = ("onnxruntime", "onnx")
    accepts: ClassVar[tuple[str, ...]] = ("onnx",)
    produces: ClassVar[tuple[str, ...]] = ("onnx",)

    def run(self, model: ModelHandle, config: OnnxDynamicQuantizationConfig, output_dir: Path,
            ctx: PassContext) -> ModelHandle:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        src = onnx_file(model)
        staged = prepare_input(src, ctx.work_dir, config.quant_preprocess)
        out = output_dir / "model.onnx"
        import onnx

        # Fused contrib ops (Attention) defeat shape inference; their outputs are float.
        extra = {"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT, **config.extra_options}
        quantize_dynamic(
            staged, out, op_types_to_quantize=config.op_types_to_quantize, per_channel=config.per_channel,
            reduce_range=config.reduce_range, weight_type=getattr(QuantType, config.weight_type),
            nodes_to_quantize=config.nodes_to_quantize, nodes_to_exclude=config.nodes_to_exclude,
            use_external_data_format=True, extra_options=extra,
        )
        return finish_onnx_output(model, src, out, config, ctx, quantization="int8-dynamic")


register_pass(OnnxDynamicQuantization)
