"""Tokenizing, packing strategies, completion-only labels, split-before-pack and the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from honed.data import IGNORE, DataConfig, build_datasets
from honed.errors import DataError

# Rows written for these tests: 12 distinct prompts, 3 of them repeated (one with a changed answer
# would be a conflict; repeats here are exact duplicates, as in the seed's data).
PHRASES = [
    ("the quick brown fox jumps", "joy"), ("the lights went out", "fear"), ("my old dog died", "sadness"),
    ("they threw me a party", "surprise"), ("numbers one two three", "joy"), ("the cat sleeps in the sun", "joy"),
    ("something moved upstairs", "fear"), ("I passed the exam", "joy"), ("top marks again", "surprise"),
    ("the lazy dog sleeps", "sadness"), ("four five six seven", "fear"), ("eight nine ten", "joy"),
]
ROWS = [{"phrase": p, "tone": t} for p, t in PHRASES] + [{"phrase": p, "tone": t} for p, t in PHRASES[:3]]
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"


@pytest.fixture(autouse=True)
def _own_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets' arrow copies of the test files go to the test's folder, not ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


@pytest.fixture(scope="module")
def tok(tiny_llama: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture
def data_file(tmp_path: Path) -> str:
    p = tmp_path / "rows.json"  # JSON Lines in a .json file, like the seed's dataset
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return str(p)


def cfg(path: str, **pre) -> DataConfig:
    return DataConfig.model_validate({
        "name": "d", "load_dataset_config": {"data_name": "json", "data_files": path},
        "pre_process_data_config": {"text_template": TEMPLATE, **pre},
    })


def _answer_of(tok, row) -> str:
    return tok.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE])


def test_line_by_line_masks_the_prompt(tok, data_file: str) -> None:
    s = build_datasets(cfg(data_file), tok)
    assert s.stats["duplicates_dropped"] == 3 and s.stats["train_sequences"] == 12
    row = s.train[0]
    assert set(row) == {"input_ids", "attention_mask", "labels"}
    assert tok.decode(row["input_ids"], skip_special_tokens=True) == TEMPLATE.format(**ROWS[0])
    assert _answer_of(tok, row) == "joy</s>"
    prompt_len = len(tok("### Text: the quick brown fox jumps\n### The tone is:\n")["input_ids"])
    # every token before the answer is masked, the answer and EOS are not
    assert all(lab == IGNORE for lab in row["labels"][: prompt_len - 2])
    assert row["labels"][-1] == tok.eos_token_id and row["labels"][-2] != IGNORE


def test_completion_only_off_trains_on_everything(tok, data_file: str) -> None:
    row = build_datasets(cfg(data_file, completion_only=False), tok).train[0]
    assert row["labels"] == row["input_ids"]


def test_completion_only_with_literal_suffix(tok, data_file: str) -> None:
    row = build_datasets(cfg(data_file, text_template="<|user|>\n{phrase}<|end|>\n<|assistant|>\n{tone}<|end|>"),
                         tok).train[1]
    assert _answer_of(tok, row) == "fear<|end|></s>"


@pytest.mark.parametrize(
    ("pre", "lengths"),
    [
        # 12 distinct rows of about 50 tokens (tiny vocabulary): join cuts the stream into 128-token blocks
        ({"strategy": "join", "max_seq_len": 128}, "blocks"),
        ({"strategy": "join", "max_seq_len": 128, "drop_short_sequences": True}, "full"),
        ({"strategy": "join-sliding-window", "max_seq_len": 128, "stride": 64}, "window"),
        ({"strategy": "line-by-line", "max_seq_len": 128}, "rows"),
        ({"strategy": "line-by-line", "max_seq_len": 128, "pad_to_max_len": True}, "padded"),
        ({"strategy": "packed", "max_seq_len": 128}, "packed"),
    ],
)
def test_strategies(tok, data_file: str, pre: dict, lengths: str) -> None:
    s = build_datasets(cfg(data_file, **pre), tok)
    rows = s.train.to_list()
    per_row = [len(r) for r in _row_tokens(tok, data_file)]
    total = sum(per_row)
    sizes = [len(r["input_ids"]) for r in rows]
    for r in rows:
        assert len(r["labels"]) == len(r["input_ids"]) == len(r["attention_mask"])
    if lengths == "blocks":
        assert sum(sizes) == total and all(x == 128 for x in sizes[:-1]) and len(sizes) == -(-total // 128)
    elif lengths == "full":
        assert sizes == [128] * (total // 128)
    elif lengths == "window":
        assert sizes[0] == 128 and len(sizes) == len(range(0, total - 64, 64))
        # the overlap with the previous window carries no loss: each token is trained once
        assert all(lab == IGNORE for lab in rows[1]["labels"][:64])
        trained = sum(sum(1 for x in r["labels"] if x != IGNORE) for r in rows)
        assert trained == sum(1 for r in _row_labels(tok, data_file) for x in r if x != IGNORE)
    elif lengths == "rows":
        assert sizes == per_row
    elif lengths == "padded":
        assert sizes == [128] * 12
        r = rows[0]
        n = per_row[0]
        assert r["input_ids"][n:] == [tok.pad_token_id] * (128 - n)
        assert r["attention_mask"] == [1] * n + [0] * (128 - n) and r["labels"][n:] == [IGNORE] * (128 - n)
    elif lengths == "packed":
        assert sum(sizes) == total and all(x <= 128 for x in sizes) and len(sizes) <= 6
        r = rows[0]
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        assert starts[0] == 0 and len(starts) >= 2
        # rows stay whole: every segment is one row ending with EOS; its first token is not a label
        for a, b in zip(starts, [*starts[1:], len(r["input_ids"])], strict=True):
            assert tok.decode(r["input_ids"][a:b]).startswith("### Text:") and r["input_ids"][b - 1] == tok.eos_token_id
            assert r["labels"][a] == IGNORE


def _row_tokens(tok, data_file: str) -> list[list[int]]:
    return build_datasets(cfg(data_file, max_seq_len=128), tok).train["input_ids"]


def _row_labels(tok, data_file: str) -> list[list[int]]:
    return build_datasets(cfg(data_file, max_seq_len=128), tok).train["labels"]


def test_packed_rows_do_not_attend_to_each_other(tiny_llama: Path, tok, data_file: str) -> None:
    """A packed block gives each row the logits it gets alone; without the position reset it would not."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="sdpa").eval()
    block = build_datasets(cfg(data_file, strategy="packed", max_seq_len=128), tok).train[0]
    ids = torch.tensor([block["input_ids"]])
    pos = torch.tensor([block["position_ids"]])
    starts = [i for i, p in enumerate(block["position_ids"]) if p == 0] + [len(block["input_ids"])]
    a, b = starts[1], starts[2]
    with torch.no_grad():
        # no attention_mask and no KV cache: transformers then reads the position resets as packing
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, a:b]
        alone = model(input_ids=ids[:, a:b]).logits[0]
        leaky = model(input_ids=ids).logits[0, a:b]
    assert torch.allclose(packed, alone, atol=1e-5)
    assert not torch.allclose(leaky, alone, atol=1e-3)


