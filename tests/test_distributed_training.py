"""Data-parallel fine-tuning (``training_args.num_processes``): two gloo processes train what one process trains.

The global batch is ``per_device_train_batch_size x gradient_accumulation_steps`` rows per optimizer step
whatever the process count, so a 2-process run must log the same per-step losses and end with the same weights
as a 1-process run.  They differ only by float rounding: each process sums its rows' losses and gradients, and
the two partial sums are then added, where one process adds the rows in another order (float32 sums in a
different order agree to about 1e-7 relative).  The batches are uneven (5 rows a micro-batch, 3 + 2 between the
ranks; a last micro-batch of 1) so that a rank normalising by its own label tokens, or averaging instead of
summing the gradients, changes the update (SGD, no clipping: the update is proportional to the gradient, which
Adam's normalisation would hide).

Workers load the data themselves, so the passes read a real JSONL data config (no monkeypatched rows).
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

import honed.training.finetune as ft
from honed.data.config import DataConfig
from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.passes.base import PassContext, get_pass
from honed.training import distributed as ddp
from honed.training.args import TrainingArgs
from honed.training.loop import Callback, TrainState
from honed.util.accelerator import Accelerator
from tests.test_finetune import EXAMPLES

# 26 rows, 5 a micro-batch, 2 micro-batches a step: steps of 10, 10 and 5 + 1 rows an epoch (rank 1 has no row
# of that last micro-batch).  A checkpoint every 2 steps (the kill test resumes from one).
ROWS = 26
LORA_ARGS = {"max_steps": 6, "learning_rate": 0.1, "optim": "sgd", "max_grad_norm": 0.0, "logging_steps": 1,
             "per_device_train_batch_size": 5, "gradient_accumulation_steps": 2, "save_steps": 2}
# AdamW with clipping, eval loss every 2 steps and the best weights kept: the paths the LoRA case leaves out.
FULL_ARGS = {"max_steps": 6, "learning_rate": 3e-3, "logging_steps": 1, "per_device_train_batch_size": 5,
             "gradient_accumulation_steps": 2, "save_steps": 100, "eval_strategy": "steps", "eval_steps": 2,
             "load_best_model_at_end": True, "per_device_eval_batch_size": 2}
WEIGHT_TOL = 1e-6
"""Max abs difference of final SGD-trained weights (of order 0.1): float32 sums in another order differ by about
1e-7 relative, and over 6 steps the weights drifted 1e-8 apart when measured; a halved gradient or a rank's own
token count moves them by far more than this (see the module docstring).  float32 throughout: in bf16 the
ranks' shorter padding changes the rounding by 1e-3 relative."""
ADAM_WEIGHT_TOL = 1e-5
"""The same for AdamW (lr 3e-3): Adam divides each gradient element by its running magnitude, so an element
near zero turns rounding into up to lr per step; measured 1.7e-6."""


class KillOnRank(Callback):
    """Raises ``KeyboardInterrupt`` in one rank after optimizer step ``step`` (a crashed worker)."""

    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_step_end(self, state: TrainState, args: TrainingArgs) -> None:
        if state.global_step == self.step and ddp.rank() == self.rank:
            raise KeyboardInterrupt


class RefuseOnRank(Callback):
    """Raises a UserError in rank 1 after step 1, as the loop does for a NaN loss (then on every rank)."""

    def on_step_end(self, state: TrainState, args: TrainingArgs) -> None:
        if state.global_step == 1 and ddp.rank() == 1:
            raise UserError("passes.LoRA.training_args: refused at step 1; fix it")


