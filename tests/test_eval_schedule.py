"""When the training loop computes its eval loss, and that every evaluation (in training, and the engine's
evaluator over a data config) moves a progress bar to its end.

The schedule table is written by hand from transformers' ``DefaultFlowCallback`` and ``Trainer._run_epoch``
(``on_epoch_end`` also runs when ``max_steps`` leaves an epoch early), not computed by the Trainer.  honed keeps
transformers 4.x's ``steps`` rule, no evaluation because training ended: transformers 5 added one (PR #44146), and
on a big eval split that is the long evaluation at a step the user never named that issue 17 reports.  The one
departure from both: with ``load_best_model_at_end`` the last step is evaluated after an earlier evaluation, so the
weights trained since can be kept (``honed.training.loop.eval_due``).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import honed.training.finetune as ft
import honed.training.loop as loop
from honed.data.config import DataConfig
from honed.evaluate.config import EvaluatorConfig
from honed.evaluate.evaluator import SCORE_CHUNK, _score_rows, _Session, evaluate_cached, evaluate_model
from honed.models.handle import ModelHandle
from honed.passes.base import get_pass
from honed.training.args import TrainingArgs
from honed.util.context import ProgressTask
from tests.test_finetune import Bar, make_ctx, make_rows

# 6 training rows, 2 a micro-batch: 3 optimizer steps an epoch.  5 eval rows, 2 a batch: 3 eval batches.
TRAIN_ROWS, EVAL_ROWS, BATCH = 6, 5, 2
EVAL_BATCHES = 3


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


class TinyLM(torch.nn.Module):
    """A causal LM as far as the loop can tell: embedding and head, no config (the full-logits path)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16)

    def forward(self, input_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        return SimpleNamespace(logits=self.head(self.emb(input_ids)))


def token_rows(n: int) -> list[dict[str, list[int]]]:
    return [{"input_ids": [1, 2, 3, 4 + i % 10], "attention_mask": [1] * 4, "labels": [-100, -100, 3, 4 + i % 10]}
            for i in range(n)]


class Counted:
    """``loop.loss_sum`` that counts the calls made without grad (the eval loss's batches)."""

    def __init__(self) -> None:
        self.eval_batches = 0

    def __call__(self, model: Any, batch: dict[str, Any], parts: Any) -> Any:
        if not torch.is_grad_enabled():
            self.eval_batches += 1
        return _LOSS_SUM(model, batch, parts)


_LOSS_SUM = loop.loss_sum


def run_loop(tmp: Path, monkeypatch: pytest.MonkeyPatch, training_args: dict[str, Any], *,
             eval_bars: bool = True) -> tuple[loop.TrainResult, Counted, list[Bar], list[Bar]]:
    """Train TinyLM; (result, eval-batch counter, training bars, eval bars)."""
    counted = Counted()
    monkeypatch.setattr(loop, "loss_sum", counted)
    args = TrainingArgs.model_validate({"per_device_train_batch_size": BATCH, "per_device_eval_batch_size": BATCH,
                                        "learning_rate": 1e-2} | training_args)
    train_bars: list[Bar] = []
    evals: list[Bar] = []

    def bar(into: list[Bar]) -> Any:
        return lambda total: into.append(Bar(total)) or into[-1]

    result = loop.train(TinyLM(), token_rows(TRAIN_ROWS), args, work_dir=tmp, pad_token_id=0,
                        eval_data=token_rows(EVAL_ROWS), progress=bar(train_bars),
                        eval_progress=bar(evals) if eval_bars else None)
    return result, counted, train_bars, evals


def eval_steps_of(result: loop.TrainResult) -> list[int]:
    return [int(e["step"]) for e in result.state.log_history if "eval_loss" in e]


S, E = "steps", "epoch"
# (training args, the global steps whose eval loss is computed).  logging_steps is 10 unless given.
SCHEDULE: dict[str, tuple[dict[str, Any], list[int]]] = {
    # issue 17: eval_steps 187 and max_steps 2 computed a final eval loss nobody asked for
    "steps_never_reached": ({"eval_strategy": S, "eval_steps": 187, "max_steps": 2}, []),
    "steps_every_2": ({"eval_strategy": S, "eval_steps": 2, "max_steps": 6}, [2, 4, 6]),
    "steps_no_final_eval": ({"eval_strategy": S, "eval_steps": 4, "max_steps": 10}, [4, 8]),
    "steps_every_step": ({"eval_strategy": S, "eval_steps": 1, "max_steps": 3}, [1, 2, 3]),
    "steps_default_is_logging_steps": ({"eval_strategy": S, "logging_steps": 3, "max_steps": 7}, [3, 6]),
    # eval_steps counts optimizer steps, not micro-batches: 2 micro-batches a step, steps 1..4
    "steps_count_optimizer_steps": ({"eval_strategy": S, "eval_steps": 2, "max_steps": 4,
                                     "gradient_accumulation_steps": 2}, [2, 4]),
    # 2 epochs of 3 steps: no eval at the epoch ends nor at step 6 with the steps strategy
    "steps_over_epochs": ({"eval_strategy": S, "eval_steps": 4, "num_train_epochs": 2}, [4]),
    "epoch_whole_epochs": ({"eval_strategy": E, "num_train_epochs": 2}, [3, 6]),
    "epoch_fraction": ({"eval_strategy": E, "num_train_epochs": 1.5}, [3, 5]),  # ceil(4.5) = 5 steps
    "epoch_max_steps_inside_first": ({"eval_strategy": E, "max_steps": 2}, [2]),
    "epoch_max_steps_inside_third": ({"eval_strategy": E, "max_steps": 7}, [3, 6, 7]),
    "epoch_max_steps_at_epoch_end": ({"eval_strategy": E, "max_steps": 6, "eval_steps": 1}, [3, 6]),
    "no": ({"eval_strategy": "no", "max_steps": 6}, []),
    "no_with_eval_steps": ({"eval_strategy": "no", "eval_steps": 1, "max_steps": 3}, []),
    # load_best_model_at_end: the last step competes once an evaluation ran (transformers 4.x: [4, 8])
    "best_last_step_competes": ({"eval_strategy": S, "eval_steps": 4, "max_steps": 10,
                                 "load_best_model_at_end": True}, [4, 8, 10]),
    "best_never_reached": ({"eval_strategy": S, "eval_steps": 187, "max_steps": 2,
                            "load_best_model_at_end": True}, []),
    "best_last_step_is_due": ({"eval_strategy": S, "eval_steps": 2, "max_steps": 4,
                               "load_best_model_at_end": True}, [2, 4]),
    "best_epoch": ({"eval_strategy": E, "max_steps": 4, "load_best_model_at_end": True}, [3, 4]),
    # early stopping stops at an evaluation and adds none: no later one beats the first by 1e9
    "early_stopping": ({"eval_strategy": S, "eval_steps": 1, "max_steps": 6, "early_stopping_patience": 1,
                        "early_stopping_threshold": 1e9}, [1, 2]),
    # the plateau schedule steps on eval losses: it asks for none at the end
    "plateau": ({"eval_strategy": S, "eval_steps": 4, "max_steps": 6, "lr_scheduler_type": "reduce_lr_on_plateau"},
                [4]),
}


@pytest.mark.parametrize("name", list(SCHEDULE))
def test_eval_loss_is_computed_when_the_settings_say(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    training_args, expected = SCHEDULE[name]
    result, counted, _, evals = run_loop(tmp_path, monkeypatch, training_args)
    # eval rows that will never be evaluated (nor trained on) are said before training, once
    said = [r for r in caplog.records if "no eval loss will be computed" in r.getMessage()]
    assert len(said) == (0 if expected else 1), [r.getMessage() for r in said]
    assert eval_steps_of(result) == expected
    assert counted.eval_batches == EVAL_BATCHES * len(expected)  # computed, not only logged
    assert [(b.total, b.done, b.closed) for b in evals] == [(EVAL_BATCHES, EVAL_BATCHES, True)] * len(expected)
    assert ("eval_loss" in result.metrics) == bool(expected)


@pytest.mark.parametrize(("training_args", "step", "total", "end_of_epoch", "evaluated", "due"), [
    ({"eval_strategy": S, "eval_steps": 5}, 10, 12, False, True, True),
    ({"eval_strategy": S, "eval_steps": 5}, 12, 12, False, True, False),
    ({"eval_strategy": S, "eval_steps": 5}, 5, 12, True, False, True),
    ({"eval_strategy": S, "eval_steps": 5}, 6, 12, True, True, False),  # an epoch end means nothing to steps
    ({"eval_strategy": S, "eval_steps": 5, "load_best_model_at_end": True}, 12, 12, False, True, True),
    ({"eval_strategy": S, "eval_steps": 5, "load_best_model_at_end": True}, 12, 12, False, False, False),
    ({"eval_strategy": S, "eval_steps": 5, "load_best_model_at_end": True}, 11, 12, False, True, False),
    ({"eval_strategy": E}, 4, 12, True, False, True),
    ({"eval_strategy": E}, 12, 12, False, True, True),
    ({"eval_strategy": E}, 5, 12, False, True, False),
    ({"eval_strategy": "no", "eval_steps": 1}, 12, 12, True, True, False),
])
def test_eval_due(training_args: dict[str, Any], step: int, total: int, end_of_epoch: bool, evaluated: bool,
                  due: bool) -> None:
    assert loop.eval_due(TrainingArgs(**training_args), step, total, end_of_epoch, evaluated) is due


def test_eval_bar_falls_back_to_the_training_bar_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that gives only ``progress`` still sees each evaluation's batches move."""
    result, _, train_bars, _ = run_loop(tmp_path, monkeypatch, {"eval_strategy": S, "eval_steps": 2, "max_steps": 4},
                                        eval_bars=False)
    assert eval_steps_of(result) == [2, 4]
    assert [(b.total, b.done, b.closed) for b in train_bars] == [(4, 4, True)] + [(EVAL_BATCHES,) * 2 + (True,)] * 2
    assert train_bars[1].fields == {"eval": f"{EVAL_ROWS} rows"}


def test_an_evaluation_logs_two_lines_not_one_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Off a terminal the bar is silent: the log says when an evaluation starts (rows, batches) and what it gave."""
    caplog.set_level(logging.INFO, logger="honed")
    run_loop(tmp_path, monkeypatch, {"eval_strategy": S, "eval_steps": 3, "max_steps": 3})
    lines = [r.getMessage() for r in caplog.records if "eval loss" in r.getMessage()]
    assert len(lines) == 2, lines
    assert f"on {EVAL_ROWS} rows ({EVAL_BATCHES} batches of {BATCH})" in lines[0]
    assert lines[1].startswith("step 3/3 eval loss ")


@pytest.mark.parametrize("name", ["LoRA", "FullFineTune"])
def test_the_reported_config_computes_no_eval_loss(name: str, tiny_llama: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's training args (eval_steps 187) over a 2-step run: nothing in the pass evaluates."""
    rows = make_rows(tiny_llama, 1)
    monkeypatch.setattr(ft, "load_splits", lambda config, tokenizer, ctx: (rows, rows))
    counted = Counted()
    monkeypatch.setattr(loop, "loss_sum", counted)
    cls = get_pass(name)
    config = cls.config_class.model_validate({"train_data_config": "t", "training_args": {
        "max_steps": 2, "per_device_train_batch_size": 4, "evaluation_strategy": "steps", "eval_steps": 187,
        "logging_steps": 10, "load_best_model_at_end": True}})
    ctx, bars = make_ctx(tmp_path, name.lower())
    cls().run(ModelHandle(kind="hf", path=str(tiny_llama)), config, tmp_path / "out", ctx)
    assert counted.eval_batches == 0
    assert "eval_loss" not in ctx.metrics and not any("eval_loss" in e for e in ctx.metrics["log_history"])
    assert [(b.total, b.done) for b in bars] == [(2, 2)]  # the training bar alone


# ----------------------------------------------------------------------------- the engine's evaluator

LABELS = ["joy", "fear", "sadness", "surprise"]
PHRASES = ["I passed the exam", "lights went out", "my old dog died", "they threw me a party", "top marks again",
           "something moved", "a letter came"]  # 7 rows: not a whole number of any batch below


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    import json

    path = tmp_path_factory.mktemp("eval") / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"phrase": p, "tone": LABELS[i % 4], "label": i % 4})
                              for i, p in enumerate(PHRASES)))
    return DataConfig.model_validate({"name": "d", "load_dataset_config": {"data_files": str(path)},
                                      "pre_process_data_config": {
                                          "text_template": "### Text: {phrase}\n### The tone is:\n{tone}"}})