def test_split_before_pack_has_no_overlap(tok, data_file: str) -> None:
    s = build_datasets(cfg(data_file, strategy="join", max_seq_len=128), tok, eval_dataset_size=0.25, seed=3)
    assert s.stats["duplicates_dropped"] == 3
    assert s.stats["train_rows"] + s.stats["eval_rows"] == 12 and s.stats["eval_rows"] == 3

    def phrases(ds) -> set[str]:
        text = tok.decode([t for r in ds["input_ids"] for t in r], skip_special_tokens=True)
        return {p for p, _ in PHRASES if f"### Text: {p}\n" in text}

    train, evals = phrases(s.train), phrases(s.eval)
    assert len(evals) == 3 and len(train) == 9 and not train & evals
    again = build_datasets(cfg(data_file, strategy="join", max_seq_len=128), tok, eval_dataset_size=3, seed=3)
    assert phrases(again.eval) == evals  # a count and the same fraction pick the same seeded rows
    other = build_datasets(cfg(data_file, strategy="join", max_seq_len=128), tok, eval_dataset_size=3, seed=4)
    assert phrases(other.eval) != evals


def test_explicit_eval_config_drops_overlapping_train_rows(tok, data_file: str, tmp_path: Path) -> None:
    ev = tmp_path / "eval.jsonl"
    ev.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"phrase": "a brand new line", "tone": "joy"}) + "\n",
                  encoding="utf-8")
    s = build_datasets(cfg(data_file), tok, eval_config=cfg(str(ev)))
    assert s.stats["train_rows_in_eval_dropped"] == 1 and s.stats["train_rows"] == 11
    assert s.stats["eval_rows"] == 2


@pytest.mark.parametrize(("size", "match"), [(1.5, "fraction"), (12, "leaves no rows"), (-2, "leaves no rows")])
def test_bad_eval_sizes(tok, data_file: str, size, match: str) -> None:
    with pytest.raises(DataError, match=match):
        build_datasets(cfg(data_file), tok, eval_dataset_size=size)
    assert build_datasets(cfg(data_file), tok, eval_dataset_size=0).eval is None


