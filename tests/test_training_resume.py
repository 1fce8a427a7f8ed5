"""A fine-tune killed and rerun ends exactly where an uninterrupted one does, whatever the training options.

Each case trains a tiny model once straight through, then again with the run killed at several points (right
after a checkpoint, between checkpoints, after an evaluation, in the middle of an accumulated step), each time
rerunning the pass on the same work dir so it resumes from its newest checkpoint.  The final trainable weights
must agree within 1e-6 (max abs) and the reported metrics (train/eval/best loss, steps, the log) must be the same.
A kill is simulated in-process: a callback, or a wrapped ``loss_sum``, raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import honed.training.finetune as ft
import honed.training.loop as loop
from honed.models.handle import ModelHandle
from honed.passes.base import get_pass
from honed.training.args import TrainingArgs
from honed.training.loop import Callback, TrainState
from tests.test_finetune import EXAMPLES, _one_thread, make_ctx, make_rows  # noqa: F401  (_one_thread: autouse)

# 24 rows at 4 a batch: 6 micro-batches an epoch.  Checkpoints every 3 steps, a logged train loss every 4, so a
# resumed run restarts inside a logging window.
BASE = {"max_steps": 12, "learning_rate": 1e-2, "logging_steps": 4, "per_device_train_batch_size": 4,
        "save_steps": 3}
EVAL = {"eval_strategy": "steps", "eval_steps": 2}


@dataclass(frozen=True)
class Kill:
    """Where a run dies: after optimizer step ``step`` (after the checkpoint due then), or with ``mid`` in the
    middle of that step, at its second micro-batch (gradient accumulation)."""

    step: int
    mid: bool = False

    def __str__(self) -> str:
        return f"{'mid-' if self.mid else ''}step{self.step}"


@dataclass(frozen=True)
class Case:
    training_args: dict[str, Any]
    kills: tuple[Kill, ...]
    lora: dict[str, Any] = field(default_factory=lambda: {"lora_dropout": 0.0})
    full: bool = False
    """FullFineTune instead of LoRA."""


def k(*steps: int) -> tuple[Kill, ...]:
    return tuple(Kill(s) for s in steps)


CASES: dict[str, Case] = {
    "plain": Case({}, k(3, 5, 10)),
    # Dropout draws from torch's RNG: rates <= 0.25 go through honed's sparse sampler, higher ones nn.Dropout.
    "dropout_sparse": Case({}, k(4, 6, 11), lora={"lora_dropout": 0.2}),
    "dropout_torch": Case({}, k(7), lora={"lora_dropout": 0.4}),
    # The eval rows pull away from the training rows: the best evaluation (step 6) is neither the first nor the last.
    "best_model": Case(EVAL | {"load_best_model_at_end": True}, k(4, 7, 11), lora={"lora_dropout": 0.1}),
    "early_stopping": Case(EVAL | {"load_best_model_at_end": True, "early_stopping_patience": 2, "max_steps": 20},
                           k(4, 8, 9)),
    "linear_warmup": Case({"lr_scheduler_type": "linear", "warmup_steps": 3}, k(2, 4, 8)),
    "cosine_warmup": Case({"lr_scheduler_type": "cosine", "warmup_ratio": 0.25}, k(3, 7)),
    "cosine_with_restarts": Case({"lr_scheduler_type": "cosine_with_restarts", "warmup_steps": 2,
                                  "lr_scheduler_kwargs": {"num_cycles": 2}}, k(7)),
    "polynomial": Case({"lr_scheduler_type": "polynomial", "warmup_steps": 2,
                        "lr_scheduler_kwargs": {"power": 2.0, "lr_end": 1e-4}}, k(7)),
    "constant": Case({"lr_scheduler_type": "constant"}, k(7)),
    "constant_with_warmup": Case({"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 4}, k(5)),
    "inverse_sqrt": Case({"lr_scheduler_type": "inverse_sqrt", "warmup_steps": 2}, k(7)),
    "cosine_with_min_lr": Case({"lr_scheduler_type": "cosine_with_min_lr", "warmup_steps": 2,
                                "lr_scheduler_kwargs": {"min_lr": 1e-3}}, k(7)),
    "warmup_stable_decay": Case({"lr_scheduler_type": "warmup_stable_decay", "warmup_steps": 2,
                                 "lr_scheduler_kwargs": {"num_decay_steps": 4}}, k(7, 10)),
    # The schedule steps on eval loss, so the evaluations of the killed run must reach it in the same state.
    "reduce_lr_on_plateau": Case(EVAL | {"lr_scheduler_type": "reduce_lr_on_plateau",
                                         "lr_scheduler_kwargs": {"patience": 0, "factor": 0.5}}, k(5, 9)),
    # Batches of 5: groups of 2, 2 and 1 micro-batches an epoch; killed between the two halves of a step too.
    "grad_accumulation": Case({"gradient_accumulation_steps": 2, "per_device_train_batch_size": 5},
                              (Kill(5, mid=True), Kill(6), Kill(8, mid=True), Kill(11)), lora={"lora_dropout": 0.1}),
    # 6 steps an epoch, 15 in all; the checkpoint at step 6 is taken at the end of an epoch.
    "epochs": Case({"max_steps": -1, "num_train_epochs": 2.5, "eval_strategy": "epoch", "group_by_length": False,
                    "data_seed": 7}, k(6, 10, 14), lora={"lora_dropout": 0.1}),
    # Every weight trains (the best ones are as large as the model); the eval loss is lowest at step 4.
    "full_best_model": Case(EVAL | {"load_best_model_at_end": True}, k(4, 7, 11), full=True),
}


# ----------------------------------------------------------------------------- running a pass


def answer_rows(model_dir: Path, answer: str) -> list[dict[str, list[int]]]:
    """Completion-only rows with the training prompts and ``answer`` as every completion."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for text, _ in EXAMPLES:
        prompt = tok(f"### Text: {text}\n### The tone is:\n")["input_ids"]
        completion = [*tok(answer)["input_ids"], tok.eos_token_id]
        ids = [*prompt, *completion]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt) + completion})
    return rows


