"""Fine-tuning passes and the training loop, on tiny random Llama and Phi-3 models."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

import honed.training.finetune as ft
from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.loaders import load_model
from honed.passes.base import PassContext, get_pass
from honed.training.args import TrainingArgs
from honed.training.loop import Callback, TrainState, collate, epoch_batches, loss_sum, sparse_head_parts
from honed.util.accelerator import Accelerator

# Rows written for these tests: a prompt and a one-word answer, as the classification template makes.
EXAMPLES = [
    ("I passed the exam with top marks", "joy"),
    ("The lights went out upstairs", "fear"),
    ("My old dog died this morning", "sadness"),
    ("They threw me a party", "surprise"),
    ("the quick brown fox", "joy"),
    ("numbers one two three", "fear"),
]


def make_rows(model_dir: Path, n_repeat: int = 4) -> list[dict[str, list[int]]]:
    """Completion-only rows: the prompt is masked out of the labels."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for text, tone in EXAMPLES * n_repeat:
        prompt = tok(f"### Text: {text}\n### The tone is:\n")["input_ids"]
        answer = [*tok(tone)["input_ids"], tok.eos_token_id]
        ids = prompt + answer
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt) + answer})
    return rows


class Bar:
    """Records what the loop tells its progress bar."""

    def __init__(self, total: float | None) -> None:
        self.total, self.done, self.fields, self.closed = total, 0.0, {}, False

    def advance(self, n: float = 1, **fields: Any) -> None:
        self.done += n
        self.fields = fields

    def close(self) -> None:
        self.closed = True


def make_ctx(tmp: Path, name: str = "lora") -> tuple[PassContext, list[Bar]]:
    bars: list[Bar] = []

    def progress(description: str, total: float | None) -> Bar:
        bars.append(Bar(total))
        return bars[-1]

    ctx = PassContext(pass_name=name, host=Accelerator(), target=Accelerator(), data_configs={},
                      work_dir=tmp / "work", cache_dir=tmp / "cache", progress=progress)
    return ctx, bars


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def rows_for(monkeypatch: pytest.MonkeyPatch):
    """Make the passes read these in-memory rows instead of a data config."""

    def use(model_dir: Path) -> list[dict[str, list[int]]]:
        rows = make_rows(model_dir)
        monkeypatch.setattr(ft, "load_splits", lambda config, tokenizer, ctx: (rows, rows[:6]))
        return rows

    return use


FAST = {"max_steps": 12, "learning_rate": 1e-2, "logging_steps": 4, "per_device_train_batch_size": 4}


