"""``honed finetune``: fine-tune a causal LM on a data file with LoRA, QLoRA or DoRA in one line."""

from __future__ import annotations

import argparse

from honed.cli.shortcuts import (
    FieldFlag,
    add_common,
    add_field_flags,
    check_applies,
    collect,
    common_kwargs,
    finish,
)
from honed.data.config import LoadDatasetConfig, PreProcessDataConfig
from honed.passes.lora import FineTuneConfig, LoRAConfig, QLoRAConfig
from honed.training.args import TrainingArgs
from honed.workflows import finetune
from honed.workflows.build import FINETUNE_PASSES

PASS_FLAGS = [
    FieldFlag("--r", LoRAConfig, "r", "pass_options"),
    FieldFlag("--alpha", LoRAConfig, "alpha", "pass_options"),
    FieldFlag("--lora-dropout", LoRAConfig, "lora_dropout", "pass_options"),
    FieldFlag("--target-modules", LoRAConfig, "target_modules", "pass_options"),
    FieldFlag("--modules-to-save", LoRAConfig, "modules_to_save", "pass_options"),
    FieldFlag("--use-rslora", LoRAConfig, "use_rslora", "pass_options"),
    FieldFlag("--eval-size", FineTuneConfig, "eval_dataset_size", "pass_options"),
    FieldFlag("--torch-dtype", FineTuneConfig, "torch_dtype", "pass_options"),
    FieldFlag("--quant-type", QLoRAConfig, "quant_type", "pass_options"),
    FieldFlag("--double-quant", QLoRAConfig, "double_quant", "pass_options"),
    FieldFlag("--compute-dtype", QLoRAConfig, "compute_dtype", "pass_options"),
]
TRAINING_FLAGS = [
    FieldFlag("--max-steps", TrainingArgs, "max_steps", "training_args"),
    FieldFlag("--num-train-epochs", TrainingArgs, "num_train_epochs", "training_args"),
    FieldFlag("--learning-rate", TrainingArgs, "learning_rate", "training_args"),
    FieldFlag("--batch-size", TrainingArgs, "per_device_train_batch_size", "training_args"),
    FieldFlag("--gradient-accumulation-steps", TrainingArgs, "gradient_accumulation_steps", "training_args"),
    FieldFlag("--gradient-checkpointing", TrainingArgs, "gradient_checkpointing", "training_args"),
    FieldFlag("--lr-scheduler-type", TrainingArgs, "lr_scheduler_type", "training_args"),
    FieldFlag("--warmup-steps", TrainingArgs, "warmup_steps", "training_args"),
    FieldFlag("--logging-steps", TrainingArgs, "logging_steps", "training_args"),
    FieldFlag("--eval-strategy", TrainingArgs, "eval_strategy", "training_args"),
    FieldFlag("--save-steps", TrainingArgs, "save_steps", "training_args"),
    FieldFlag("--seed", TrainingArgs, "seed", "training_args"),
]
DATA_FLAGS = [
    FieldFlag("--text-template", PreProcessDataConfig, "text_template", "data_options", escapes=True),
    FieldFlag("--text-cols", PreProcessDataConfig, "text_cols", "data_options"),
    FieldFlag("--max-seq-len", PreProcessDataConfig, "max_seq_len", "data_options"),
    FieldFlag("--strategy", PreProcessDataConfig, "strategy", "data_options"),
    FieldFlag("--max-samples", PreProcessDataConfig, "max_samples", "data_options"),
    FieldFlag("--completion-only", PreProcessDataConfig, "completion_only", "data_options"),
    FieldFlag("--shuffle", PreProcessDataConfig, "shuffle", "data_options"),
    FieldFlag("--split", LoadDatasetConfig, "split", "load_options"),
    FieldFlag("--subset", LoadDatasetConfig, "subset", "load_options"),
]
FLAGS = PASS_FLAGS + TRAINING_FLAGS + DATA_FLAGS

EPILOG = """example:
  honed finetune -m HuggingFaceTB/SmolLM2-135M-Instruct -d tones.jsonl \\
      --text-template '### Text: {phrase}\\n### The tone is:\\n{tone}' --max-seq-len 64 \\
      --method lora --r 16 --alpha 32 --max-steps 100 --eval-size 0.2 -o models/tones --save-config tones.json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="Fine-tune a causal LM on a data file with LoRA, QLoRA or DoRA (one-line workflow).",
        description="Fine-tune a causal LM on a local data file (json/jsonl/csv/parquet) or hub dataset. "
        "Writes the adapter (or with --merge the merged model) to --output-dir. The loss covers the "
        "answer only (completion-only): everything after the prompt, which ends at the first field after an "
        "assistant marker such as <|assistant|> or ### Response:, else at the template's last field.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument("-d", "--data", required=True,
                   help="Training rows: a local json/jsonl/csv/parquet file, or a hub dataset id.")
    p.add_argument("--method", choices=list(FINETUNE_PASSES), default="lora",
                   help="lora, qlora (4-bit base, needs bitsandbytes) or dora (default: lora).")
    p.add_argument("--merge", action="store_true",
                   help="Merge the adapter into the base (MergeAdapterWeights) so the output is a full model.")
    add_field_flags(p.add_argument_group("adapter (LoRA/QLoRA/DoRA pass fields)"), PASS_FLAGS)
    add_field_flags(p.add_argument_group("training (training_args fields)"), TRAINING_FLAGS)
    add_field_flags(p.add_argument_group("data (data config fields)"), DATA_FLAGS)
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from honed.passes.base import get_pass

    values = collect(args, FLAGS)
    pass_options = values.get("pass_options", {})
    check_applies(pass_options, FLAGS, get_pass(FINETUNE_PASSES[args.method]).config_class, "pass_options",
                  f"to --method {args.method} (it is a qlora option)")
    config = finetune(
        args.model, args.data, method=args.method, merge=args.merge, pass_options=pass_options,
        training_args=values.get("training_args"), data_options=values.get("data_options"),
        load_options=values.get("load_options"), **common_kwargs(args),
    )
    return finish(args, config)