def recorder() -> tuple[list[tuple[str, Bar]], Any]:
    opened: list[tuple[str, Bar]] = []

    def progress(description: str, total: float | None) -> Bar:
        opened.append((description, Bar(total)))
        return opened[-1][1]

    return opened, progress


def evaluator(*metrics: dict[str, Any]) -> EvaluatorConfig:
    return EvaluatorConfig.model_validate({"metrics": list(metrics)})


def test_each_data_metric_moves_a_bar_over_its_rows(tiny_llama: Path, data: DataConfig) -> None:
    rows = len(PHRASES)
    handle = ModelHandle(kind="hf", path=str(tiny_llama))
    cfg = evaluator(
        {"name": "acc", "type": "accuracy", "data_config": "d", "user_config": {"labels": LABELS}},
        {"name": "gen", "type": "accuracy", "data_config": "d",
         "user_config": {"labels": LABELS, "scoring": "generate", "max_new_tokens": 2}},
        {"name": "ppl", "type": "perplexity", "data_config": "d"},
        {"name": "fid", "type": "fidelity", "data_config": "d"},
        {"name": "lat", "type": "latency", "user_config": {"warmup_num": 0, "repeat_test_num": 2}},
    )
    opened, progress = recorder()
    with_bars = evaluate_model(handle, cfg, {"d": data}, reference=handle, progress=progress)
    assert [(d, b.total, b.done, b.closed) for d, b in opened] == [
        ("acc: scoring labels", rows, rows, True), ("gen: generating", rows, rows, True),
        ("ppl: perplexity", rows, rows, True), ("fid: fidelity", rows, rows, True)]  # latency: none, see evaluate_model
    without = evaluate_model(handle, cfg, {"d": data}, reference=handle)
    assert {k: v for k, v in with_bars.items() if not k.startswith("lat-")} == {
        k: v for k, v in without.items() if not k.startswith("lat-")}


