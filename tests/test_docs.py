"""docs/config-reference.md is generated from the code; it must be regenerated when the code changes."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_docs = _gen_docs()


def test_reference_is_up_to_date() -> None:
    current = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert current == gen_docs.render(), "docs/config-reference.md is stale; run: python scripts/gen_docs.py"


def test_every_pass_and_parameter_is_documented() -> None:
    text = gen_docs.render()
    passes = gen_docs.builtin_passes()
    assert {"LoRA", "QLoRA", "DoRA", "MergeAdapterWeights", "ModelBuilder", "OnnxConversion"} <= set(passes)
    for name, cls in passes.items():
        section = text.split(f"\n### {name}\n", 1)[1].split("\n### ", 1)[0]
        assert cls.description in section
        for field in cls.config_class.model_fields:
            row = next((line for line in section.splitlines() if line.startswith(f"| `{field}` |")), None)
            assert row is not None, f"{name}.{field} missing"
            assert len(row.split(" | ")) == 5  # parameter, type, default, search space, description


def test_search_space_and_defaults_are_shown() -> None:
    text = gen_docs.render()
    lora = text.split("\n### LoRA\n", 1)[1].split("\n### ", 1)[0]
    assert re.search(r"^\| `r` \| integer \(> 0, ≤ 65536\) \| 64 \| \[8, 16, 32, 64\] \|", lora, re.M)
    assert re.search(r"^\| `train_data_config` \| string \| \*\*required\*\* \| - \|", lora, re.M)
    # Nested models (training_args) get their own table once.
    assert text.count("\n#### TrainingArgs\n") == 1
    assert "| `max_steps` | integer (≤ 1000000000) | -1 |" in text


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (int, "integer"),
        (str | None, "string \\| null"),
        (list[str], "list[string]"),
        (dict[str, int], "dict[string, integer]"),
    ],
)
def test_type_names(annotation: object, expected: str) -> None:
    assert gen_docs.type_name(annotation) == expected


def test_check_mode_detects_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "ref.md"
    stale.write_text("old\n")
    monkeypatch.setattr(gen_docs, "OUT", stale)
    monkeypatch.setattr(gen_docs, "ROOT", tmp_path)
    assert gen_docs.main(["--check"]) == 1
    assert gen_docs.main([]) == 0
    assert gen_docs.main(["--check"]) == 0
