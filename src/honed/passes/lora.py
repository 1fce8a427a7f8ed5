"""LoRA-family fine-tuning passes: LoRA, DoRA, QLoRA and LoftQ, built on peft.

Every pass trains an adapter with honed's training loop (``honed.training``) and returns
a ``peft`` handle: the adapter folder (with the tokenizer) plus a reference to the base
model, so a cache entry is megabytes, not a copy of the base.  Parameter names are
Olive's (``r``, ``alpha``, ``lora_dropout``, ``target_modules``, ``train_data_config``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from honed.models.handle import ModelHandle
from honed.passes.base import Pass, PassConfig, PassContext, register_pass
from honed.training.args import TrainingArgs

DTypeName = Literal["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"]


class FineTuneConfig(PassConfig):
    """What every fine-tuning pass shares: data, evaluation split and training loop settings."""

    train_data_config: str = Field(description="Name of the data config to train on (one of data_configs).")
    eval_data_config: str | None = Field(
        None, description="Name of the data config to compute eval loss on; else a split of the training data."
    )
    eval_dataset_size: float | int | None = Field(
        None,
        description="Held-out share of the training data for eval loss: a fraction in (0, 1) or a row count.",
    )
    training_args: TrainingArgs = Field(
        default_factory=TrainingArgs, description="Training loop settings (Hugging Face TrainingArguments names)."
    )
    torch_dtype: DTypeName | None = Field(
        None,
        description="Dtype the model trains in. Default: what the device computes fast: bfloat16 on GPUs "
        "and CPUs with native bf16, float32 elsewhere (bf16 emulation trains ~2x slower).",
    )

    @field_validator("eval_dataset_size")
    @classmethod
    def _eval_size(cls, v: float | int | None) -> float | int | None:
        if v is None:
            return v
        if isinstance(v, float) and not v.is_integer() and not 0 < v < 1:
            raise ValueError("eval_dataset_size must be a fraction in (0, 1) or a positive row count")
        if v <= 0:
            raise ValueError("eval_dataset_size must be a fraction in (0, 1) or a positive row count")
        return v


class QuantizationAwareConfig(BaseModel):
    """The int4 grid a quantization-aware adapter trains against (and ModelBuilder then ships unchanged)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    bits: Literal[4, 8] = Field(4, description="Bits per weight of the decoder layers' linears.")
    group_size: Literal[16, 32, 64, 128, 256] = Field(
        32, description="Inputs per group sharing a scale and zero point (MatMulNBits block size)."
    )
    sym: StrictBool = Field(False, description="Symmetric codes (zero point fixed at 2**(bits-1)); false: a zero "
                                               "point per group, which rounds closer.")
    lm_head_bits: Literal[4, 8] = Field(8, description="Bits of the LM head (the most output-sensitive matrix).")


class LoRAConfig(FineTuneConfig):
    """Low-rank adapters on the model's linear layers."""

    r: int = Field(64, gt=0, le=65536, description="LoRA rank (Olive's name; `lora_r` in old configs).")
    alpha: float = Field(16, gt=0, le=1e6, description="LoRA scaling numerator: updates are scaled by alpha / r.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Linear module names to adapt (e.g. [q_proj, v_proj]); default: every linear layer "
        "of the architecture except the output head.",
    )
    modules_to_save: list[str] | None = Field(
        None, description="Modules trained in full and saved with the adapter (e.g. lm_head)."
    )
    use_rslora: StrictBool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r).")
    quantization_aware: QuantizationAwareConfig | None = Field(
        None, description="Train the adapter against the base rounded to this int4/int8 grid and keep it "
        "unmerged: the pass writes the rounded base beside the adapter, and ModelBuilder (straight after this "
        "pass) ships those codes with the adapter as float MatMuls, so the model evaluated after training is "
        "the one that ships. LoRA only; not with DoRA, QLoRA or LoftQ. {} takes the defaults."
    )


    @model_validator(mode="after")
    def _quantization_aware_is_lora_only(self) -> LoRAConfig:
        if self.quantization_aware is not None and type(self) is not LoRAConfig:
            raise ValueError("quantization_aware is for the LoRA pass only (a DoRA magnitude or a bitsandbytes "
                             "base would not ship as trained); use type LoRA or remove quantization_aware")
        return self


class DoRAConfig(LoRAConfig):
    """Weight-decomposed LoRA (magnitude + direction)."""


class QLoRAConfig(LoRAConfig):
    """LoRA over a 4-bit bitsandbytes base."""

    double_quant: StrictBool = Field(True, description="Quantize the 4-bit scales too (saves ~0.4 bit/weight).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the base weights.")
    compute_dtype: DTypeName | None = Field(
        None, description="Dtype 4-bit layers compute in; default: the training dtype (torch_dtype)."
    )


class LoftQConfig(QLoRAConfig):
    """QLoRA whose adapters start from LoftQ: initialised to cancel the 4-bit quantization error."""

    loftq_iter: int = Field(1, gt=0, description="Alternating LoftQ refinement iterations.")


class _LoRABase(Pass):
    """Shared run(): build the peft config, train, save adapter + tokenizer."""

    config_class: ClassVar[type[PassConfig]] = LoRAConfig
    libraries: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft")
    accepts: ClassVar[tuple[str, ...]] = ("hf",)
    produces: ClassVar[tuple[str, ...]] = ("peft",)
    variant: ClassVar[str] = "lora"
    search_space: ClassVar[dict[str, list[Any]]] = {"r": [8, 16, 32, 64]}

    def run(self, model: ModelHandle, config: Any, output_dir: Path, ctx: PassContext) -> ModelHandle:
        from honed.training.finetune import finetune_adapter, preflight_memory

        preflight_memory(model, config, ctx, variant=self.variant)  # UserError before the model loads
        return finetune_adapter(model, config, output_dir, ctx, variant=self.variant)


@register_pass
class LoRA(_LoRABase):
    name = "LoRA"
    description = "Fine-tune low-rank adapters (peft LoRA); output is an adapter over the base model."
    config_class = LoRAConfig
    variant = "lora"


@register_pass
class DoRA(_LoRABase):
    name = "DoRA"
    description = "Fine-tune weight-decomposed low-rank adapters (peft DoRA)."
    config_class = DoRAConfig
    variant = "dora"


@register_pass
class QLoRA(_LoRABase):
    name = "QLoRA"
    description = "Fine-tune LoRA adapters over a 4-bit NF4/FP4 base (bitsandbytes; CUDA or CPU)."
    config_class = QLoRAConfig
    requires = ("bitsandbytes",)
    libraries = ("torch", "transformers", "peft", "bitsandbytes")
    variant = "qlora"


@register_pass
class LoftQ(_LoRABase):
    name = "LoftQ"
    description = "QLoRA with LoftQ adapter initialisation that offsets the 4-bit quantization error."
    config_class = LoftQConfig
    requires = ("bitsandbytes",)
    libraries = ("torch", "transformers", "peft", "bitsandbytes")
    variant = "loftq"