def test_a_classifier_moves_its_bar_by_batches_of_rows(tiny_bert: Path, data: DataConfig) -> None:
    cfg = evaluator({"name": "acc", "type": "accuracy", "data_config": "d",
                     "user_config": {"label_col": "label", "batch_size": 2}})
    data2 = data.model_copy(update={"pre_process_data_config": data.pre_process_data_config.model_copy(
        update={"text_template": "### Text: {phrase}\n### The tone is:\n{label}"})})
    opened, progress = recorder()
    steps: list[float] = []
    evaluate_model(ModelHandle(kind="hf", path=str(tiny_bert), task="text-classification"), cfg, {"d": data2},
                   progress=lambda d, t: _spy(progress(d, t), steps))
    assert [(d, b.total, b.done, b.closed) for d, b in opened] == [("acc: classifying", 7, 7, True)]
    assert steps == [2, 2, 2, 1]


def _spy(bar: Bar, steps: list[float]) -> Bar:
    advance = bar.advance

    def record(n: float = 1, **fields: Any) -> None:
        steps.append(n)
        advance(n, **fields)

    bar.advance = record  # type: ignore[method-assign]
    return bar


@pytest.mark.parametrize(("per_row", "rows"), [(4, 7), (3, 17), (2, 9), (5, 4), (16, 3), (32, 2)])
def test_label_scoring_in_parts_batches_as_one_call(per_row: int, rows: int) -> None:
    """Parts of whole rows whose sequences fill whole SCORE_CHUNK batches: the scores of one call, in order."""
    calls: list[int] = []

    class Backend:
        def score_many(self, seqs: list[tuple[list[int], int]]) -> list[float]:
            calls.append(len(seqs))
            return [float(sum(ids) * 100 + start) for ids, start in seqs]

    opened, progress = recorder()
    s = _Session(ModelHandle(kind="hf", path="unused"), {}, None, None, lambda: 0.0,  # type: ignore[arg-type]
                 progress=progress)
    s._backend = Backend()  # type: ignore[assignment]
    seqs = [([r, k], 1 + k % 2) for r in range(rows) for k in range(per_row)]
    scores = _score_rows(s, SimpleNamespace(name="acc"), seqs, per_row)  # type: ignore[arg-type]
    assert scores == [float(sum(ids) * 100 + start) for ids, start in seqs]
    assert sum(calls) == len(seqs) and all(n % SCORE_CHUNK == 0 for n in calls[:-1])
    assert [(b.total, b.done, b.closed) for _, b in opened] == [(rows, rows, True)]


