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
    lr_scheduler_kwargs: dict[str, float | int | str | bool] | None = Field(
        None, description="Extra arguments of the schedule, passed to transformers' get_scheduler as "
        "scheduler_specific_kwargs (e.g. {min_lr: 1e-5} for cosine_with_min_lr, {power: 2.0} for polynomial)."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps; overrides warmup_ratio when > 0.")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="Warm-up as a fraction of all steps.")
    optim: Optim = Field(
        "adamw_torch",
        description="Optimizer; the bitsandbytes ones (paged_*, *_8bit) fall back to adamw_torch off CUDA.",
    )
    logging_steps: int = Field(10, gt=0, description="Log train loss, learning rate and tokens/s every N steps.")
    eval_strategy: Literal["no", "steps", "epoch"] = Field(
        "no", description="When to compute eval loss: 'steps' at every multiple of eval_steps, 'epoch' at the end of "
        "each epoch (and at the last step when max_steps ends training inside an epoch), 'no' never. No extra "
        "evaluation runs because training ended (as in transformers 4.x; see load_best_model_at_end). Old spelling "
        "`evaluation_strategy` also accepted."
    )
    eval_steps: int | None = Field(
        None, gt=0, description="With eval_strategy 'steps': evaluate after optimizer steps eval_steps, 2 x eval_steps, "
        "...; logging_steps when unset. A run of fewer steps computes no eval loss."
    )
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
        False, description="Keep the trained weights of the evaluation with the lowest eval loss rather than the last "
        "step's. With eval_strategy 'steps' the last step is then evaluated too when an earlier evaluation ran, so the "
        "last weights compete; with no evaluation (eval_strategy 'no', or eval_steps never reached) the last step's "
        "weights are kept."
    )
    num_processes: int = Field(
        1, gt=0, le=1024,
        description="Data-parallel processes honed launches (accelerate's name): on this machine through torch's "
        "elastic launcher, or as Ray Train workers across the nodes when the pass runs on a Ray system whose nodes "
        "see the cache; each with max(1, cores // num_processes) torch threads, or one GPU each on CUDA. The global "
        "batch stays per_device_train_batch_size x gradient_accumulation_steps rows per optimizer step whatever "
        "this is: each step's rows are split between the processes, so steps, schedule, checkpoints and updates are "
        "those of one process, within float rounding (in float32 about 1e-7 relative; in bf16 each process's "
        "shorter padding rounds differently, about 1e-3; LoRA dropout masks are drawn per process). Part of the "
        "pass's cache key: a killed run resumes from its checkpoints when rerun with the same value.",
    )
    ddp_backend: Literal["gloo", "nccl"] | None = Field(
        None, description="Process-group backend when num_processes > 1; unset: gloo on CPU, nccl on CUDA."
    )
    ddp_timeout: int = Field(
        1800, gt=0, le=10**6,
        description="Seconds a process waits for the others in a collective before the run fails (num_processes > 1).",
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
        if self.lr_scheduler_type == "cosine_with_min_lr" and not {"min_lr", "min_lr_rate"} & set(
                self.lr_scheduler_kwargs or {}):
            raise ValueError("lr_scheduler_type cosine_with_min_lr needs lr_scheduler_kwargs with min_lr or "
                             "min_lr_rate, e.g. {min_lr: 1e-5}")
        if self.lr_scheduler_type == "warmup_stable_decay" and "num_decay_steps" not in (self.lr_scheduler_kwargs or {}):
            raise ValueError("lr_scheduler_type warmup_stable_decay needs lr_scheduler_kwargs with num_decay_steps "
                             "(optimizer steps of the final decay), e.g. {num_decay_steps: 100}")
        if self.lr_scheduler_type == "reduce_lr_on_plateau" and self.eval_strategy == "no":
            # It lowers the rate when the eval loss stops improving: without evaluations it would never act.
            raise ValueError("lr_scheduler_type reduce_lr_on_plateau steps on the eval loss: set eval_strategy to "
                             "'steps' or 'epoch'")
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


PROCESS_FIELDS = frozenset({"num_processes", "ddp_backend", "ddp_timeout"})
"""Fields that spread a run over processes without changing its result: left out of the checkpoint fingerprint,
so a run killed with one number of processes resumes with another."""


_HF_FIELDS = """
accelerator_config activation_checkpointing activation_checkpointing_kwargs adam_beta1 adam_beta2 adam_epsilon
auto_find_batch_size average_tokens_across_devices batch_eval_metrics bf16 bf16_full_eval data_seed
dataloader_drop_last dataloader_in_order dataloader_multiprocessing_context dataloader_num_workers
dataloader_persistent_workers dataloader_pin_memory dataloader_prefetch_factor ddp_backend ddp_broadcast_buffers
ddp_bucket_cap_mb ddp_find_unused_parameters ddp_static_graph ddp_timeout debug deepspeed disable_tqdm do_eval
do_predict do_train enable_jit_checkpoint eval_accumulation_steps eval_delay eval_do_concat_batches eval_on_start
eval_steps eval_strategy eval_use_gather_object fp16 fp16_full_eval fsdp fsdp_config full_determinism
gradient_accumulation_steps gradient_checkpointing gradient_checkpointing_kwargs greater_is_better hub_always_push
hub_model_id hub_private_repo hub_revision hub_strategy hub_token ignore_data_skip include_for_metrics
include_num_input_tokens_seen label_names label_smoothing_factor learning_rate length_column_name liger_kernel_config
load_best_model_at_end local_rank log_level log_level_replica log_on_each_node logging_first_step
logging_nan_inf_filter logging_steps logging_strategy lr_scheduler_kwargs lr_scheduler_type max_grad_norm max_steps
metric_for_best_model neftune_noise_alpha num_train_epochs optim optim_args optim_target_modules output_dir
parallelism_config per_device_eval_batch_size per_device_train_batch_size prediction_loss_only project push_to_hub
remove_unused_columns report_to restore_callback_states_from_checkpoint resume_from_checkpoint run_name
save_on_each_node save_only_model save_steps save_strategy save_total_limit seed skip_memory_metrics tf32
torch_compile torch_compile_backend torch_compile_mode torch_empty_cache_steps trackio_bucket_id trackio_space_id
trackio_static_space_id train_sampling_strategy use_cache use_cpu use_liger_kernel warmup_steps weight_decay
adafactor dispatch_batches evaluation_strategy fp16_backend fp16_opt_level fsdp_min_num_params
fsdp_transformer_layer_cls_to_wrap group_by_length half_precision_backend include_inputs_for_metrics
include_tokens_per_second jit_mode_eval logging_dir mp_parameters no_cuda overwrite_output_dir past_index
per_gpu_eval_batch_size per_gpu_train_batch_size push_to_hub_model_id push_to_hub_organization push_to_hub_token
ray_scope save_safetensors sharded_ddp split_batches torchdynamo tpu_metrics_debug tpu_num_cores use_ipex
use_legacy_prediction_loop use_mps_device use_seedable_sampler warmup_ratio xpu_backend
"""
HF_TRAINING_ARGUMENTS = frozenset(_HF_FIELDS.split())
"""Every field of Hugging Face ``TrainingArguments`` in transformers 5 plus those older 4.x releases had (Olive
files written against them still use ``overwrite_output_dir``, ``logging_dir``, ``no_cuda``...).  A test checks
that it covers the installed transformers' fields."""

_WHY_NOT_APPLIED = (
    (("output_dir", "overwrite_output_dir", "save_strategy", "save_on_each_node", "save_only_model",
      "save_safetensors", "resume_from_checkpoint", "restore_callback_states_from_checkpoint", "ignore_data_skip"),
     "honed checkpoints into the pass's work folder in its cache every save_steps and resumes from it itself; "
     "the model goes to engine.output_dir"),
    (("report_to", "logging_dir", "logging_strategy", "logging_first_step", "logging_nan_inf_filter", "log_level",
      "log_level_replica", "log_on_each_node", "disable_tqdm", "run_name", "project", "trackio_space_id",
      "trackio_bucket_id", "trackio_static_space_id", "skip_memory_metrics", "include_num_input_tokens_seen",
      "include_tokens_per_second", "debug", "tpu_metrics_debug"),
     "honed logs loss and tokens/s every logging_steps to the console and footprints.json and sends nothing"),
    (("push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push",
      "hub_revision", "push_to_hub_model_id", "push_to_hub_organization", "push_to_hub_token"),
     "honed never uploads; the model is written to engine.output_dir"),
    (("ddp_broadcast_buffers", "ddp_bucket_cap_mb", "ddp_find_unused_parameters",
      "ddp_static_graph", "fsdp", "fsdp_config", "fsdp_min_num_params",
      "fsdp_transformer_layer_cls_to_wrap", "deepspeed", "accelerator_config", "parallelism_config", "local_rank",
      "sharded_ddp", "mp_parameters", "tpu_num_cores", "xpu_backend", "ray_scope", "dispatch_batches",
      "split_batches", "average_tokens_across_devices", "dataloader_in_order"),
     "honed trains a whole model copy in each of training_args.num_processes processes on this machine and sums "
     "their gradients itself"),
    (("dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
      "dataloader_multiprocessing_context", "remove_unused_columns", "length_column_name", "label_names",
      "use_seedable_sampler"),
     "honed tokenizes, packs and batches the data itself (see pre_process_data_config)"),
    (("do_train", "do_eval", "do_predict", "prediction_loss_only", "eval_accumulation_steps", "eval_do_concat_batches",
      "eval_use_gather_object", "include_for_metrics", "include_inputs_for_metrics", "batch_eval_metrics",
      "eval_on_start", "use_legacy_prediction_loop", "jit_mode_eval", "per_gpu_eval_batch_size"),
     "the pass trains; eval loss follows eval_strategy and the engine's evaluator scores the model"),
    (("torch_compile", "torch_compile_backend", "torch_compile_mode", "torchdynamo", "use_liger_kernel",
      "liger_kernel_config", "tf32", "use_ipex", "use_cpu", "no_cuda", "use_mps_device", "torch_empty_cache_steps",
      "full_determinism", "use_cache", "enable_jit_checkpoint", "fp16_backend", "fp16_opt_level",
      "half_precision_backend", "bf16_full_eval", "fp16_full_eval", "gradient_checkpointing_kwargs",
      "activation_checkpointing_kwargs"),
     "honed picks kernels, precision and device from the host system (systems.<name>.accelerators)"),
)
WHY_NOT_APPLIED: dict[str, str] = {k: why for keys, why in _WHY_NOT_APPLIED for k in keys}
"""``TrainingArguments`` fields honed reads but does not apply, each with what honed does instead (a warning)."""

ALIASES = {"activation_checkpointing": "gradient_checkpointing", "adafactor": "optim",
           "per_gpu_train_batch_size": "per_device_train_batch_size"}
"""Old or alternative spellings of a field honed applies (the warning names the field to use)."""

CHANGES_RESULT: dict[str, tuple[tuple[Any, ...], str]] = {
    "label_smoothing_factor": ((0, 0.0, None), "honed trains with plain cross-entropy"),
    "neftune_noise_alpha": ((None, 0, 0.0), "honed adds no embedding noise"),
    "optim_args": ((None, "", {}), "honed's optimizers take only the adam_* and weight_decay fields"),
    "optim_target_modules": ((None,), "honed's optimizers update every trainable parameter"),
    "metric_for_best_model": ((None, "loss", "eval_loss"), "honed keeps the adapter of the lowest eval loss"),
    "greater_is_better": ((None, False), "honed keeps the adapter of the lowest eval loss"),
    "auto_find_batch_size": ((False,), "honed trains with per_device_train_batch_size as given"),
    "dataloader_drop_last": ((False,), "honed trains on the last partial batch too"),
    "train_sampling_strategy": (("random",), "honed shuffles the training sequences (group_by_length aside)"),
    "eval_delay": ((0, 0.0), "honed evaluates from the first eval step"),
}
"""Fields whose non-default value would change the trained weights or the adapter kept: an error (with the
value honed would use instead), never silently dropped."""


def unapplied_training_args(args: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Split the ``TrainingArguments`` fields of ``args`` that honed does not apply into
    (key -> warning: what honed does instead) and (key -> error: why the run would differ).

    Keys honed applies and keys that are not ``TrainingArguments`` fields at all (reported by validation,
    with a "did you mean") are in neither.
    """
    warnings: dict[str, str] = {}
    errors: dict[str, str] = {}
    applied = set(TrainingArgs.model_fields) | {"evaluation_strategy"}
    for key, value in args.items():
        if key in applied or key not in HF_TRAINING_ARGUMENTS:
            continue
        if key in CHANGES_RESULT:
            neutral, why = CHANGES_RESULT[key]
            if not any((value == n and type(value) is type(n)) or value is n for n in neutral):
                errors[key] = f"{value!r} would change the result but {why}; remove it"
            else:
                warnings[key] = f"{why} (the value given changes nothing)"
        elif key in ALIASES and value not in (None, False):
            errors[key] = f"honed spells this {ALIASES[key]}; rename it"
        else:
            warnings[key] = WHY_NOT_APPLIED.get(key, "honed's training loop does not use it")
    return warnings, errors
