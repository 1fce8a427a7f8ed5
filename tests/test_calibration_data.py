"""Calibration rows go through the data layer like training rows (issue 14): chat templates, col_filters and
the first-text-column default all apply to what GPTQ, static quantization and session tuning read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from honed.data.batches import calibration_texts
from honed.data.config import DataConfig
from honed.errors import DataError


def _rows(tmp_path: Path, rows: list[dict]) -> str:
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(f)


def test_a_chat_template_formats_calibration_rows(tmp_path: Path, tiny_llama: Path) -> None:
    from honed.models.loaders import load_tokenizer_dir

    files = _rows(tmp_path, [{"messages": [{"role": "user", "content": f"hi {i}"}]} for i in range(3)])
    cfg = DataConfig(name="c", load_dataset_config={"data_files": files},
                     pre_process_data_config={"chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
                                                               "{% endfor %}"})
    assert calibration_texts(cfg, 2, load_tokenizer_dir(tiny_llama)) == ["<user>hi 0", "<user>hi 1"]


def test_col_filters_apply_before_the_limit(tmp_path: Path) -> None:
    files = _rows(tmp_path, [{"text": f"row {i}", "lang": "en" if i % 2 else "fr"} for i in range(6)])
    cfg = DataConfig(name="c", load_dataset_config={"data_files": files, "col_filters": {"lang": "en"}})
    assert calibration_texts(cfg, 2) == ["row 1", "row 3"]


def test_the_first_text_column_without_a_template(tmp_path: Path) -> None:
    files = _rows(tmp_path, [{"n": 1, "phrase": "a phrase", "tone": "joy"}])
    cfg = DataConfig(name="c", load_dataset_config={"data_files": files})
    assert calibration_texts(cfg, 5) == ["a phrase"]
    cfg = DataConfig(name="c", load_dataset_config={"data_files": _rows(tmp_path, [{"n": 1}])})
    with pytest.raises(DataError, match="no text column"):
        calibration_texts(cfg, 5)


@pytest.mark.parametrize(("template", "answered"), [
    ("Text: {phrase}\nTone: {tone}", ["joy", "fear"]),  # a prompt field, then the answer
    ("{phrase}", None),  # no prompt/answer split: no answer positions
])
def test_calibration_rows_mark_the_positions_that_predict_the_answer(tmp_path: Path, tiny_llama: Path,
                                                                     template: str, answered: list | None) -> None:
    from honed.data.batches import calibration_rows, calibration_samples
    from honed.models.loaders import load_tokenizer_dir

    tok = load_tokenizer_dir(tiny_llama)
    files = _rows(tmp_path, [{"phrase": "a happy day", "tone": "joy"}, {"phrase": "a dark night", "tone": "fear"}])
    cfg = DataConfig(name="c", load_dataset_config={"data_files": files},
                     pre_process_data_config={"text_template": template})
    rows = calibration_rows(cfg, tok, 5)
    assert [r.ids.tolist() for r in rows] == [s.tolist() for s in calibration_samples(cfg, tok, 5)]
    if answered is None:
        assert all(r.answer is None for r in rows)
        return
    for row, answer in zip(rows, answered, strict=True):
        ids = row.ids[0].tolist()
        assert row.answer.shape == (len(ids),) and not row.answer[-1]  # the last position predicts nothing
        predicted = [ids[i + 1] for i in row.answer.nonzero().flatten().tolist()]
        assert tok.decode(predicted).strip() == answer  # exactly the answer's tokens, nothing of the prompt