@pytest.fixture(scope="module")
def data_config(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    folder = tmp_path_factory.mktemp("ddp-data")
    rows = folder / "rows.jsonl"
    phrases = [(f"{text} {i}", tone) for i in range(5) for text, tone in EXAMPLES][:ROWS]  # distinct: no dedup
    rows.write_text("".join(json.dumps({"phrase": t, "tone": tone}) + "\n" for t, tone in phrases))
    return DataConfig.model_validate({
        "name": "train", "load_dataset_config": {"data_files": str(rows)},
        "pre_process_data_config": {"text_template": "### Text: {phrase}\n### The tone is:\n{tone}"},
    })


def run(kind: str, model_dir: Path, tmp: Path, data: DataConfig, processes: int, callbacks: tuple = (),
        **cfg: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Run LoRA or FullFineTune on ``model_dir`` with ``processes`` processes; final weights and metrics."""
    from safetensors.torch import load_file

    cls = get_pass(kind)
    args = (LORA_ARGS if kind == "LoRA" else FULL_ARGS) | {"num_processes": processes}
    config = cls.config_class.model_validate({"train_data_config": "train", "training_args": args} | cfg)
    ctx = PassContext(pass_name=kind, host=Accelerator(), target=Accelerator(), data_configs={"train": data},
                      work_dir=tmp / "work", cache_dir=tmp / "cache")
    base = ModelHandle(kind="hf", path=str(model_dir))
    if kind == "LoRA":
        handle = ft.finetune_adapter(base, config, tmp / "out", ctx, variant="lora", callbacks=callbacks)
        weights = load_file(str(Path(handle.path) / "adapter_model.safetensors"))
    else:
        handle = ft.finetune_full(base, config, tmp / "out", ctx, callbacks=callbacks)
        weights = load_file(str(Path(handle.path) / "model.safetensors"))
    return weights, ctx.metrics


LORA = {"r": 8, "alpha": 16, "lora_dropout": 0.0, "torch_dtype": "float32"}


@pytest.fixture(scope="module")
def lora_one(tiny_llama: Path, data_config: DataConfig, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The 1-process LoRA run the 2-process ones are compared with."""
    return run("LoRA", tiny_llama, tmp_path_factory.mktemp("one"), data_config, 1, **LORA)


def max_abs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n].double() - b[n].double()).abs().max()) for n in a)


def losses(metrics: dict[str, Any], name: str = "loss") -> list[tuple[int, float]]:
    return [(e["step"], e[name]) for e in metrics["log_history"] if name in e]


def assert_same_losses(one: dict[str, Any], two: dict[str, Any], name: str = "loss") -> None:
    a, b = losses(one, name), losses(two, name)
    assert [s for s, _ in a] == [s for s, _ in b] and a, (a, b)
    for (step, x), (_, y) in zip(a, b, strict=True):
        assert math.isclose(x, y, rel_tol=1e-4), f"{name} at step {step}: 1 process {x!r}, 2 processes {y!r}"


def test_lora_in_two_processes_trains_what_one_process_trains(lora_one: tuple, tiny_llama: Path,
                                                            data_config: DataConfig, tmp_path: Path) -> None:
    one_w, one = lora_one
    two_w, two = run("LoRA", tiny_llama, tmp_path, data_config, 2, **LORA)
    assert two["num_processes"] == 2 and two["train_steps"] == one["train_steps"] == 6
    assert_same_losses(one, two)
    diff = max_abs(one_w, two_w)
    moved = max_abs(one_w, {n: torch.zeros_like(t) for n, t in one_w.items()})
    assert diff <= WEIGHT_TOL, f"adapter weights differ by {diff:.3g} (max abs; largest weight {moved:.3g})"
    assert not (tmp_path / "work" / "checkpoints").exists() or all(
        p.name.startswith("checkpoint-") for p in (tmp_path / "work" / "checkpoints").iterdir())


