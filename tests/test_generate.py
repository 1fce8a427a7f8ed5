"""`honed generate` / `honed chat` over genai, ONNX and HF folders, and the generate API."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from honed.cli import cmd_generate
from honed.errors import UserError


@pytest.fixture(scope="module")
def genai_llama(genai_fp32) -> Path:
    return Path(genai_fp32.path)


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="honed")
    cmd_generate.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_generate_same_text_on_genai_and_hf(genai_llama: Path, tiny_llama: Path, capsys) -> None:
    outputs = {}
    for name, folder in (("genai", genai_llama), ("hf", tiny_llama)):
        assert _cli("generate", "--model", str(folder), "--prompt", "the quick brown", "--max-new-tokens", "6") == 0
        captured = capsys.readouterr()
        outputs[name] = captured.out
        assert "tokens/s" in captured.err and f", {name}]" in captured.err
    assert outputs["genai"] == outputs["hf"]


def test_stream_ids_stats(genai_llama: Path) -> None:
    from honed.models.runtime import load_generator

    gen = load_generator(genai_llama)
    ids = gen.encode("numbers one two")
    out = gen.generate_ids(ids, 8, stop_at_eos=False)
    assert len(out) == 8
    assert gen.stats.new_tokens == 8 and gen.stats.prompt_tokens == len(ids)
    assert gen.stats.tokens_per_s > 0


def test_template(genai_llama: Path) -> None:
    from honed.models.runtime import load_generator

    gen = load_generator(genai_llama)
    assert gen.format_prompt("hi", "### Text: {prompt}\n") == "### Text: hi\n"
    assert gen.format_prompt("hi", None) == "hi"
    with pytest.raises(UserError, match="prompt"):
        gen.format_prompt("hi", "no placeholder")


def test_chat_reads_turns_until_empty_line(genai_llama: Path, monkeypatch, capsys) -> None:
    turns = iter(["hello there", "and again", ""])
    monkeypatch.setattr("builtins.input", lambda _prompt="": next(turns))
    assert _cli("chat", "--model", str(genai_llama), "--max-new-tokens", "3",
                "--template", "<|user|>{prompt}<|assistant|>") == 0
    assert capsys.readouterr().err.count("tokens/s") == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-new-tokens", "0"], "max-new-tokens"),
        (["--model-override"], None),
    ],
)
def test_bad_arguments(genai_llama: Path, argv: list[str], message: str | None) -> None:
    if message is None:
        with pytest.raises(SystemExit):  # argparse rejects unknown options itself
            _cli("generate", "--model", str(genai_llama), "--prompt", "x", *argv)
    else:
        with pytest.raises(UserError, match=message):
            _cli("generate", "--model", str(genai_llama), "--prompt", "x", *argv)


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a model folder"):
        _cli("generate", "--model", str(tmp_path), "--prompt", "x")
    with pytest.raises(UserError, match="not found"):
        _cli("generate", "--model", str(tmp_path / "missing"), "--prompt", "x")
