"""Data errors say what is really wrong: truncated Parquet, UTF-16 text, no rows, a URL's missing
filesystem package; and folders contribute their data files only (README, LICENSE, dotfiles skipped)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from honed.cli.main import main
from honed.data import DataConfig, load_rows
from honed.errors import DataError

ROWS = [{"text": "the river was calm", "mood": "calm"}, {"text": "a storm broke", "mood": "wild"}]
JSONL = "".join(json.dumps(r) + "\n" for r in ROWS)
# Words of the old, misleading messages: none may appear in a new one.
MISLEADING = ("latin1", "not UTF-8 (byte", "corresponds to no data", "s3fs")


@pytest.fixture(autouse=True)
def _own_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


def cfg(files: str) -> DataConfig:
    return DataConfig.model_validate({"name": "d", "load_dataset_config": {"data_files": files}})


def _parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("text", pa.string()), ("mood", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def truncated_parquet(d: Path) -> Path:
    _parquet(d / "full.parquet", ROWS * 50)
    raw = (d / "full.parquet").read_bytes()
    (d / "rows.parquet").write_bytes(raw[: len(raw) // 2])
    return d / "rows.parquet"


def empty_parquet(d: Path) -> Path:
    _parquet(d / "rows.parquet", [])
    return d / "rows.parquet"


def write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name

    return make


ERRORS = {
    "truncated-parquet": (truncated_parquet, r"rows\.parquet: not a valid Parquet file \(truncated\?\)"),
    "utf16-jsonl-bom": (write("rows.jsonl", JSONL.encode("utf-16")), r"rows\.jsonl: UTF-16 text, not UTF-8; re-save"),
    "utf16-csv-bom": (write("rows.csv", "text,mood\na,b\n".encode("utf-16")), r"rows\.csv: UTF-16 text"),
    "utf16le-txt-no-bom": (write("rows.txt", "one line\nanother\n".encode("utf-16-le")), r"rows\.txt: UTF-16 text"),
    "empty-json-array": (write("rows.json", b"[]"), r"rows\.json holds no rows"),
    "header-only-csv": (write("rows.csv", b"text,mood\n"), r"rows\.csv holds no rows"),
    "empty-parquet": (empty_parquet, r"rows\.parquet holds no rows"),
    "blank-lines-jsonl": (write("rows.jsonl", b"\n\n  \n"), r"rows\.jsonl holds no rows"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_data_error_says_what_is_wrong(case: str, tmp_path: Path) -> None:
    make, pattern = ERRORS[case]
    path = make(tmp_path)
    with pytest.raises(DataError, match=pattern) as info:
        load_rows(cfg(str(path)))
    message = str(info.value)
    assert "\n" not in message
    assert not [w for w in MISLEADING if w in message], message


@pytest.mark.parametrize("case", ["truncated-parquet", "utf16-jsonl-bom", "empty-json-array"])
def test_data_error_exits_2_with_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make, pattern = ERRORS[case]
    path = make(tmp_path)
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"input_model": {"model_path": str(tmp_path)},
                              "data_configs": [{"name": "d", "load_dataset_config": {"data_files": str(path)}}],
                              "passes": {}}))
    assert main(["data", "preview", "--config", str(wf), "--data", "d"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert pytest.importorskip("re").search(pattern, err[0]), err


# ----------------------------------------------------------------------------- folders and globs


def _folder_with_docs(d: Path) -> Path:
    folder = d / "data"
    (folder / ".git").mkdir(parents=True)
    (folder / "part-1.jsonl").write_text(JSONL[: JSONL.index("\n") + 1])
    (folder / "part-2.jsonl").write_text(JSONL[JSONL.index("\n") + 1:])
    (folder / "README.md").write_text("# my rows\n")
    (folder / "README.txt").write_text("rows for the demo\n")  # .txt: a data extension, but a README
    (folder / "LICENSE").write_text("MIT\n")
    (folder / ".DS_Store").write_bytes(b"\0\1\2")
    (folder / ".hidden.jsonl").write_text("not json\n")
    (folder / ".git" / "x.jsonl").write_text("not json\n")
    return folder


@pytest.mark.parametrize("pattern", ["{folder}", "{folder}/*", "{folder}/**/*"])
def test_folder_or_glob_reads_data_files_and_names_what_it_skipped(
    pattern: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _folder_with_docs(tmp_path)
    with caplog.at_level(logging.INFO, logger="honed"):
        ds = load_rows(cfg(pattern.format(folder=folder)))
    assert sorted(r["text"] for r in ds.to_list()) == sorted(r["text"] for r in ROWS)
    note = next(r.getMessage() for r in caplog.records if "ignored" in r.getMessage())
    shown = ("README.md", "README.txt", "LICENSE") + ((".DS_Store",) if pattern == "{folder}" else ())  # * skips dotfiles
    for name in shown:
        assert name in note, note


def test_folder_mixing_formats_names_them(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text(JSONL)
    (tmp_path / "d" / "notes.txt").write_text("free text\n")
    with pytest.raises(DataError, match=r"mixes formats: json \(a\.jsonl\), text \(notes\.txt\)"):
        load_rows(cfg(str(tmp_path / "d")))


# ----------------------------------------------------------------------------- URLs


def test_http_url_without_aiohttp_names_aiohttp(monkeypatch: pytest.MonkeyPatch) -> None:
    """fsspec's http filesystem needs aiohttp; an http URL never needs s3fs."""
    import fsspec  # noqa: F401  (loads fsspec.registry, which the package's `registry` attribute hides)

    registry = sys.modules["fsspec.registry"]
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # `import aiohttp` raises ImportError
    monkeypatch.setitem(sys.modules, "fsspec.implementations.http", None)
    monkeypatch.setattr(registry, "_registry", {k: v for k, v in registry._registry.items()
                                                if k not in ("http", "https")})
    with pytest.raises(DataError, match=r"https://example\.org/rows\.jsonl: .*; pip install aiohttp$") as info:
        load_rows(cfg("https://example.org/rows.jsonl"))
    assert "s3fs" not in str(info.value)
