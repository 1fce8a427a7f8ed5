"""MergeAdapterWeights: fold a PEFT adapter into its base and save a standalone model.

A plain LoRA adapter is merged streamed, tensor by tensor from the base's safetensors (the model is
never loaded; ``honed.training.merge.merge_streamed``); any other is merged in memory by peft over the
unquantized base in fp32.  Either way a QLoRA adapter merges into the original (unquantized) base, and the
result is saved as safetensors in the base's dtype with the tokenizer and generation config.  A merge that
would not fit the machine's memory stops with a UserError before it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from honed.models.handle import ModelHandle
from honed.passes.base import Pass, PassConfig, PassContext, register_pass
from honed.passes.lora import DTypeName


class MergeAdapterWeightsConfig(PassConfig):
    """Merge settings."""

    torch_dtype: DTypeName | None = Field(
        None, description="Dtype of the merged model; default: the base model's own dtype."
    )


@register_pass
class MergeAdapterWeights(Pass):
    name = "MergeAdapterWeights"
    description = "Merge a LoRA/QLoRA/DoRA adapter into its base model; output is a full HF model folder."
    config_class: ClassVar[type[PassConfig]] = MergeAdapterWeightsConfig
    libraries: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft")
    accepts: ClassVar[tuple[str, ...]] = ("peft",)
    produces: ClassVar[tuple[str, ...]] = ("hf",)

    def run(self, model: ModelHandle, config: Any, output_dir: Path, ctx: PassContext) -> ModelHandle:
        from honed.training.merge import merge_adapter

        return merge_adapter(model, config, output_dir, ctx)
