"""FullFineTune: train every weight of the model with honed's training loop.

The output is a standalone Hugging Face folder (safetensors, tokenizer, generation config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, StrictBool

from honed.models.handle import ModelHandle
from honed.passes.base import Pass, PassConfig, PassContext, register_pass
from honed.passes.lora import FineTuneConfig


class FullFineTuneConfig(FineTuneConfig):
    """Full fine-tuning settings."""

    freeze_embeddings: StrictBool = Field(
        False, description="Keep the input embeddings fixed (saves optimizer memory on large vocabularies)."
    )


@register_pass
class FullFineTune(Pass):
    name = "FullFineTune"
    description = "Fine-tune all weights of a causal LM; output is a full Hugging Face model folder."
    config_class: ClassVar[type[PassConfig]] = FullFineTuneConfig
    libraries: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    accepts: ClassVar[tuple[str, ...]] = ("hf",)
    produces: ClassVar[tuple[str, ...]] = ("hf",)

    def run(self, model: ModelHandle, config: Any, output_dir: Path, ctx: PassContext) -> ModelHandle:
        from honed.training.finetune import finetune_full

        return finetune_full(model, config, output_dir, ctx)