def run_pass(name: str, model_dir: Path, tmp: Path, callbacks=(), **cfg: Any) -> tuple[ModelHandle, PassContext]:
    cls = get_pass(name)
    config = cls.config_class.model_validate(
        {"train_data_config": "train", "r": 8, "alpha": 16, "training_args": FAST} | cfg
    )
    ctx, _ = make_ctx(tmp, name)
    variant = {"LoRA": "lora", "QLoRA": "qlora", "DoRA": "dora", "LoftQ": "loftq"}[name]
    handle = ft.finetune_adapter(ModelHandle(kind="hf", path=str(model_dir)), config, tmp / "out", ctx,
                                 variant=variant, callbacks=callbacks)
    return handle, ctx


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("training_args", "error"),
    [
        ({"max_step": 10}, "max_step"),
        ({"learning_rte": 1e-4}, "learning_rte"),
        ({"max_steps": -3}, "max_steps must be a positive"),
        ({"max_steps": 0}, "max_steps must be a positive"),
        ({"eval_strategy": "steps", "evaluation_strategy": "epoch"}, "disagree"),
        ({"early_stopping_patience": 2}, "needs evaluation"),
    ],
)
def test_training_args_rejects(training_args: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        get_pass("LoRA").config_class.model_validate({"train_data_config": "d", "training_args": training_args})


def test_seed_training_args_validate() -> None:
    """Every training_args key the seed config uses is accepted, with the old evaluation_strategy spelling."""
    seed = {"seed": 0, "data_seed": 42, "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
            "gradient_accumulation_steps": 4, "gradient_checkpointing": False, "learning_rate": 0.0001,
            "num_train_epochs": 3, "max_steps": 10, "logging_steps": 10, "evaluation_strategy": "steps",
            "eval_steps": 187, "group_by_length": True, "adam_beta2": 0.999, "max_grad_norm": 0.3}
    args = TrainingArgs.model_validate(seed)
    assert args.eval_strategy == "steps"
    assert args.effective_data_seed == 42
    cfg = get_pass("QLoRA").config_class.model_validate({"train_data_config": "d", "training_args": seed})
    assert (cfg.r, cfg.alpha, cfg.lora_dropout, cfg.double_quant, cfg.quant_type) == (64, 16, 0.05, True, "nf4")


def test_registered() -> None:
    for name in ("LoRA", "QLoRA", "DoRA", "LoftQ", "FullFineTune", "MergeAdapterWeights"):
        assert get_pass(name) is not None, name


# ----------------------------------------------------------------------------- target modules


def test_target_modules_none_match_lists_linear_layers(tiny_llama: Path) -> None:
    model = load_model(ModelHandle(kind="hf", path=str(tiny_llama)))
    with pytest.raises(UserError, match=r"none of \['qkv_proj'\].*'o_proj'.*'q_proj'"):
        ft.resolve_target_modules(model, ["qkv_proj"], "passes.lora.target_modules")


def test_target_modules_partial_match_warns(tiny_llama: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = load_model(ModelHandle(kind="hf", path=str(tiny_llama)))
    with caplog.at_level(logging.WARNING, logger="honed"):
        got = ft.resolve_target_modules(model, ["o_proj", "qkv_proj"], "passes.lora.target_modules")
    assert got == ["o_proj"]
    assert "['qkv_proj'] match no layer" in caplog.text


@pytest.mark.parametrize(
    ("arch", "expected"),
    [("llama", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
     ("phi3", ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])],
)
def test_default_target_modules(arch: str, expected: list[str], request: pytest.FixtureRequest) -> None:
    model = load_model(ModelHandle(kind="hf", path=str(request.getfixturevalue(f"tiny_{arch}"))))
    assert ft.resolve_target_modules(model, None, "k") == expected
    assert "lm_head" not in ft.linear_module_names(model)


# ----------------------------------------------------------------------------- loop pieces


def test_epoch_batches_cover_every_row_once_and_group_lengths() -> None:
    lengths = [(i * 37) % 101 + 1 for i in range(400)]
    grouped = epoch_batches(lengths, 8, seed=3, epoch=0, group_by_length=True)
    plain = epoch_batches(lengths, 8, seed=3, epoch=0, group_by_length=False)
    for batches in (grouped, plain):
        assert sorted(i for b in batches for i in b) == list(range(400))

    def padding(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < 0.2 * padding(plain)
    assert max(lengths[i] for i in grouped[0]) == max(lengths)  # longest batch first
    assert grouped == epoch_batches(lengths, 8, seed=3, epoch=0, group_by_length=True)
    assert grouped != epoch_batches(lengths, 8, seed=3, epoch=1, group_by_length=True)


def test_collate_pads_labels_with_ignore_index() -> None:
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_sparse_head_loss_equals_transformers_loss(tiny_causal_lm: Path) -> None:
    """Computing the head only at labelled positions gives the model's own loss."""
    model = load_model(ModelHandle(kind="hf", path=str(tiny_causal_lm)))
    batch = collate(make_rows(tiny_causal_lm, 1)[:4], pad_id=0)
    parts = sparse_head_parts(model)
    assert parts is not None
    with torch.no_grad():
        s, n = loss_sum(model, batch, parts)
        s_full, n_full = loss_sum(model, batch, None)
        ref = model(**batch).loss
    assert n == n_full
    assert float(s / n) == pytest.approx(float(ref), abs=1e-5)
    assert float(s_full / n) == pytest.approx(float(ref), abs=1e-5)


# ----------------------------------------------------------------------------- passes


@pytest.mark.parametrize("name", ["LoRA", "QLoRA"])
def test_adapter_training_lowers_loss(name: str, tiny_causal_lm: Path, tmp_path: Path, rows_for) -> None:
    rows_for(tiny_causal_lm)
    handle, ctx = run_pass(name, tiny_causal_lm, tmp_path,
                           training_args=FAST | {"eval_strategy": "steps", "eval_steps": 6})
    m = ctx.metrics
    assert m["train_loss"] < m["train_loss_first_step"] - 0.2, m
    assert m["eval_loss"] < 6.0 and m["train_tokens_per_s"] > 0 and m["peak_memory_mb"] > 0
    assert handle.kind == "peft" and handle.base is not None and handle.base.path == str(tiny_causal_lm)
    adapter = Path(handle.path)
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "tokenizer_config.json").exists()
    assert not (adapter / "model.safetensors").exists()  # the base is referenced, not copied
    if name == "QLoRA":
        assert handle.attributes["base_quantization"] == "bnb-4bit-nf4-dq"


def test_progress_bar_knows_total_and_closes(tiny_llama: Path, tmp_path: Path, rows_for) -> None:
    rows_for(tiny_llama)
    cls = get_pass("LoRA")
    config = cls.config_class.model_validate({"train_data_config": "t", "r": 4, "training_args": FAST | {"max_steps": 5}})
    ctx, bars = make_ctx(tmp_path)
    cls().run(ModelHandle(kind="hf", path=str(tiny_llama)), config, tmp_path / "out", ctx)
    assert [(b.total, b.done, b.closed) for b in bars] == [(5, 5, True)]
    assert "loss" in bars[0].fields


class Crash(Callback):
    """Simulates a killed run: raises after a given step."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, state: TrainState, args: TrainingArgs) -> None:
        if state.global_step == self.at:
            raise KeyboardInterrupt


def _adapter_weights(handle: ModelHandle) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(handle.path) / "adapter_model.safetensors"))


def test_killed_run_resumes_from_last_checkpoint(tiny_llama: Path, tmp_path: Path, rows_for) -> None:
    """A run killed after step 7 resumes at checkpoint 6 and ends with the weights of an uninterrupted run."""
    rows_for(tiny_llama)
    kw = {"training_args": FAST | {"save_steps": 3}, "lora_dropout": 0.1}  # dropout: the RNG must resume too
    with pytest.raises(KeyboardInterrupt):
        run_pass("LoRA", tiny_llama, tmp_path / "a", callbacks=[Crash(7)], **kw)
    assert sorted(p.name for p in (tmp_path / "a" / "work" / "checkpoints").iterdir()) == ["checkpoint-6"]
    resumed, ctx = run_pass("LoRA", tiny_llama, tmp_path / "a", **kw)
    assert ctx.metrics["resumed_from_step"] == 6
    assert ctx.metrics["train_steps"] == 12
    straight, ctx2 = run_pass("LoRA", tiny_llama, tmp_path / "b", **kw)
    assert "resumed_from_step" not in ctx2.metrics
    a, b = _adapter_weights(resumed), _adapter_weights(straight)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_early_stopping_on_eval_patience(tiny_llama: Path, tmp_path: Path, rows_for) -> None:
    rows_for(tiny_llama)
    targs = FAST | {"max_steps": 50, "eval_strategy": "steps", "eval_steps": 2, "early_stopping_patience": 2,
                    "early_stopping_threshold": 1e9}
    _, ctx = run_pass("LoRA", tiny_llama, tmp_path, training_args=targs)
    # The first evaluation sets the best; no later one can beat it by 1e9, so two more evaluations stop the run.
    assert ctx.metrics["train_steps"] == 6


def test_dora_trains(tiny_phi3: Path, tmp_path: Path, rows_for) -> None:
    rows_for(tiny_phi3)
    handle, ctx = run_pass("DoRA", tiny_phi3, tmp_path)
    assert ctx.metrics["train_loss"] < ctx.metrics["train_loss_first_step"] - 0.2
    assert handle.attributes["adapter"] == "dora"


def test_loftq_on_cpu_is_a_clear_error(tiny_llama: Path, tmp_path: Path, rows_for) -> None:
    rows_for(tiny_llama)
    with pytest.raises(UserError, match="LoftQ runs only on CUDA"):
        run_pass("LoftQ", tiny_llama, tmp_path)


def test_unknown_data_config_suggests(tmp_path: Path) -> None:
    ctx, _ = make_ctx(tmp_path)
    ctx.data_configs = {"train_data": object()}  # type: ignore[dict-item]
    config = get_pass("LoRA").config_class.model_validate({"train_data_config": "train_dat"})
    with pytest.raises(UserError, match="did you mean 'train_data'"):
        ft.load_splits(config, None, ctx)


def test_full_finetune(tiny_llama: Path, tmp_path: Path, rows_for) -> None:
    rows_for(tiny_llama)
    cls = get_pass("FullFineTune")
    config = cls.config_class.model_validate(
        {"train_data_config": "t", "training_args": FAST | {"learning_rate": 1e-3}}
    )
    ctx, _ = make_ctx(tmp_path, "full")
    handle = cls().run(ModelHandle(kind="hf", path=str(tiny_llama)), config, tmp_path / "out", ctx)
    assert handle.kind == "hf" and (Path(handle.path) / "model.safetensors").exists()
    assert ctx.metrics["train_loss"] < ctx.metrics["train_loss_first_step"] - 0.2
    load_model(handle)  # a loadable standalone model


def test_default_dtype_on_cpu_without_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ft, "cpu_has_fast_bf16", lambda: False)
    assert ft.default_dtype("cpu") == "float32"
    monkeypatch.setattr(ft, "cpu_has_fast_bf16", lambda: True)
    assert ft.default_dtype("cpu") == "bfloat16"


def test_qlora_evaluation_keeps_4bit_layers_trainable(tiny_llama: Path, tmp_path: Path) -> None:
    """An evaluation between steps must not leave bitsandbytes' inference-only CPU packing behind."""
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig

    from honed.training.loop import train

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = load_model(ModelHandle(kind="hf", path=str(tiny_llama)), quantization_config=quant, device_map="cpu")
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    rows = make_rows(tiny_llama, 1)
    args = TrainingArgs(max_steps=3, eval_strategy="steps", eval_steps=1, per_device_train_batch_size=4)
    train(model, rows, args, work_dir=tmp_path, pad_token_id=0, eval_data=rows[:4])
    layers = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert layers and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)


def test_lora_end_to_end_with_data_config(tiny_llama: Path, tmp_path: Path) -> None:
    """The pass reads its rows through the data layer (completion-only labels by default)."""
    import json

    from honed.data import DataConfig

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"phrase": f"{t} {i}", "tone": tone}) + "\n"
                            for i in range(4) for t, tone in EXAMPLES))
    cfg = DataConfig.model_validate({
        "name": "train_data",
        "load_dataset_config": {"data_name": "json", "data_files": str(data)},
        "pre_process_data_config": {"text_template": "### Text: {phrase}\n### The tone is:\n{tone}",
                                    "max_seq_len": 128},
    })
    cls = get_pass("LoRA")
    config = cls.config_class.model_validate({
        "train_data_config": "train_data", "eval_dataset_size": 0.25, "r": 8,
        "training_args": FAST | {"eval_strategy": "steps", "eval_steps": 6},
    })
    ctx, _ = make_ctx(tmp_path)
    ctx.data_configs = {"train_data": cfg}
    handle = cls().run(ModelHandle(kind="hf", path=str(tiny_llama)), config, tmp_path / "out", ctx)
    assert handle.kind == "peft"
    assert ctx.metrics["train_loss"] < ctx.metrics["train_loss_first_step"] - 0.2
    assert "eval_loss" in ctx.metrics


def test_lr_scheduler_kwargs_reach_the_schedule(tiny_llama: Path, tmp_path: Path, rows_for) -> None:
    """cosine_with_min_lr ends at min_lr: the kwargs reach transformers' get_scheduler (it raises without them)."""
    rows_for(tiny_llama)
    args = FAST | {"max_steps": 4, "logging_steps": 1, "learning_rate": 1e-3, "warmup_steps": 0,
                   "lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr": 2e-4}}
    _, ctx = run_pass("LoRA", tiny_llama, tmp_path, training_args=args)
    lrs = [h["learning_rate"] for h in ctx.metrics["log_history"] if "learning_rate" in h]
    assert lrs[0] == pytest.approx(1e-3, rel=1e-6)
    assert min(lrs) >= 2e-4 * (1 - 1e-6) and lrs[-1] < lrs[0]
    with pytest.raises(ValidationError, match="min_lr"):
        TrainingArgs.model_validate({"lr_scheduler_type": "cosine_with_min_lr"})
