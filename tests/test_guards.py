"""The guards honed relies on, each fed what it exists to catch (a guard tested only on good input passes even
when it compares a thing with itself)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from honed.errors import HonedError
from honed.models.handle import ModelHandle
from honed.passes._onnx_common import check_against_source
from honed.util.accelerator import Accelerator
from honed.util.context import PassContext


def _ctx(tmp_path: Path) -> PassContext:
    return PassContext(pass_name="check", host=Accelerator(), target=Accelerator(), data_configs={},
                       work_dir=tmp_path / "w", cache_dir=tmp_path / "c")


def _perturbed(src: Path, out: Path) -> Path:
    """``src`` with noise of 10% of each weight's spread added: another model of the same shape."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1 * (p.std() if p.numel() > 1 else 1.0))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def test_parity_guard_accepts_the_model_it_was_built_from(tiny_llama: Path, genai_fp32: ModelHandle,
                                                           tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    worst = check_against_source(ModelHandle(kind="hf", path=str(tiny_llama)), genai_fp32, ctx, tolerance=1e-3)
    assert worst < 1e-4 and ctx.metrics["max_abs_diff"] == worst


def test_parity_guard_rejects_a_wrong_model(tiny_llama: Path, genai_fp32: ModelHandle, tmp_path: Path) -> None:
    """The genai build of tiny_llama checked against a perturbed tiny_llama: the difference is measured on the
    ONNX outputs, not on the source compared with itself, and it stops the pass."""
    other = ModelHandle(kind="hf", path=str(_perturbed(tiny_llama, tmp_path / "other")))
    ctx = _ctx(tmp_path)
    with pytest.raises(HonedError, match="differ from the source model"):
        check_against_source(other, genai_fp32, ctx, tolerance=1e-3)
    assert ctx.metrics["max_abs_diff"] > 1e-2
