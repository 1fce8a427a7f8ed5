"""Completion-only loss covers the answer the user meant: which text is trained, per template kind.

Each case builds real datasets with the tiny tokenizer and checks the labels two ways: the tokens with
a label decode to exactly the expected answer text, and the tokens without one decode to exactly the
prompt text (so a rule that trains a few tokens too many or too few fails).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from honed.data import IGNORE, DataConfig, PreProcessDataConfig, build_datasets
from honed.data import packing as packing_module
from honed.data.formatting import answer_column, answer_split, boundary, loss_rule
from honed.errors import DataError

ROWS = [
    {"INSTRUCTION": "name a calm place", "RESPONSE": "the river at dawn", "SOURCE": "wiki",
     "phrase": "the quick brown fox jumps", "tone": "joy"},
    {"INSTRUCTION": "say something sad", "RESPONSE": "my old dog died", "SOURCE": "notes",
     "phrase": "the lights went out", "tone": "fear"},
]
ISSUE = "<|user|>\n{INSTRUCTION}<|end|>\n<|assistant|>\n{RESPONSE}\n( source : {SOURCE})<|end|>"
ALPACA = "### Instruction:\n{INSTRUCTION}\n\n### Response:\n{RESPONSE}"
SEED = "<|user|>\n{phrase}<|end|>\n<|assistant|>\n{tone}<|end|>"
NO_MARKER = "Q: {INSTRUCTION}\nSay it plainly.\n{RESPONSE} (from:{SOURCE})"
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
CHATS = [
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two"},
     {"role": "assistant", "content": "three"}, {"role": "user", "content": "four five"},
     {"role": "assistant", "content": "six"}],
    [{"role": "user", "content": "the cat sleeps"}, {"role": "assistant", "content": "in the sun"}],
]


@pytest.fixture(autouse=True)
def _fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets' arrow copies go to the test's folder; each test sees its warnings afresh."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(packing_module, "_WARNED", set())


@pytest.fixture(scope="module")
def tok(tiny_llama: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


class SlowView:
    """The fast tokenizer without offsets, as a slow (Python) tokenizer is used: labels then come
    from counting the tokens of text prefixes."""

    is_fast = False

    def __init__(self, tok: Any) -> None:
        self._tok = tok

    def __call__(self, texts: Any, **kw: Any) -> Any:
        kw.pop("return_offsets_mapping", None)
        return self._tok(texts, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def write(tmp_path: Path, rows: list[dict[str, Any]]) -> str:
    p = tmp_path / "rows.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(p)


def config(path: str, **pre: Any) -> DataConfig:
    return DataConfig.model_validate({"name": "d", "load_dataset_config": {"data_files": path},
                                      "pre_process_data_config": pre})


def runs(tok: Any, row: dict[str, list[int]]) -> tuple[list[str], list[str]]:
    """(trained runs, masked runs) of a row, each run of consecutive tokens decoded to text."""
    trained: list[str] = []
    masked: list[str] = []
    current: list[int] = []
    state = None
    for t, lab in [*zip(row["input_ids"], row["labels"], strict=True), (None, None)]:
        is_trained = lab is not None and lab != IGNORE
        if t is None or (state is not None and is_trained != state):
            (trained if state else masked).append(tok.decode(current))
            current = []
        if t is not None:
            current.append(t)
            state = is_trained
    return trained, masked


def chat_runs(messages: list[dict[str, str]]) -> tuple[list[str], list[str]]:
    """Expected (trained, masked) runs of a chat rendered with CHAT ending in an assistant turn: each
    assistant turn's content and end marker is trained; the turns before it and its header are not."""
    trained, masked, pending = [], [], ""
    for m in messages:
        if m["role"] == "assistant":
            masked.append(pending + "<|assistant|>\n")
            trained.append(f"{m['content']}<|end|>\n")
            pending = ""
        else:
            pending += f"<|{m['role']}|>\n{m['content']}<|end|>\n"
    trained[-1] += "</s>"
    return trained, masked


