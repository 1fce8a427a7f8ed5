"""Data sources, formatting and the error cases of honed.data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from honed.data import (
    DataConfig,
    answer_split,
    fingerprint,
    format_rows,
    load_rows,
    split_template,
    template_fields,
)
from honed.errors import DataError

ROWS = [
    {"text": "the river was calm at dawn", "mood": "calm"},
    {"text": "a storm broke over the hills", "mood": "wild"},
    {"text": "we laughed until midnight", "mood": "glad"},
]
TEMPLATE = "Q: {text}\nA: {mood}"


@pytest.fixture(autouse=True)
def _own_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets' arrow copies of the test files go to the test's folder, not ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


def cfg(files, **pre) -> DataConfig:
    return DataConfig.model_validate({
        "name": "d", "load_dataset_config": {"data_files": files},
        "pre_process_data_config": {"text_template": TEMPLATE, **pre},
    })


def write_jsonl(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_source(kind: str, folder: Path) -> str:
    """Write ROWS in one source format; return what data_files should say."""
    if kind == "jsonl":
        return str(write_jsonl(folder / "rows.jsonl"))
    if kind == "jsonl-in-.json":
        return str(write_jsonl(folder / "rows.json"))
    if kind == "json-array":
        (folder / "rows.json").write_text(json.dumps(ROWS), encoding="utf-8")
        return str(folder / "rows.json")
    if kind == "csv":
        lines = ["text,mood", *(f"{r['text']},{r['mood']}" for r in ROWS)]
        (folder / "rows.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return str(folder / "rows.csv")
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), folder / "rows.parquet")
        return str(folder / "rows.parquet")
    if kind == "folder":
        (folder / "parts").mkdir()
        write_jsonl(folder / "parts" / "a.jsonl", ROWS[:2])
        write_jsonl(folder / "parts" / "b.jsonl", ROWS[2:])
        return str(folder / "parts")
    if kind == "glob":
        write_jsonl(folder / "p1.jsonl", ROWS[:1])
        write_jsonl(folder / "p2.jsonl", ROWS[1:])
        return str(folder / "p*.jsonl")
    if kind == "file-url":
        return "file://" + str(write_jsonl(folder / "rows.jsonl"))
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["jsonl", "jsonl-in-.json", "json-array", "csv", "parquet", "folder", "glob", "file-url"]
)
def test_every_local_source_loads_the_same_rows(kind: str, tmp_path: Path) -> None:
    ds = load_rows(cfg(write_source(kind, tmp_path)))
    assert sorted(ds.to_list(), key=lambda r: r["text"]) == sorted(ROWS, key=lambda r: r["text"])


def test_plain_text_source(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("first line\nsecond line\n", encoding="utf-8")
    c = DataConfig.model_validate({"name": "t", "load_dataset_config": {"data_files": str(tmp_path / "notes.txt")}})
    ds = load_rows(c)
    assert ds["text"] == ["first line", "second line"]
    assert format_rows(c, ds) == ["first line", "second line"]


def test_fsspec_memory_filesystem() -> None:
    import fsspec

    with fsspec.open("memory://honed-test/rows.jsonl", "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in ROWS))
    c = cfg("memory://honed-test/rows.jsonl")
    assert load_rows(c).to_list() == ROWS
    assert fingerprint(c) != fingerprint(cfg("memory://honed-test/other.jsonl"))


def test_dataset_folder_as_data_name(tmp_path: Path) -> None:
    """A name that is not a file loader goes through datasets' hub path (here a local dataset repo)."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    write_jsonl(repo / "data" / "train.jsonl")
    c = DataConfig.model_validate({
        "name": "h", "load_dataset_config": {"data_name": str(repo), "split": "train"},
        "pre_process_data_config": {"text_template": TEMPLATE},
    })
    assert load_rows(c).to_list() == ROWS
    first = fingerprint(c)
    write_jsonl(repo / "data" / "train.jsonl", ROWS[:2])
    assert fingerprint(c) != first


def test_uncached_hub_dataset_offline_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    c = DataConfig.model_validate({"name": "h", "load_dataset_config": {"data_name": "honed-nobody/no-such-set"}})
    with pytest.raises(DataError, match="no-such-set"):
        load_rows(c)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("### Text: {phrase}\n### The tone is:\n{tone}", ("### Text: {phrase}\n### The tone is:\n", "tone")),
        ("{a} and {b}!", ("{a} and {b}!", None)),
        ("no fields", ("no fields", None)),
        ("{{literal}} {q} -> {a}", ("{{literal}} {q} -> ", "a")),
        ("{q!r}: {a:>5}", ("{q!r}: ", "a")),
    ],
)
def test_split_template(template: str, expected: tuple[str, str | None]) -> None:
    assert split_template(template) == expected
    prompt, _ = split_template(template)
    if expected[1]:  # the prompt part is still a template that fills the same way
        row = {"phrase": "p", "tone": "t", "q": "x", "a": "y"}
        assert template.format_map(row).startswith(prompt.format_map(row))


def test_answer_split_keeps_a_literal_suffix() -> None:
    t = "<|user|>\n{q}<|end|>\n<|assistant|>\n{a}<|end|>"
    assert answer_split(t) == ("<|user|>\n{q}<|end|>\n<|assistant|>\n", "a", "<|end|>")
    assert split_template(t) == (t, None)


