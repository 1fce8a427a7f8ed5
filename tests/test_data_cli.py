"""``honed data preview`` on an Olive-style workflow (the seed's shape) with rows written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from honed.cli.main import main

ROWS = (
    [{"phrase": f"plain sentence number {i}", "tone": "joy"} for i in range(6)]
    + [{"phrase": f"a darker sentence {i}", "tone": "fear"} for i in range(3)]
    + [{"phrase": "plain sentence number 0", "tone": "joy"}]  # one duplicate row
)


@pytest.fixture(autouse=True)
def _own_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets' arrow copies of the test files go to the test's folder, not ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


def workflow(folder: Path, data_lines: str | None = None) -> Path:
    (folder / "dataset").mkdir()
    text = data_lines if data_lines is not None else "".join(json.dumps(r) + "\n" for r in ROWS)
    (folder / "dataset" / "dataset-classification.json").write_text(text, encoding="utf-8")
    wf = {
        "input_model": {"type": "PyTorchModel", "config": {"hf_config": {"model_name": "nowhere/model"}}},
        "data_configs": [{
            "name": "train",
            "type": "HuggingfaceContainer",
            "load_dataset_config": {"params": {"data_name": "json", "split": "train",
                                               "data_files": "dataset/dataset-classification.json"}},
            "pre_process_data_config": {"params": {
                "dataset_type": "corpus", "text_cols": ["phrase", "tone"],
                "text_template": "### Text: {phrase}\n### The tone is:\n{tone}",
                "corpus_strategy": "join", "source_max_len": 64}},
        }],
        "passes": {},
        "engine": {"cache_dir": "cache", "output_dir": "out"},
    }
    path = folder / "workflow.json"
    path.write_text(json.dumps(wf), encoding="utf-8")
    return path


def test_preview_prints_counts(tmp_path: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = workflow(tmp_path)
    code = main(["data", "preview", "--config", str(path), "--data", "train", "-n", "2", "--eval-size", "0.25",
                 "--tokenizer", str(tiny_llama), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    s = json.loads(out[out.index("{"):])
    assert s["rows"] == 10 and s["duplicate_rows"] == 1 and s["labels"] == {"joy": 7, "fear": 3}
    assert len(s["samples"]) == 2 and s["samples"][0]["answer"] == "joy"
    assert s["samples"][0]["label_tokens"] >= 2  # the answer and EOS
    p = s["packing"]
    assert p["duplicates_dropped"] == 1 and p["train_rows"] + p["eval_rows"] == 9 and p["eval_rows"] == 2
    assert p["train_sequences"] == -(-p["train_tokens"] // 64)  # join makes ceil(tokens / 64) blocks

    code = main(["data", "preview", "--config", str(path), "--data", "train", "--tokenizer", str(tiny_llama)])
    text = capsys.readouterr().out
    assert code == 0
    for needle in ("10 rows", "1 duplicate rows", "blocks", "label distribution", "joy", "70.0%"):
        assert needle in text


def test_preview_without_a_tokenizer_still_shows_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["data", "preview", "--config", str(workflow(tmp_path)), "--data", "train", "--json"])
    out = capsys.readouterr().out
    s = json.loads(out[out.index("{"):])
    assert code == 0 and "tokens" not in s and s["tokenizer"].startswith("none")


@pytest.mark.parametrize(
    ("lines", "args", "message"),
    [
        ('{"phrase": "a", "tone": "joy"}\n{"phrase": "b" "tone": "joy"}\n', [], "line 2: malformed JSON"),
        ("", [], "is empty"),
        ('{"phrase": "a", "tone": "joy"}\n', ["--data", "nope"], "no data config named 'nope'"),
    ],
)
def test_preview_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: str, args: list[str],
                               message: str) -> None:
    path = workflow(tmp_path, lines)
    code = main(["data", "preview", "--config", str(path), *(args or ["--data", "train"])])
    assert code == 2
    assert message in capsys.readouterr().err.replace("\n", "")