# (id, pre_process_data_config, rows, expected (trained runs, masked runs) of row k as a function of row k)
CASES = [
    ("issue-template", {"text_template": ISSUE}, ROWS,
     lambda r: ([f"{r['RESPONSE']}\n( source : {r['SOURCE']})<|end|></s>"],
                [f"<|user|>\n{r['INSTRUCTION']}<|end|>\n<|assistant|>\n"])),
    ("alpaca", {"text_template": ALPACA}, ROWS,
     lambda r: ([f"{r['RESPONSE']}</s>"], [f"### Instruction:\n{r['INSTRUCTION']}\n\n### Response:\n"])),
    ("seed", {"text_template": SEED}, ROWS,
     lambda r: ([f"{r['tone']}<|end|></s>"], [f"<|user|>\n{r['phrase']}<|end|>\n<|assistant|>\n"])),
    ("no-marker-last-field", {"text_template": NO_MARKER}, ROWS,
     lambda r: ([f"{r['SOURCE']})</s>"], [f"Q: {r['INSTRUCTION']}\nSay it plainly.\n{r['RESPONSE']} (from:"])),
    ("response-template", {"text_template": NO_MARKER, "response_template": "Say it plainly.\n"}, ROWS,
     lambda r: ([f"{r['RESPONSE']} (from:{r['SOURCE']})</s>"], [f"Q: {r['INSTRUCTION']}\nSay it plainly.\n"])),
    ("response-template-in-text", {"text_cols": ["INSTRUCTION", "RESPONSE"], "response_template": "calm place\n"},
     ROWS[:1], lambda r: ([f"{r['RESPONSE']}</s>"], [f"{r['INSTRUCTION']}\n"])),
    ("chat-messages-column", {"chat_template": CHAT}, [{"messages": m} for m in CHATS], lambda r: chat_runs(r["messages"])),
    ("chat-messages-from-columns", {"chat_template": CHAT, "chat_messages": [
        {"role": "user", "content": "{phrase}"}, {"role": "assistant", "content": "{tone}"}]}, ROWS,
     lambda r: ([f"{r['tone']}<|end|>\n</s>"], [f"<|user|>\n{r['phrase']}<|end|>\n<|assistant|>\n"])),
    ("completion-only-false", {"text_template": ISSUE, "completion_only": False}, ROWS,
     lambda r: ([ISSUE.format(**r) + "</s>"], [])),
]


