"""One runtime per model kind (honed.models.runtime): `honed generate` and the evaluators' backends decode
the same tokens, the three kinds agree on an fp32 build of one model, and they share one end-of-sequence rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from honed.models.handle import ModelHandle
from honed.models.runtime import Runtime, eos_token_ids, open_runtime
from tests.helpers import cli, run_pass

KINDS = ["hf", "onnx", "genai"]
PROMPT = "### Text: They threw me a party"


@pytest.fixture(scope="module")
def onnx_export(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelHandle:
    """tiny_llama exported by OnnxConversion (fp32, past key/values)."""
    return run_pass("OnnxConversion", tiny_llama, tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def handles(tiny_llama: Path, onnx_export: ModelHandle, genai_fp32: ModelHandle) -> dict[str, ModelHandle]:
    """The same fp32 model as each kind."""
    return {"hf": ModelHandle(kind="hf", path=str(tiny_llama)), "onnx": onnx_export, "genai": genai_fp32}


@pytest.fixture(scope="module")
def runtimes(handles: dict[str, ModelHandle]) -> dict[str, Runtime]:
    return {kind: open_runtime(h) for kind, h in handles.items()}


def _folder(handle: ModelHandle) -> Path:
    p = Path(handle.path)
    return p if p.is_dir() else p.parent


@pytest.mark.parametrize("kind", KINDS)
def test_cli_generate_and_evaluator_backend_decode_the_same_tokens(kind: str, handles: dict[str, ModelHandle],
                                                                   monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from honed.evaluate.backends import open_backend

    handle = handles[kind]
    seen: list[list[int]] = []
    stream_ids = Runtime.stream_ids

    def spy(self: Runtime, *args: Any, **kwargs: Any) -> Any:
        seen.append([])
        for tok in stream_ids(self, *args, **kwargs):
            seen[-1].append(tok)
            yield tok

    monkeypatch.setattr(Runtime, "stream_ids", spy)
    assert cli("generate", "--model", handle.path, "--prompt", PROMPT, "--max-new-tokens", "8") == 0
    captured = capsys.readouterr()
    assert f", {kind}]" in captured.err
    cli_tokens = seen[-1]

    backend = open_backend(handle)
    ids = list(backend.tokenizer(PROMPT)["input_ids"])
    tokens = backend.generate(ids, 8)
    assert tokens == cli_tokens and len(tokens) >= 2
    shown = [t for t in tokens if t not in backend.eos]
    text = backend.tokenizer.decode(shown, skip_special_tokens=True)
    # the CLI prints what decodes to whole characters: all of it, less a trailing incomplete UTF-8 sequence
    assert captured.out.endswith("\n") and text.startswith(captured.out[:-1])
    assert captured.out[:-1] == text or text.endswith("\ufffd")


def test_kinds_agree_on_greedy_tokens_and_logits(runtimes: dict[str, Runtime]) -> None:
    ids = runtimes["hf"].encode(PROMPT)
    greedy = {kind: rt.generate_ids(ids, 12, stop_at_eos=False) for kind, rt in runtimes.items()}
    assert len(greedy["hf"]) == 12
    assert greedy["onnx"] == greedy["hf"] and greedy["genai"] == greedy["hf"]
    logits = {kind: rt.forward([ids]) for kind, rt in runtimes.items()}
    assert logits["hf"].shape == (1, len(ids), len(runtimes["hf"].tokenizer))
    for kind in ("onnx", "genai"):
        assert logits[kind].shape == logits["hf"].shape, kind
        assert np.abs(logits[kind] - logits["hf"]).max() < 1e-4, kind
    # score: log-probabilities of the greedy continuation, the same in every kind
    seq = ids + greedy["hf"][:4]
    scores = {kind: rt.score(seq, len(ids)) for kind, rt in runtimes.items()}
    for kind in ("onnx", "genai"):
        assert np.allclose(scores[kind], scores["hf"], atol=1e-4), kind


def test_eos_ids_are_the_union_of_every_source(tmp_path: Path) -> None:
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"eos_token_id": [5, 6]}}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 2]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 8}))

    class Tok:
        eos_token_id = 9

    assert eos_token_ids([tmp_path], Tok()) == {2, 5, 6, 7, 8, 9}
    assert eos_token_ids([tmp_path / "missing"], Tok()) == {9}


def test_an_extra_eos_in_generation_config_stops_every_kind(handles: dict[str, ModelHandle],
                                                            runtimes: dict[str, Runtime], tmp_path: Path) -> None:
    ids = runtimes["hf"].encode(PROMPT)
    ref = runtimes["hf"].generate_ids(ids, 12, stop_at_eos=False)
    # the first token, from the third on, not seen before and not already an EOS: the new end of sequence
    k = next(i for i in range(2, len(ref)) if ref[i] not in ref[:i] and ref[i] not in runtimes["hf"].eos)
    for kind, handle in handles.items():
        src = _folder(handle)
        folder = tmp_path / kind
        shutil.copytree(src, folder)
        gen_cfg = folder / "generation_config.json"
        cfg = json.loads(gen_cfg.read_text()) if gen_cfg.is_file() else {}
        old = cfg.get("eos_token_id")
        old = [old] if isinstance(old, int) else list(old or [])
        cfg["eos_token_id"] = [*old, ref[k]]
        gen_cfg.write_text(json.dumps(cfg))
        rt = open_runtime(handle.model_copy(update={"path": str(folder / Path(handle.path).name)
                                                    if Path(handle.path).is_file() else str(folder)}))
        assert ref[k] in rt.eos, kind
        assert rt.generate(ids, 12) == ref[:k + 1], kind
        assert rt.generate_ids(ids, 12, stop_at_eos=False) == ref, kind  # nothing else changed
        rt.close()
