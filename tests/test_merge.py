"""MergeAdapterWeights: a merged model computes what the adapter model computes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.loaders import load_model
from honed.passes.base import get_pass
from tests.test_finetune import _one_thread, make_ctx, run_pass  # noqa: F401  (_one_thread: autouse fixture)
from tests.test_finetune import rows_for as rows_for  # fixture


def _merge(adapter: ModelHandle, tmp: Path, **cfg: object) -> tuple[ModelHandle, dict]:
    cls = get_pass("MergeAdapterWeights")
    ctx, _ = make_ctx(tmp, "merge")
    merged = cls().run(adapter, cls.config_class.model_validate(cfg), tmp / "merged", ctx)
    return merged, ctx.metrics


@pytest.mark.parametrize("name", ["LoRA", "QLoRA"])
def test_merged_logits_equal_adapter_logits(name: str, tiny_causal_lm: Path, tmp_path: Path, rows_for) -> None:
    rows = rows_for(tiny_causal_lm)
    adapter, _ = run_pass(name, tiny_causal_lm, tmp_path)
    merged, metrics = _merge(adapter, tmp_path)
    out = Path(merged.path)
    assert merged.kind == "hf" and merged.base is None
    for f in ("model.safetensors", "config.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / f).exists(), f
    n = min(len(r["input_ids"]) for r in rows[:2])
    ids = torch.tensor([rows[0]["input_ids"][:n], rows[1]["input_ids"][:n]])
    with torch.no_grad():
        # A QLoRA adapter is compared over the unquantized base: that is what the merge folds it into.
        want = load_model(adapter, dtype="float32")(input_ids=ids).logits
        got = load_model(merged)(input_ids=ids).logits
        base = load_model(adapter.base)(input_ids=ids).logits
    assert float((want - base).abs().max()) > 1e-3  # the adapter changed the model, so the check means something
    assert float((want - got).abs().max()) < 1e-4
    assert metrics["merge_max_abs_diff"] < 1e-4


def test_merge_keeps_base_dtype(tiny_llama: Path, tmp_path: Path, rows_for) -> None:
    base_dir = tmp_path / "bf16-base"
    shutil.copytree(tiny_llama, base_dir)
    load_model(ModelHandle(kind="hf", path=str(tiny_llama)), dtype="bfloat16").save_pretrained(base_dir)
    rows_for(base_dir)
    adapter, _ = run_pass("LoRA", base_dir, tmp_path, torch_dtype="float32")
    merged, _ = _merge(adapter, tmp_path)
    assert json.loads((Path(merged.path) / "config.json").read_text())["dtype"] == "bfloat16"
    assert next(load_model(merged).parameters()).dtype == torch.bfloat16
    merged32, _ = _merge(adapter, tmp_path / "again", torch_dtype="float32")
    assert next(load_model(merged32).parameters()).dtype == torch.float32


def test_merge_needs_an_adapter(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="needs a PEFT adapter"):
        _merge(ModelHandle(kind="hf", path=str(tiny_llama)), tmp_path)