@pytest.mark.parametrize("slow", [False, True], ids=["fast", "slow"])
@pytest.mark.parametrize(("pre", "rows", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_loss_covers_the_answer(tok, tmp_path: Path, pre: dict, rows: list, expected: Any, slow: bool) -> None:
    t = SlowView(tok) if slow else tok
    built = build_datasets(config(write(tmp_path, rows), **pre), t).train
    assert len(built) == len(rows)
    for k, row in enumerate(rows):
        trained, masked = runs(tok, built[k])
        assert (trained, masked) == expected(row)
    if pre.get("completion_only") is False:
        assert built[0]["labels"] == built[0]["input_ids"]


def test_multi_turn_chat_masks_only_user_and_system_turns(tok, tmp_path: Path) -> None:
    """The two assistant turns of the first chat are trained; the system/user turns between are not."""
    row = build_datasets(config(write(tmp_path, [{"messages": CHATS[0]}]), chat_template=CHAT), tok).train[0]
    trained, masked = runs(tok, row)
    assert trained == ["three<|end|>\n", "six<|end|>\n</s>"]
    assert masked == ["<|system|>\nbe brief<|end|>\n<|user|>\none two<|end|>\n<|assistant|>\n",
                      "<|user|>\nfour five<|end|>\n<|assistant|>\n"]


@pytest.mark.parametrize(
    ("template", "prompt", "answer_fields", "ambiguous"),
    [
        (ISSUE, "<|user|>\n{INSTRUCTION}<|end|>\n<|assistant|>\n", ("RESPONSE", "SOURCE"), False),
        (ALPACA, "### Instruction:\n{INSTRUCTION}\n\n### Response:\n", ("RESPONSE",), False),
        (SEED, "<|user|>\n{phrase}<|end|>\n<|assistant|>\n", ("tone",), False),
        ("<s>[INST] {q} [/INST] {a} </s>", "<s>[INST] {q} [/INST] ", ("a",), False),
        ("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a} {b}<|im_end|>",
         "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n", ("a", "b"), False),
        ("<|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
         "\n\n{a}<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\n", ("a",), False),
        ("<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n{a}<end_of_turn>",
         "<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n", ("a",), False),
        ("USER: {q}\nASSISTANT: {a} [{src}]", "USER: {q}\nASSISTANT: ", ("a", "src"), False),
        ("Q: {q}\nA: {a}", "Q: {q}\nA: ", ("a",), False),
        # few-shot: the last marker a field follows starts the answer
        ("<|user|>\n{q1}<|end|>\n<|assistant|>\n{a1}<|end|>\n<|user|>\n{q2}<|end|>\n<|assistant|>\n{a2}<|end|>",
         "<|user|>\n{q1}<|end|>\n<|assistant|>\n{a1}<|end|>\n<|user|>\n{q2}<|end|>\n<|assistant|>\n", ("a2",), False),
        # 'assistant' inside a sentence or a column value is no marker
        ("You are a helpful assistant\n{q}\nYou are an assistant: {h}\n{a}",
         "You are a helpful assistant\n{q}\nYou are an assistant: {h}\n", ("a",), True),
        ("### Text: {phrase}\n### The tone is:\n{tone}", "### Text: {phrase}\n### The tone is:\n", ("tone",), False),
        (NO_MARKER, "Q: {INSTRUCTION}\nSay it plainly.\n{RESPONSE} (from:", ("SOURCE",), True),
        ("{{literal}} <|assistant|> {q} -> {a}", "{{literal}} <|assistant|> ", ("q", "a"), False),
        ("no fields", "no fields", (), False),
    ],
)
def test_boundary(template: str, prompt: str, answer_fields: tuple, ambiguous: bool) -> None:
    b = boundary(template)
    assert (b.prompt, b.answer_fields, b.ambiguous is not None) == (prompt, answer_fields, ambiguous)
    row = dict.fromkeys(["q", "a", "b", "h", "src", "q1", "a1", "q2", "a2", "phrase", "tone", *ROWS[0]], "v")
    assert template.format_map(row).startswith(b.prompt.format_map(row))


def test_answer_split_and_label_column_follow_the_rule(tmp_path: Path) -> None:
    assert answer_split(ISSUE) == ("<|user|>\n{INSTRUCTION}<|end|>\n<|assistant|>\n", "RESPONSE",
                                   "\n( source : {SOURCE})<|end|>")
    assert answer_split(NO_MARKER, "Say it plainly.\n") == ("Q: {INSTRUCTION}\nSay it plainly.\n", "RESPONSE",
                                                            " (from:{SOURCE})")
    assert answer_column(config(write(tmp_path, ROWS), text_template=ISSUE)) == "RESPONSE"


@pytest.mark.parametrize(
    ("pre", "match"),
    [
        ({"text_template": ISSUE, "response_template": "### Response:"}, "does not occur in the literal text"),
        # a marker that appears only once a column is filled in is not in the template
        ({"text_template": "{a}{b}", "response_template": "}{"}, "does not occur in the literal text"),
        ({"text_template": ISSUE, "response_template": "<|assistant|>\n", "completion_only": False}, "drop one"),
        ({"text_template": ISSUE, "response_template": ""}, "at least 1 character"),
    ],
)
def test_response_template_mistakes_are_config_errors(pre: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match) as e:
        PreProcessDataConfig.model_validate(pre)
    assert e.value.error_count() == 1


def test_response_template_missing_from_every_row_is_an_error(tok, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="occurs in no row's text"):
        build_datasets(config(write(tmp_path, ROWS), text_cols=["INSTRUCTION", "RESPONSE"],
                              response_template="### Answer:"), tok)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "honed" and r.levelno == logging.WARNING]


def _share(built: Any) -> tuple[int, int]:
    labels = [x for r in built["labels"] for x in r]
    return sum(1 for x in labels if x != IGNORE), len(labels)


def test_tiny_trained_share_warns_once_with_figures(tok, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 6)
    rows = [{"text": f"{long} {i}", "label": "joy"} for i in range(4)]
    c = config(write(tmp_path, rows), text_template="### Text: {text}\n### The tone is:\n{label}")
    caplog.set_level(logging.WARNING, logger="honed")
    first = build_datasets(c, tok, cache_dir=tmp_path / "cache")
    trained, total = _share(first.train)
    assert trained < 0.1 * total  # the case is what it claims
    again = build_datasets(c, tok, cache_dir=tmp_path / "cache")
    build_datasets(c, tok)
    assert again.stats["cache"] == "hit" and again.stats["loss_warning"] == first.stats["loss_warning"]
    [message] = _warnings(caplog)
    assert message == first.stats["loss_warning"]
    assert f"the loss covers {trained} of {total} tokens ({100 * trained / total:.1f}%; " \
           f"{trained / 4:.1f} of {total / 4:.1f} per row)" in message
    assert "data config 'd'" in message and "{label}" in message
    assert "response_template" in message and "completion_only: false" in message


def test_normal_share_does_not_warn(tok, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="honed")
    built = build_datasets(config(write(tmp_path, ROWS), text_template=SEED), tok)
    trained, total = _share(built.train)
    assert trained >= 0.1 * total
    assert _warnings(caplog) == [] and "loss_warning" not in built.stats


def test_explicit_response_template_does_not_warn_about_a_small_share(
    tok, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 6)
    c = config(write(tmp_path, [{"text": long, "label": "joy"}]), text_template="{text}\n### Tone:\n{label}",
               response_template="### Tone:\n")
    caplog.set_level(logging.WARNING, logger="honed")
    trained, total = _share(build_datasets(c, tok).train)
    assert trained < 0.1 * total and _warnings(caplog) == []


def test_guessed_boundary_warns_even_with_a_large_share(tok, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="honed")
    rows = [{"a": "x", "b": "y", "c": "the quick brown fox jumps over the lazy dog"}]
    built = build_datasets(config(write(tmp_path, rows), text_template="{a} {b}\n{c}"), tok)
    trained, total = _share(built.train)
    assert trained >= 0.1 * total
    [message] = _warnings(caplog)
    assert "3 columns (a, b, c) and no assistant marker" in message and f"{trained} of {total} tokens" in message


def test_rows_without_the_response_template_train_on_nothing(tok, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="honed")
    rows = [{"text": "question one\nAnswer: yes"}, {"text": "question two, no marker"}]
    built = build_datasets(config(write(tmp_path, rows), response_template="Answer:"), tok).train
    assert runs(tok, built[0])[0] == [" yes</s>"]
    assert all(x == IGNORE for x in built[1]["labels"])
    [message] = _warnings(caplog)
    assert "1 of 2 rows train on nothing (e.g. row 1: 'question two, no marker')" in message


@pytest.mark.parametrize(
    ("pre", "completion", "explicit", "caveat"),
    [
        ({"text_template": SEED}, True, False, False),
        ({"text_template": "{text}"}, False, False, False),
        ({"text_template": "{text}", "completion_only": True}, True, False, True),
        ({"text_cols": ["text"], "completion_only": True}, True, False, True),
        ({"text_template": SEED, "completion_only": False}, False, True, False),
        ({"text_template": SEED, "response_template": "<|assistant|>\n"}, True, True, False),
        ({"chat_template": True}, True, False, False),
    ],
)
def test_loss_rule(pre: dict, completion: bool, explicit: bool, caveat: bool) -> None:
    r = loss_rule(DataConfig.model_validate({"name": "d", "pre_process_data_config": pre}))
    assert (r.completion, r.explicit, r.caveat is not None) == (completion, explicit, caveat)
