"""Quantization-aware LoRA: the adapter trains against the rounded base, and ModelBuilder ships exactly that
model (the rounded codes plus the adapter as float MatMuls), on tiny random Llama and Phi-3 models."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import honed.training.finetune as ft
from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.quantized import dequantized_state_dict
from honed.models.runtime import GenaiRuntime, HFRuntime
from honed.passes.lora import DoRAConfig, LoRAConfig
from honed.training.quantization_aware import rtn_codes
from tests import test_finetune as tf
from tests.helpers import run_pass

IDS = [[1, 5, 9, 2, 7, 3, 11, 4, 6, 8]]


ROWS: list = []


@pytest.fixture(autouse=True)
def _rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass trains on the rows :func:`_train` made for the model, one thread."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(ft, "load_splits", lambda config, tokenizer, ctx: (ROWS[0], ROWS[0][:6]))


def _train(model_dir: Path, tmp: Path, **qa) -> ModelHandle:
    ROWS[:] = [tf.make_rows(model_dir)]
    handle, _ = tf.run_pass("LoRA", model_dir, tmp, quantization_aware=qa)
    return handle


def test_rtn_codes_match_the_grid_formula() -> None:
    """Asymmetric: scale (max - min) / 15 with 0 in range, zero round(-min / scale), codes clamp(round(w/s) + z);
    symmetric: scale 2 max|w| / 15, zero 8 (honed's quantized-checkpoint grid)."""
    torch.manual_seed(0)
    w = torch.randn(3, 64)
    codes, scales, zeros = rtn_codes(w, 4, 32, sym=False)
    g = w.reshape(6, 32)
    lo, hi = g.min(1).values.clamp(max=0), g.max(1).values.clamp(min=0)
    s = (hi - lo) / 15
    z = torch.round(-lo / s)
    ref = torch.clamp(torch.round(g / s[:, None]) + z[:, None], 0, 15)
    assert torch.equal(codes.reshape(6, 32).float(), ref)
    assert torch.allclose(scales.reshape(-1), s) and torch.equal(zeros.reshape(-1).float(), z)
    codes, scales, zeros = rtn_codes(w, 4, 32, sym=True)
    s = g.abs().max(1).values * 2 / 15
    assert torch.allclose(scales.reshape(-1), s) and bool((zeros == 8).all())
    assert torch.equal(codes.reshape(6, 32).float(), torch.clamp(torch.round(g / s[:, None]) + 8, 0, 15))


def _tied(model_dir: Path, out: Path) -> Path:
    """A copy of ``model_dir`` whose LM head is its embedding (as SmolLM2's is)."""
    import shutil

    shutil.copytree(model_dir, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("arch", ["llama", "phi3", "llama-tied"])
def test_shipped_int4_model_is_the_trained_model(arch: str, tiny_llama: Path, tiny_phi3: Path, tmp_path: Path) -> None:
    """The genai folder computes the logits the trained adapter computes over the rounded base (fp32 kernels:
    accuracy_level 1), the adapter changes them, and the base checkpoint holds exactly the rounded weights; a
    tied embedding is untied (it stays float, the head is rounded) in training and in the shipped graph alike."""
    model_dir = {"llama": tiny_llama, "phi3": tiny_phi3}.get(arch) or _tied(tiny_llama, tmp_path / "tied")
    handle = _train(model_dir, tmp_path)
    qc = json.loads((Path(handle.base.path) / "config.json").read_text())["quantization_config"]
    assert (qc["bits"], qc["group_size"], qc["overrides"]) == (4, 32, {"lm_head": {"bits": 8}})

    # The rounded base is what the adapter trained over: every linear equals its codes' float values.
    state = dequantized_state_dict(handle.base.path)
    original = HFRuntime(ModelHandle(kind="hf", path=str(model_dir))).model.state_dict()
    name = next(k for k in state if k.endswith("down_proj.weight"))
    codes, scales, zeros = rtn_codes(original[name], 4, 32, sym=False)
    ref = ((codes.float().reshape(codes.shape[0], -1, 32) - zeros.float()[..., None]) * scales[..., None])
    assert torch.allclose(state[name], ref.reshape(codes.shape), atol=1e-6)

    built = run_pass("ModelBuilder", handle, tmp_path / "mb", precision="int4", int4_accuracy_level=1)
    trained = HFRuntime(handle).forward(IDS)
    shipped = GenaiRuntime(built).forward(IDS)
    base_only = HFRuntime(handle.base).forward(IDS)
    assert np.abs(trained - base_only).max() > 0.05  # the adapter matters...
    np.testing.assert_allclose(shipped, trained, atol=2e-4)  # ...and ships as trained


def test_branches_are_lora_nodes_extract_adapters_finds(tiny_llama: Path, tmp_path: Path) -> None:
    import onnx

    from honed.passes.extract_adapters import find_lora_weights

    handle = _train(tiny_llama, tmp_path)
    built = run_pass("ModelBuilder", handle, tmp_path / "mb", precision="int4")
    graph = onnx.load(str(Path(built.path) / "model.onnx"), load_external_data=False).graph
    found = find_lora_weights(graph)
    layers = json.loads((tiny_llama / "config.json").read_text())["num_hidden_layers"]
    # Llama: q/k/v packed into one node, then o, gate, up, down: 5 nodes per layer, an A and a B each.
    assert len(found) == 2 * 5 * layers
    assert sum(w.role == "A" for w in found.values()) == 5 * layers
    text = GenaiRuntime(built).generate(IDS[0], max_new_tokens=4)
    assert len(text) >= 1


def test_quantization_aware_is_lora_only() -> None:
    with pytest.raises(ValidationError, match="LoRA pass only"):
        DoRAConfig.model_validate({"train_data_config": "t", "quantization_aware": {}})
    with pytest.raises(ValidationError, match="group_size"):
        LoRAConfig.model_validate({"train_data_config": "t", "quantization_aware": {"group_size": 48}})


def test_group_size_that_does_not_divide_is_one_line(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"quantization_aware.group_size: 128 does not divide"):
        _train(tiny_llama, tmp_path, group_size=128)


def test_merging_warns_that_requantizing_leaves_the_grid(tiny_llama: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    handle = _train(tiny_llama, tmp_path)
    with caplog.at_level(logging.WARNING, logger="honed"):
        run_pass("MergeAdapterWeights", handle, tmp_path / "merged")
    assert "put ModelBuilder straight after the LoRA pass" in caplog.text