def test_full_finetune_in_two_processes_trains_what_one_process_trains(tiny_llama: Path, data_config: DataConfig,
                                                                     tmp_path: Path) -> None:
    cfg = {"eval_dataset_size": 6, "torch_dtype": "float32"}
    one_w, one = run("FullFineTune", tiny_llama, tmp_path / "one", data_config, 1, **cfg)
    two_w, two = run("FullFineTune", tiny_llama, tmp_path / "two", data_config, 2, **cfg)
    assert_same_losses(one, two)
    assert_same_losses(one, two, "eval_loss")
    assert len(losses(one, "eval_loss")) == 3
    assert one["best_eval_loss"] == pytest.approx(two["best_eval_loss"], rel=1e-4)
    diff = max_abs(one_w, two_w)
    assert diff <= ADAM_WEIGHT_TOL, f"model weights differ by {diff:.3g} (max abs)"


def test_a_killed_two_process_run_resumes_where_it_stopped(lora_one: tuple, tiny_llama: Path,
                                                         data_config: DataConfig, tmp_path: Path) -> None:
    """Rank 1 dies after step 3: the launch fails in one line, the newest checkpoint is step 2's, and the rerun
    (2 processes again) resumes from it and ends with the weights of the uninterrupted run."""
    with pytest.raises(RuntimeError) as err:
        run("LoRA", tiny_llama, tmp_path, data_config, 2, callbacks=(KillOnRank(3, rank=1),), **LORA)
    message = str(err.value)
    assert "\n" not in message and "rank 1" in message and "KeyboardInterrupt" in message, message
    ckpts = sorted(p.name for p in (tmp_path / "work" / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2"], ckpts
    one_w, one = lora_one
    two_w, two = run("LoRA", tiny_llama, tmp_path, data_config, 2, **LORA)
    assert two["resumed_from_step"] == 2
    assert_same_losses(one, two)
    diff = max_abs(one_w, two_w)
    assert diff <= WEIGHT_TOL, f"resumed adapter differs from the uninterrupted one by {diff:.3g} (max abs)"


def test_a_user_error_in_a_worker_is_the_pass_s_user_error(tiny_llama: Path, data_config: DataConfig,
                                                           tmp_path: Path) -> None:
    """The other rank fails too (its peer is gone) with a RuntimeError: the user's error is the one raised.  The
    launcher's signal handlers do not outlive the launch."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(UserError) as err:
        run("LoRA", tiny_llama, tmp_path, data_config, 2, callbacks=(RefuseOnRank(),), **LORA)
    assert str(err.value) == "passes.LoRA.training_args: refused at step 1; fix it"
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_nccl_on_cpu_is_refused_in_one_line(tiny_llama: Path, data_config: DataConfig, tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        run("LoRA", tiny_llama, tmp_path, data_config, 2, training_args=LORA_ARGS | {"num_processes": 2,
                                                                                   "ddp_backend": "nccl"}, **LORA)
    message = str(err.value)
    assert "\n" not in message
    assert "passes.LoRA.training_args.ddp_backend" in message and "gloo" in message, message


@pytest.mark.parametrize(("training_args", "error"), [
    ({"num_processes": 0}, "num_processes"),
    ({"num_processes": -1}, "num_processes"),
    ({"ddp_backend": "mpi"}, "ddp_backend"),
])
def test_bad_process_settings_are_validation_errors(training_args: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        TrainingArgs.model_validate(training_args)


def test_process_settings_are_applied_not_warned() -> None:
    from honed.training.args import unapplied_training_args

    warnings, errors = unapplied_training_args({"ddp_backend": "gloo", "ddp_timeout": 60, "num_processes": 2,
                                                "ddp_bucket_cap_mb": 25})
    assert set(warnings) == {"ddp_bucket_cap_mb"} and not errors


def test_the_fingerprint_ignores_the_process_settings() -> None:
    """A run resumes with another number of processes: the checkpoint identity leaves them out."""
    from honed.training.loop import fingerprint

    rows = [{"input_ids": [1, 2, 3]}]
    base = fingerprint(TrainingArgs(), "m", rows)
    assert fingerprint(TrainingArgs(num_processes=3, ddp_backend="gloo", ddp_timeout=5), "m", rows) == base
    assert fingerprint(TrainingArgs(seed=1), "m", rows) != base
