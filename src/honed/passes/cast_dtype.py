"""CastDtype: save a Hugging Face model in another floating-point dtype (fp32 -> bf16 halves it)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from honed.models.handle import ModelHandle
from honed.models.loaders import load_model, load_tokenizer
from honed.passes.base import Pass, PassConfig, PassContext, register_pass


class CastDtypeConfig(PassConfig):
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "bfloat16", description="Floating-point type the weights are stored in."
    )


class CastDtype(Pass):
    name = "CastDtype"
    description = "Save a Hugging Face model with its weights cast to float32, float16 or bfloat16."
    config_class = CastDtypeConfig
    libraries = ("torch", "transformers", "safetensors")
    accepts = ("hf",)
    produces = ("hf",)

    def run(self, model: ModelHandle, config: CastDtypeConfig, output_dir: Path, ctx: PassContext) -> ModelHandle:
        hf = load_model(model, dtype=config.dtype)
        hf.save_pretrained(output_dir, safe_serialization=True)
        load_tokenizer(model).save_pretrained(output_dir)
        ctx.metrics["parameters"] = sum(p.numel() for p in hf.parameters())
        return ModelHandle(kind="hf", path=str(output_dir), task=model.task,
                           load_kwargs={k: v for k, v in model.load_kwargs.items() if k != "torch_dtype"})


register_pass(CastDtype)
