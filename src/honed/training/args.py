"""``training_args``: the Hugging Face ``TrainingArguments`` names a fine-tuning pass accepts.

Only the names honed implements are accepted; any other key is a validation error (the
workflow loader turns it into a "did you mean" message).  The old ``evaluation_strategy``
spelling is accepted as an alias of ``eval_strategy``.  Defaults favour a fast, accurate
small-model run (batch 8, one epoch, lr 2e-4) rather than copying HF's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from honed.data.config import SEED_MAX

Optim = Literal[
    "adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw", "adamw_8bit", "adamw_bnb_8bit",
    "paged_adamw_32bit", "paged_adamw_8bit", "sgd", "adafactor",
]
Scheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay",
]


class TrainingArgs(BaseModel):
    """Training loop settings, spelled as in Hugging Face ``TrainingArguments``."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    seed: int = Field(42, ge=0, le=SEED_MAX,
                      description="Seed of adapter initialisation, dropout and everything random (0 to 2**32-1).")
    data_seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Seed of the data order; `seed` when unset.")
    per_device_train_batch_size: int = Field(8, gt=0, description="Sequences per training micro-batch.")
    per_device_eval_batch_size: int = Field(8, gt=0, description="Sequences per evaluation batch.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    gradient_checkpointing: StrictBool = Field(
        False, description="Recompute activations in the backward pass: less memory, about 30% slower."
    )
    learning_rate: float = Field(2e-4, gt=0, le=10, description="Peak learning rate (above 0, at most 10).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 turns clipping off.")
    num_train_epochs: float = Field(1.0, gt=0, le=1e6, description="Passes over the training data (when max_steps "
                                    "is -1).")
    max_steps: int = Field(-1, le=10**9, description="Optimizer steps to run; -1 runs num_train_epochs instead.")
    lr_scheduler_type: Scheduler = Field("linear", description="Learning-rate schedule (transformers' names).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps; overrides warmup_ratio when > 0.")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="Warm-up as a fraction of all steps.")
    optim: Optim = Field(
        "adamw_torch",
        description="Optimizer; the bitsandbytes ones (paged_*, *_8bit) fall back to adamw_torch off CUDA.",
    )
    logging_steps: int = Field(10, gt=0, description="Log train loss, learning rate and tokens/s every N steps.")
    eval_strategy: Literal["no", "steps", "epoch"] = Field(
        "no", description="When to compute eval loss (old spelling `evaluation_strategy` also accepted)."
    )
    eval_steps: int | None = Field(None, gt=0, description="Steps between evaluations; logging_steps when unset.")
    save_steps: int = Field(50, gt=0, description="Checkpoint every N steps into the pass work dir (for resume).")
    save_total_limit: int = Field(1, gt=0, description="Checkpoints kept; older ones are deleted.")
    group_by_length: StrictBool = Field(
        True, description="Batch sequences of similar length together so padding wastes little compute."
    )
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after this many evaluations without eval-loss improvement."
    )
    early_stopping_threshold: float = Field(0.0, ge=0, description="Smallest eval-loss decrease that counts.")
    load_best_model_at_end: StrictBool = Field(
        False, description="Keep the adapter of the best evaluation rather than the last step."
    )
    bf16: StrictBool = Field(False, description="bf16 autocast over a float32 base (mixed precision).")
    fp16: StrictBool = Field(False, description="fp16 autocast over a float32 base (mixed precision, CUDA only).")

    @model_validator(mode="before")
    @classmethod
    def _old_spellings(cls, data: Any) -> Any:
        """Accept ``evaluation_strategy`` (transformers < 4.46) as ``eval_strategy``."""
        if isinstance(data, dict) and "evaluation_strategy" in data:
            data = dict(data)
            old = data.pop("evaluation_strategy")
            if "eval_strategy" in data and data["eval_strategy"] != old:
                raise ValueError("evaluation_strategy and eval_strategy disagree; keep only eval_strategy")
            data["eval_strategy"] = old
        return data

    @field_validator("max_steps", mode="before")
    @classmethod
    def _not_a_bool(cls, v: object) -> object:
        if isinstance(v, bool):  # true would silently mean 1 step
            raise ValueError("must be a whole number of steps, not true/false")
        return v

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("max_steps must be a positive number of steps, or -1 to use num_train_epochs")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainingArgs:
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 are both set; choose one")
        if self.early_stopping_patience is not None and self.eval_strategy == "no":
            raise ValueError("early_stopping_patience needs evaluation: set eval_strategy to 'steps' or 'epoch'")
        return self

    @property
    def effective_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def effective_eval_steps(self) -> int:
        return self.eval_steps or self.logging_steps
