"""OnnxFloatToFloat16: fp32 weights and compute to fp16 (for GPU targets), keeping ops that
overflow in fp16 on a block list. Takes an ONNX model or an onnxruntime-genai folder and returns the same
kind (onnxruntime-genai reads the past key/value dtype from the graph, so genai_config.json needs no change)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, StrictBool

from honed.models.handle import ModelHandle
from honed.passes._onnx_common import OnnxSaveConfig, finish_onnx_output, onnx_file, output_file, save_onnx
from honed.passes.base import Pass, PassContext, register_pass
from honed.util.runtime_flavour import import_runtime


class OnnxFloatToFloat16Config(OnnxSaveConfig):
    """fp16 conversion options (Olive's names)."""

    min_positive_val: float = Field(5.96e-08, gt=0, description="Smaller magnitudes are clamped to this.")
    max_finite_val: float = Field(65504.0, gt=0, description="Larger magnitudes are clamped to this.")
    keep_io_types: StrictBool = Field(False, description="Keep fp32 inputs and outputs (casts are inserted).")
    op_block_list: list[str] | None = Field(None, description="Operator types kept in fp32.")
    node_block_list: list[str] | None = Field(None, description="Node names kept in fp32.")


class OnnxFloatToFloat16(Pass):
    name = "OnnxFloatToFloat16"
    description = "Convert an fp32 ONNX model to fp16."
    config_class = OnnxFloatToFloat16Config
    libraries = ("onnxruntime", "onnx")
    accepts: ClassVar[tuple[str, ...]] = ("onnx", "genai")
    produces: ClassVar[tuple[str, ...]] = ("onnx", "genai")  # the kind it was given

    def run(self, model: ModelHandle, config: OnnxFloatToFloat16Config, output_dir: Path,
            ctx: PassContext) -> ModelHandle:
        import onnx
        import_runtime("onnxruntime")  # missing: a UserError naming the extra
        from onnxruntime.transformers.float16 import convert_float_to_float16

        src = onnx_file(model)
        m = convert_float_to_float16(
            onnx.load(str(src)), min_positive_val=config.min_positive_val,
            max_finite_val=config.max_finite_val, keep_io_types=config.keep_io_types,
            op_block_list=config.op_block_list, node_block_list=config.node_block_list,
        )
        out = output_file(model, src, output_dir)
        save_onnx(m, out, config)
        return finish_onnx_output(model, src, out, config, ctx, precision="fp16")


register_pass(OnnxFloatToFloat16)
