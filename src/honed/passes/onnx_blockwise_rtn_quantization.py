"""OnnxBlockWiseRtnQuantization: int4 (or int8) weight-only quantization of MatMul/Gather
weights by round-to-nearest per block, written as MatMulNBits nodes. Takes an ONNX model or an
onnxruntime-genai folder (Olive's recipes run it after ModelBuilder fp32/fp16) and returns the same kind."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, StrictBool

from honed.models.handle import ModelHandle
from honed.passes._onnx_common import OnnxSaveConfig, matmul_nbits
from honed.passes.base import Pass, PassContext, register_pass
from honed.util.runtime_flavour import import_runtime


class OnnxBlockWiseRtnQuantizationConfig(OnnxSaveConfig):
    """Block-wise round-to-nearest options (Olive's names)."""

    bits: Literal[4, 8] = Field(4, description="Bits per weight.")
    block_size: Literal[16, 32, 64, 128, 256] = Field(128, description="Weights per block sharing one scale.")
    is_symmetric: StrictBool = Field(True, description="Symmetric blocks (no zero point).")
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        None, description="MatMulNBits compute type: 1 fp32, 2 fp16, 3 bf16, 4 int8."
    )
    nodes_to_exclude: list[str] | None = Field(None, description="Node names left in float.")
    nodes_to_include: list[str] | None = Field(None, description="Quantize only these node names.")
    op_types_to_quantize: list[Literal["MatMul", "Gather"]] | None = Field(
        None, description="Operator types to quantize (default MatMul)."
    )


class OnnxBlockWiseRtnQuantization(Pass):
    name = "OnnxBlockWiseRtnQuantization"
    description = "Quantize ONNX MatMul weights to int4 blocks (round to nearest) as MatMulNBits."
    config_class = OnnxBlockWiseRtnQuantizationConfig
    libraries = ("onnxruntime", "onnx")
    accepts: ClassVar[tuple[str, ...]] = ("onnx", "genai")
    produces: ClassVar[tuple[str, ...]] = ("onnx", "genai")  # the kind it was given

    def run(self, model: ModelHandle, config: OnnxBlockWiseRtnQuantizationConfig, output_dir: Path,
            ctx: PassContext) -> ModelHandle:
        import_runtime("onnxruntime")  # missing: a UserError naming the extra
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig

        ops = tuple(config.op_types_to_quantize) if config.op_types_to_quantize else None
        algo = DefaultWeightOnlyQuantConfig(
            block_size=config.block_size, is_symmetric=config.is_symmetric,
            accuracy_level=config.accuracy_level, op_types_to_quantize=ops, bits=config.bits,
        )
        return matmul_nbits(model, config, output_dir, ctx, algo, f"int{config.bits}-rtn", self.name,
                            ops or ("MatMul",), bits=config.bits, is_symmetric=config.is_symmetric,
                            accuracy_level=config.accuracy_level, op_types_to_quantize=ops)


register_pass(OnnxBlockWiseRtnQuantization)
