"""The seed workflow written twice: honed's schema and Olive's (0.13, flat schema), kept equivalent.

Both fine-tune the same LoRA (r, alpha, dropout, target modules), on the same rows (80% train split,
line-by-line, max_seq_len, dynamic padding), for the same steps/batch/lr/schedule/warmup, then merge
the adapter and build an int4 onnxruntime-genai model.  As in the seed's config, `torch_dtype` is not
set, so each tool trains in its own default: Olive loads the base in bf16; honed picks bf16 (fp32
adapter) where the CPU multiplies bf16 natively, fp32 elsewhere.  One more difference is kept on
purpose: honed computes the loss on the label only (its text-template default, completion-only);
Olive has no such option for text templates and trains on every token.  `bench/finetune.py` compares
the training loops at equal precision (fp32).

`write_configs` writes the pair a full `bench/run.py` run used into `bench/olive/`, each path in them
relative to that folder, so the committed files name nothing outside the repository: `honed run --config
bench/olive/<model>.honed.json` resolves them beside the config; `olive run` resolves them against the
working folder, so run it from `bench/olive/`.  This module is a library (no command); the smoke check is
tests/test_bench_smoke.py writing the configs for a tiny model and finding no absolute path in them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_SEQ_LEN = 96


def training_args(steps: int) -> dict[str, Any]:
    return {"seed": 0, "per_device_train_batch_size": 8, "learning_rate": 0.0005, "max_steps": steps,
            "logging_steps": 10, "warmup_steps": 5, "lr_scheduler_type": "linear",
            "gradient_checkpointing": False}  # Olive defaults it on; honed off: same work for both


def honed_workflow(model: str, data: str, steps: int, completion_only: bool = True) -> dict[str, Any]:
    """honed's schema; no evaluator (the int4 output is scored afterwards with `honed evaluate`)."""
    return {
        "input_model": {"model_path": model, "task": "text-generation"},
        "data_configs": [{
            "name": "train",
            "load_dataset_config": {"data_name": "json", "data_files": data, "split": "train[:80%]"},
            "pre_process_data_config": {"text_template": TEMPLATE, "strategy": "line-by-line",
                                        "max_seq_len": MAX_SEQ_LEN, "completion_only": completion_only,
                                        "overflow": "truncate"},  # Olive truncates silently
        }],
        "passes": {
            "lora": {"type": "LoRA", "r": 16, "alpha": 32, "lora_dropout": 0.05, "target_modules": TARGETS,
                     "train_data_config": "train", "training_args": training_args(steps)},
            "merge": {"type": "MergeAdapterWeights"},
            "builder": {"type": "ModelBuilder", "precision": "int4"},
        },
    }


def olive_workflow(model: str, data: str, steps: int, cache_dir: Path, output_dir: Path) -> dict[str, Any]:
    """Olive 0.13's flat schema, the same workflow."""
    return {
        "input_model": {"type": "HfModel", "model_path": model, "task": "text-generation"},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [{"device": "cpu",
                                                                             "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [{
            "name": "train",
            "type": "HuggingfaceContainer",
            "load_dataset_config": {"data_name": "json", "data_files": data, "split": "train[:80%]"},
            "pre_process_data_config": {"text_template": TEMPLATE, "strategy": "line-by-line",
                                        "max_seq_len": MAX_SEQ_LEN, "pad_to_max_len": False},
        }],
        "passes": {
            "lora": {"type": "LoRA", "r": 16, "alpha": 32, "lora_dropout": 0.05, "target_modules": TARGETS,
                     "train_data_config": "train", "training_args": training_args(steps)},
            "merge": {"type": "MergeAdapterWeights"},
            "builder": {"type": "ModelBuilder", "precision": "int4"},
        },
        "host": "local_system",
        "target": "local_system",
        "log_severity_level": 1,
        "cache_dir": str(cache_dir),
        "output_dir": str(output_dir),
    }


def eval_config(data: str) -> dict[str, Any]:
    """Held-out accuracy (the last 20% of the rows), the same evaluator for both tools' int4 outputs."""
    return {
        "data_configs": [{
            "name": "held_out",
            "load_dataset_config": {"data_name": "json", "data_files": data, "split": "train[80%:]"},
            "pre_process_data_config": {"text_template": TEMPLATE, "strategy": "line-by-line",
                                        "max_seq_len": MAX_SEQ_LEN, "overflow": "truncate"},
        }],
        "evaluators": {"held_out": {"metrics": [
            {"name": "tone", "type": "accuracy", "data_config": "held_out",
             "sub_types": [{"name": "accuracy_score", "priority": 1}]},
        ]}},
    }


def write_configs(folder: Path, name: str, model: str | Path, data: str | Path, steps: int) -> list[Path]:
    """Write ``<name>.json`` (Olive) and ``<name>.honed.json`` into ``folder``, the model and data paths
    relative to ``folder`` (a ``pkg://`` or hub model is written as it is)."""
    folder.mkdir(parents=True, exist_ok=True)

    def rel(p: str | Path) -> str:
        if "://" in str(p) or not (Path(p).is_absolute() or Path(p).exists()):  # pkg://, a hub id: as given
            return str(p)
        return Path(os.path.relpath(os.path.abspath(p), os.path.abspath(folder))).as_posix()  # links kept

    model_s, data_s = rel(model), rel(data)
    out = [folder / f"{name}.json", folder / f"{name}.honed.json"]
    out[0].write_text(json.dumps(olive_workflow(model_s, data_s, steps, Path("cache"), Path("out")), indent=1) + "\n")
    out[1].write_text(json.dumps(honed_workflow(model_s, data_s, steps), indent=1) + "\n")
    return out
