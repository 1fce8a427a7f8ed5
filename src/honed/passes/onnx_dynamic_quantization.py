"""OnnxDynamicQuantization: int8 weights, activations quantized at run time
(``onnxruntime.quantization.quantize_dynamic``). Takes an ONNX model or an onnxruntime-genai folder (Olive's
auto-opt runs it after ModelBuilder) and returns the same kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from honed.models.handle import ModelHandle
from honed.passes._onnx_common import (
    ORT_DYNAMIC_EXTRA_OPTIONS,
    Int8QuantConfig,
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


class OnnxDynamicQuantizationConfig(Int8QuantConfig):
    """Dynamic int8 quantization options (Olive's names)."""

    extra_options: dict[str, Any] = Field(
        default_factory=dict, description="onnxruntime quantize_dynamic extra_options, passed through; only the "
        "keys onnxruntime documents for dynamic quantization (ActivationSymmetric, WeightSymmetric, "
        "EnableSubgraph, ForceQuantizeNoInputCheck, MatMulConstBOnly, extra.Sigmoid.nnapi, "
        "ActivationRestrictedAsymmetric) and DefaultTensorType. MatMulConstBOnly (default true) quantizes only "
        "MatMuls whose B is a constant weight; false also quantizes activation x activation MatMuls."
    )

    @field_validator("extra_options")
    @classmethod
    def _known_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_ort_extra_options(v, ORT_DYNAMIC_EXTRA_OPTIONS, "dynamic")


class OnnxDynamicQuantization(Pass):
    name = "OnnxDynamicQuantization"
    description = "Quantize an ONNX model to int8 with run-time activation scales (no calibration data)."
    config_class = OnnxDynamicQuantizationConfig
    libraries = ("onnxruntime", "onnx")
    accepts: ClassVar[tuple[str, ...]] = ("onnx", "genai")
    produces: ClassVar[tuple[str, ...]] = ("onnx", "genai")  # the kind it was given

    def run(self, model: ModelHandle, config: OnnxDynamicQuantizationConfig, output_dir: Path,
            ctx: PassContext) -> ModelHandle:
        import onnx
        import_runtime("onnxruntime")  # missing: a UserError naming the extra
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.registry import IntegerOpsRegistry

        src = onnx_file(model)
        # Fused contrib ops (Attention) defeat shape inference; their outputs are float.
        extra = {"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT, **config.extra_options}
        graph = load_graph_only(src)
        op_types = tuple(config.op_types_to_quantize or sorted(IntegerOpsRegistry))
        require_quantizable(graph, op_types, self.name, ctx, any_matmul=not extra["MatMulConstBOnly"])
        before = quantized_counts(graph)
        staged = prepare_input(src, ctx.work_dir, config.quant_preprocess)
        out = output_file(model, src, output_dir)
        quantize_dynamic(
            staged, out, op_types_to_quantize=config.op_types_to_quantize, per_channel=config.per_channel,
            reduce_range=config.reduce_range, weight_type=getattr(QuantType, config.weight_type),
            nodes_to_quantize=config.nodes_to_quantize, nodes_to_exclude=config.nodes_to_exclude,
            use_external_data_format=True, extra_options=extra,
        )
        require_quantized(before, out, self.name, ctx)
        return finish_onnx_output(model, src, out, config, ctx, quantization="int8-dynamic")


register_pass(OnnxDynamicQuantization)