def test_escaped_braces_and_text_cols(tmp_path: Path) -> None:
    f = str(write_jsonl(tmp_path / "r.jsonl"))
    ds = load_rows(cfg(f))
    assert format_rows(cfg(f, text_template="{{x}} {text}"), ds)[0] == "{x} the river was calm at dawn"
    c = DataConfig.model_validate({"name": "c", "load_dataset_config": {"data_files": f},
                                   "pre_process_data_config": {"text_cols": ["mood", "text"]}})
    assert format_rows(c, ds)[1] == "wild\na storm broke over the hills"


def test_template_with_missing_column_lists_columns(tmp_path: Path) -> None:
    from honed.data.formatting import check_columns

    f = str(write_jsonl(tmp_path / "r.jsonl"))
    c = cfg(f, text_template="{text} -> {label}")
    with pytest.raises(DataError, match=r"\['label'\].*columns are \['text', 'mood'\]"):
        check_columns(c, load_rows(c))
    assert template_fields("{a.b} {c[0]} {a}") == ["a", "c"]


def test_user_formatting_function(tmp_path: Path) -> None:
    script = tmp_path / "fmt.py"
    script.write_text("def fmt(row):\n    return ('>> ' + row['text'] + ' = ', row['mood'])\n", encoding="utf-8")
    f = str(write_jsonl(tmp_path / "r.jsonl"))
    c = cfg(f, text_template=None, user_script=str(script), formatting_func="fmt")
    assert format_rows(c, load_rows(c))[0] == ">> the river was calm at dawn = calm"
    bad = cfg(f, text_template=None, user_script=str(script), formatting_func="nope")
    with pytest.raises(DataError, match="no function 'nope'"):
        format_rows(bad, load_rows(bad))


def test_fingerprint_hashes_bytes_not_paths(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl")
    (tmp_path / "sub").mkdir()
    b = write_jsonl(tmp_path / "sub" / "b.jsonl")
    assert fingerprint(cfg(str(a))) == fingerprint(cfg(str(b)))
    assert fingerprint(cfg(str(a))) != fingerprint(cfg(str(a), max_seq_len=64))
    write_jsonl(b, ROWS[:2])
    assert fingerprint(cfg(str(a))) != fingerprint(cfg(str(b)))


# -- errors: each one names the file / line / row and the fix ------------------------------------

def _bad_file(kind: str, folder: Path) -> tuple[str, str]:
    p = folder / "bad.jsonl"
    if kind == "missing":
        p.write_text("", encoding="utf-8")
        target = str(p)
        p.unlink()
        return target, r"not found: .*bad\.jsonl"
    if kind == "empty":
        p.write_text("", encoding="utf-8")
        return str(p), r"bad\.jsonl is empty"
    if kind == "malformed-line":
        p.write_text('{"text": "ok", "mood": "m"}\n{"text": "ok", "mood": "m"}\n{"text": oops}\n', encoding="utf-8")
        return str(p), r"bad\.jsonl, line 3: malformed JSON"
    if kind == "encoding":
        p.write_bytes(b'{"text": "ok", "mood": "m"}\n{"text": "caf\xe9", "mood": "m"}\n')
        return str(p), r"bad\.jsonl, line 2: not UTF-8"
    if kind == "missing-column":
        p.write_text('{"text": "a", "mood": "m"}\n\n{"text": "b", "mood": "m"}\n{"text": "c"}\n', encoding="utf-8")
        return str(p), r"bad\.jsonl, line 4: column 'mood' is missing"
    if kind == "csv-encoding":
        p = folder / "bad.csv"
        p.write_bytes(b"text,mood\nok,m\ncaf\xe9,m\n")
        return str(p), r"bad\.csv, line 3: not UTF-8"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "empty", "malformed-line", "encoding", "missing-column", "csv-encoding"])
def test_bad_files_raise_data_errors_and_cache_nothing(kind: str, tmp_path: Path) -> None:
    from honed.data import build_datasets

    target, pattern = _bad_file(kind, tmp_path)
    c = cfg(str(tmp_path))
    c.load_dataset_config.data_files = target  # assigned unvalidated: the file may be gone by run time
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=pattern) as info:
        build_datasets(c, tokenizer=_NoTokenizer(), cache_dir=cache)
    assert "\n" not in str(info.value)
    left = [p for p in cache.rglob("*") if p.is_file() and p.suffix == ".arrow"] if cache.exists() else []
    assert left == []
    assert not (cache / "tokenized").exists() or not any((cache / "tokenized").iterdir())


class _NoTokenizer:
    """Errors must come before tokenizing; a fingerprint is all the cache key needs."""

    backend_tokenizer = None
    special_tokens_map: dict = {}  # noqa: RUF012
    chat_template = None
    bos_token_id = eos_token_id = pad_token_id = None

    def get_vocab(self) -> dict:
        return {}

    def __len__(self) -> int:
        return 0


def test_missing_file_in_config_is_reported_at_validation(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="file not found"):
        cfg(str(tmp_path / "nope.jsonl"))