def test_evaluate_cached_hands_the_bars_on_and_a_hit_opens_none(tiny_llama: Path, data: DataConfig,
                                                                tmp_path: Path) -> None:
    from honed.util.accelerator import Accelerator

    cfg = evaluator({"name": "ppl", "type": "perplexity", "data_config": "d"})
    handle = ModelHandle(kind="hf", path=str(tiny_llama))
    opened, progress = recorder()
    _, cached = evaluate_cached(handle, cfg, {"d": data}, Accelerator(), tmp_path, progress=progress)
    assert not cached and [(b.total, b.done, b.closed) for _, b in opened] == [(7, 7, True)]
    _, cached = evaluate_cached(handle, cfg, {"d": data}, Accelerator(), tmp_path, progress=progress)
    assert cached and len(opened) == 1


# ----------------------------------------------------------------------------- the display


def test_display_bar_outside_a_pass_has_its_own_display_and_writes_nothing_off_a_terminal() -> None:
    from rich.console import Console

    from honed.engine.progress import RunDisplay

    for interactive in (True, False):
        out = io.StringIO()
        display = RunDisplay(console=Console(file=out, force_terminal=interactive, force_interactive=interactive))
        bar = display.bar("acc: scoring labels", 3)
        own = bar.progress  # type: ignore[attr-defined]
        assert own.live.is_started is interactive and display._progress is None
        for _ in range(3):
            bar.advance(1)
        assert own.tasks[0].completed == 3 and own.tasks[0].total == 3
        bar.close()
        assert not own.live.is_started and not own.tasks
        if not interactive:
            assert out.getvalue() == ""  # not even rich's closing empty line
    display.start_pass("lora")
    inside = display.bar("lora: eval loss", 2)
    assert inside.progress is display._progress  # type: ignore[attr-defined]
    inside.close()
    display.end_pass("done")
    assert type(RunDisplay(quiet=True).bar("x", 1)) is ProgressTask
