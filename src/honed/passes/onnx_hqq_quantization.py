"""OnnxHqqQuantization: int4 weight-only quantization with Half-Quadratic Quantization
(better scales/zero points than round-to-nearest, still no data), as MatMulNBits. Takes an ONNX model or
an onnxruntime-genai folder (Olive's recipes run it after ModelBuilder) and returns the same kind."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from honed.models.handle import ModelHandle
from honed.passes._onnx_common import OnnxSaveConfig, matmul_nbits
from honed.passes.base import Pass, PassContext, register_pass
from honed.util.runtime_flavour import import_runtime


class OnnxHqqQuantizationConfig(OnnxSaveConfig):
    """HQQ options (Olive's names)."""

    block_size: Literal[16, 32, 64, 128, 256] = Field(128, description="Weights per block sharing one scale.")
    axis: Literal[0, 1] = Field(1, description="Axis along which blocks run (1: input features).")
    nodes_to_exclude: list[str] | None = Field(None, description="Node names left in float.")
    nodes_to_include: list[str] | None = Field(None, description="Quantize only these node names.")


class OnnxHqqQuantization(Pass):
    name = "OnnxHqqQuantization"
    description = "Quantize ONNX MatMul weights to int4 with HQQ as MatMulNBits."
    config_class = OnnxHqqQuantizationConfig
    requires = ("torch",)
    libraries = ("onnxruntime", "onnx", "torch")
    accepts: ClassVar[tuple[str, ...]] = ("onnx", "genai")
    produces: ClassVar[tuple[str, ...]] = ("onnx", "genai")  # the kind it was given

    def run(self, model: ModelHandle, config: OnnxHqqQuantizationConfig, output_dir: Path,
            ctx: PassContext) -> ModelHandle:
        import_runtime("onnxruntime")  # missing: a UserError naming the extra
        from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

        algo = HQQWeightOnlyQuantConfig(block_size=config.block_size, bits=4, axis=config.axis)
        return matmul_nbits(model, config, output_dir, ctx, algo, "int4-hqq", self.name, bits=4)


register_pass(OnnxHqqQuantization)