@pytest.mark.parametrize(("overflow", "expected"), [("truncate", 12), ("drop", 0)])
def test_overflow(tok, data_file: str, overflow: str, expected: int) -> None:
    if expected == 0:
        with pytest.raises(DataError, match="no train sequences"):
            build_datasets(cfg(data_file, max_seq_len=8, overflow=overflow), tok)
        return
    s = build_datasets(cfg(data_file, max_seq_len=8, overflow=overflow), tok)
    assert s.stats["train_sequences"] == expected and max(len(x) for x in s.train["input_ids"]) == 8


def test_row_longer_than_max_seq_len_is_an_error(tok, data_file: str) -> None:
    with pytest.raises(DataError, match=r"rows\.json, line 1: \d+ tokens, longer than max_seq_len 8; raise max_seq_len"):
        build_datasets(cfg(data_file, max_seq_len=8), tok)


def test_max_samples_shuffle_and_left_padding(tok, data_file: str) -> None:
    s = build_datasets(cfg(data_file, max_samples=4, shuffle=True, seed=1, pad_to_max_len=True,
                           padding_side="left", max_seq_len=80), tok)
    assert s.stats["train_sequences"] == 4
    r = s.train[0]
    assert r["input_ids"][0] == tok.pad_token_id and r["attention_mask"][0] == 0 and r["input_ids"][-1] == tok.eos_token_id
    first = tok.decode(r["input_ids"], skip_special_tokens=True)
    plain = tok.decode(build_datasets(cfg(data_file), tok).train[0]["input_ids"], skip_special_tokens=True)
    assert first != plain or s.train[1]["input_ids"] != build_datasets(cfg(data_file), tok).train[1]["input_ids"]


def test_chat_template_masks_all_but_the_answer(tok, data_file: str) -> None:
    template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    c = cfg(data_file, text_template=None, chat_template=template,
            chat_messages=[{"role": "user", "content": "{phrase}"}, {"role": "assistant", "content": "{tone}"}])
    row = build_datasets(c, tok).train[0]
    assert tok.decode(row["input_ids"]).startswith("<|user|>\nthe quick brown fox jumps<|end|>")
    assert _answer_of(tok, row) == "joy<|end|>\n</s>"


def test_messages_column(tok, tmp_path: Path) -> None:
    p = tmp_path / "chat.jsonl"
    msgs = [{"role": "user", "content": "one two"}, {"role": "assistant", "content": "three"}]
    p.write_text(json.dumps({"messages": msgs}) + "\n", encoding="utf-8")
    tok2 = type(tok).from_pretrained(tok.name_or_path)
    tok2.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
                         "{% if add_generation_prompt %}assistant: {% endif %}"
    c = DataConfig.model_validate({"name": "c", "load_dataset_config": {"data_files": str(p)},
                                   "pre_process_data_config": {"chat_template": True}})
    row = build_datasets(c, tok2).train[0]
    assert _answer_of(tok2, row) == "three\n</s>"


def test_cache_hit_returns_the_same_sequences(tok, data_file: str, tmp_path: Path) -> None:
    c = cfg(data_file, strategy="packed", max_seq_len=128)
    first = build_datasets(c, tok, cache_dir=tmp_path / "c", eval_dataset_size=0.25)
    second = build_datasets(c, tok, cache_dir=tmp_path / "c", eval_dataset_size=0.25)
    assert first.stats["cache"] == "miss" and second.stats["cache"] == "hit"
    assert first.train.to_list() == second.train.to_list() and first.eval.to_list() == second.eval.to_list()
    changed = build_datasets(cfg(data_file, strategy="packed", max_seq_len=100), tok, cache_dir=tmp_path / "c",
                             eval_dataset_size=0.25)
    assert changed.stats["cache"] == "miss"


@pytest.mark.parametrize("strategy", ["line-by-line", "packed"])
def test_collator_pads_batches(tok, data_file: str, strategy: str) -> None:
    from honed.data import Collator

    rows = build_datasets(cfg(data_file, strategy=strategy, max_seq_len=128), tok).train.to_list()[:3]
    batch = Collator(tok.pad_token_id)(rows)
    width = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == batch["labels"].shape == (3, width)
    short = min(range(3), key=lambda i: len(rows[i]["input_ids"]))
    n = len(rows[short]["input_ids"])
    assert batch["input_ids"][short, :n].tolist() == rows[short]["input_ids"]
    assert batch["labels"][short, n:].tolist() == [IGNORE] * (width - n)
    if strategy == "packed":
        assert "attention_mask" not in batch and batch["position_ids"][short, n:].tolist() == list(range(width - n))
    else:
        assert batch["attention_mask"][short].tolist() == [1] * n + [0] * (width - n)