class Killer(Callback):
    """Raises ``KeyboardInterrupt`` where ``kill`` says; ``loss`` wraps the loop's ``loss_sum`` for a mid-step kill."""

    def __init__(self, kill: Kill) -> None:
        self.kill, self.finished, self.micro = kill, None, 0

    def on_step_end(self, state: TrainState, args: TrainingArgs) -> None:
        self.finished, self.micro = state.global_step, 0
        if not self.kill.mid and state.global_step == self.kill.step:
            raise KeyboardInterrupt

    def loss(self, real: Any) -> Any:
        def loss_sum(model: Any, batch: dict[str, Any], parts: Any) -> Any:
            if torch.is_grad_enabled():  # a training micro-batch, not an evaluation
                self.micro += 1
                if self.kill.mid and self.finished == self.kill.step - 1 and self.micro == 2:
                    raise KeyboardInterrupt
            return real(model, batch, parts)

        return loss_sum


def run(case: Case, model_dir: Path, tmp: Path, callbacks: tuple[Callback, ...] = ()) -> tuple[dict, dict]:
    """Run the case's pass in ``tmp`` (work dir ``tmp/work``); its final trainable weights and its metrics."""
    from safetensors.torch import load_file

    name = "FullFineTune" if case.full else "LoRA"
    cls = get_pass(name)
    cfg = {"train_data_config": "train", "training_args": BASE | case.training_args}
    if not case.full:
        cfg |= {"r": 8, "alpha": 16} | case.lora
    config = cls.config_class.model_validate(cfg)
    ctx, _ = make_ctx(tmp, name)
    base = ModelHandle(kind="hf", path=str(model_dir))
    if case.full:
        handle = ft.finetune_full(base, config, tmp / "out", ctx, callbacks=callbacks)
        weights = load_file(str(Path(handle.path) / "model.safetensors"))
    else:
        handle = ft.finetune_adapter(base, config, tmp / "out", ctx, variant="lora", callbacks=callbacks)
        weights = load_file(str(Path(handle.path) / "adapter_model.safetensors"))
    return weights, ctx.metrics


def run_killed(case: Case, model_dir: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Kill the run at each of the case's points in turn, rerunning it after each; the last rerun finishes."""
    save = (BASE | case.training_args)["save_steps"]
    for kill in case.kills:
        killer = Killer(kill)
        with monkeypatch.context() as m:
            m.setattr(loop, "loss_sum", killer.loss(loop.loss_sum))
            with pytest.raises(KeyboardInterrupt):
                run(case, model_dir, tmp, callbacks=(killer,))
        # The kill landed where meant: the newest checkpoint is the last one due before it.
        done = kill.step - 1 if kill.mid else kill.step
        ckpts = sorted(int(p.name.split("-")[1]) for p in (tmp / "work" / "checkpoints").glob("checkpoint-*"))
        assert ckpts[-1:] == ([done // save * save] if done >= save else []), (kill, ckpts)
    return run(case, model_dir, tmp)


def comparable(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics a resume must reproduce: losses, steps and the log (not timings, memory or tokens/s)."""
    keep = ("train_steps", "train_loss", "train_loss_first_step", "eval_loss", "best_eval_loss")
    log = [{key: v for key, v in entry.items() if key != "tokens_per_s"} for entry in metrics["log_history"]]
    return {key: metrics[key] for key in keep if key in metrics} | {"log_history": log}


def max_abs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n].double() - b[n].double()).abs().max()) for n in a)


@pytest.fixture
def data(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The passes train on 24 rows and evaluate on 6 rows whose answer the training moves away from."""
    rows, eval_rows = make_rows(tiny_llama), answer_rows(tiny_llama, "the quick")
    monkeypatch.setattr(ft, "load_splits", lambda config, tokenizer, ctx: (rows, eval_rows))
    return tiny_llama


# ----------------------------------------------------------------------------- the table


@pytest.mark.parametrize("name", list(CASES))
def test_killed_and_resumed_run_ends_as_an_uninterrupted_one(name: str, data: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    straight_w, straight = run(case, data, tmp_path / "straight")
    resumed_w, resumed = run_killed(case, data, tmp_path / "killed", monkeypatch)

    last_kill = case.kills[-1]
    save = (BASE | case.training_args)["save_steps"]
    resumed_at = ((last_kill.step - 1) if last_kill.mid else last_kill.step) // save * save
    assert resumed.get("resumed_from_step") == (resumed_at or None)
    assert "resumed_from_step" not in straight

    diff = max_abs(straight_w, resumed_w)
    assert diff <= 1e-6, f"{name}: final trainable weights differ by {diff:.3g} (max abs)"
    a, b = comparable(straight), comparable(resumed)
    assert a.keys() == b.keys(), f"{name}: reported metrics differ: {sorted(a)} vs {sorted(b)}"
    assert _close(a, b), f"{name}: reported metrics differ:\n{a}\n!=\n{b}"

    evals = [(e["step"], e["eval_loss"]) for e in straight["log_history"] if "eval_loss" in e]
    if case.training_args.get("load_best_model_at_end"):
        # The case means something only if the kept weights are not the last ones and the resumed run must
        # bring the best ones back from a checkpoint.
        best_step = min(evals, key=lambda e: e[1])[0]
        assert best_step < straight["train_steps"] and best_step <= resumed_at, evals
        assert straight["best_eval_loss"] == min(e[1] for e in evals)
    if "early_stopping_patience" in case.training_args:
        assert straight["train_steps"] < case.training_args["max_steps"], "the early stop never happened"
    if case.training_args.get("lr_scheduler_type") == "reduce_lr_on_plateau":
        lrs = [e["learning_rate"] for e in straight["log_history"] if "learning_rate" in e]
        assert min(lrs) < BASE["learning_rate"], f"the plateau never lowered the learning rate: {lrs}"
    if case.training_args.get("eval_strategy") == "epoch":
        assert [s for s, _ in evals] == [6, 12, 15]


def test_checkpoint_links_the_best_weights_instead_of_copying_them(data: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint holds the best weights as a file of its own, hard-linked to where they were first written
    (a full fine-tune's best weights are as large as the model), and a resumed run keeps them so."""
    import json

    from safetensors.torch import load_file

    case = Case(EVAL | {"load_best_model_at_end": True, "save_total_limit": 3}, k(7, 10))
    run_killed(case, data, tmp_path, monkeypatch)
    ckpts = tmp_path / "work" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-3", "checkpoint-6", "checkpoint-9"]
    best_step = json.loads((ckpts / "checkpoint-9" / "state.json").read_text())["state"]["best_step"]
    assert best_step == 6  # found before the kill at 7; checkpoint 9 was written by the resumed run
    first = ckpts / "checkpoint-6" / "trainable.safetensors"
    for step in (6, 9):
        best = ckpts / f"checkpoint-{step}" / loop.BEST_FILE
        assert best.stat().st_ino == first.stat().st_ino
    assert (ckpts / "checkpoint-3" / loop.BEST_FILE).stat().st_ino != first.stat().st_ino
    weights = load_file(str(first))
    assert weights.keys() == load_file(str(ckpts / "checkpoint-3" / loop.BEST_FILE)).keys()


@pytest.mark.parametrize(("training_args", "error"), [
    ({"lr_scheduler_type": "reduce_lr_on_plateau"}, "steps on the eval loss"),
    ({"lr_scheduler_type": "warmup_stable_decay"}, "num_decay_steps"),
])
def test_schedules_the_loop_cannot_run_are_config_errors(training_args: dict[str, Any], error: str) -> None:
    """Before, these failed at the first step (reduce_lr_on_plateau) or before it (a TypeError from transformers)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=error):
        TrainingArgs.model_validate(training_args)


def _close(a: Any, b: Any) -> bool:
    """Same structure, floats within 1e-6."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[x], b[x]) for x in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=0, abs_tol=1e-6) or (math.isnan(a) and math.isnan(b))
    return a == b
