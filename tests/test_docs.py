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


# ---- docs/coming-from-olive.md and the field corpus README, generated from the Olive field corpus -----------

def test_coming_from_olive_is_up_to_date() -> None:
    current = (ROOT / "docs" / "coming-from-olive.md").read_text(encoding="utf-8")
    expected = gen_docs.render_coming_from_olive(gen_docs.load_corpus(ROOT))
    assert current == expected, "docs/coming-from-olive.md is stale; run: python scripts/gen_docs.py"


def test_field_corpus_readme_is_up_to_date() -> None:
    current = (ROOT / "tests" / "fixtures" / "olive-field" / "README.md").read_text(encoding="utf-8")
    expected = gen_docs.render_field_readme(gen_docs.load_corpus(ROOT))
    assert current == expected, "tests/fixtures/olive-field/README.md is stale; run: python scripts/gen_docs.py"


def test_coming_from_olive_lists_every_unsupported_feature() -> None:
    corpus = gen_docs.load_corpus(ROOT)
    text = gen_docs.render_coming_from_olive(corpus)
    table = text.split("## What honed does not run", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    from honed.config.olive import UNSUPPORTED

    assert len(rows) == len(UNSUPPORTED)
    for u, row in zip(UNSUPPORTED, rows, strict=True):
        assert row.startswith(f"| `{u['olive']}` |") and u["why"] in row and u["instead"] in row
    supported = sum(r["outcome"] == 0 for r in corpus["files"])
    assert f"{supported} of them" in text and f"holds {len(corpus['files'])} files" in text
    readme = gen_docs.render_field_readme(corpus)
    assert all(f"| `{r['file']}` |" in readme for r in corpus["files"])


def test_check_mode_detects_a_stale_olive_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    field = tmp_path / "tests" / "fixtures" / "olive-field"
    field.mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    corpus_text = (ROOT / "tests" / "fixtures" / "olive-field" / "corpus.yaml").read_text(encoding="utf-8")
    (field / "corpus.yaml").write_text(corpus_text, encoding="utf-8")
    monkeypatch.setattr(gen_docs, "ROOT", tmp_path)
    monkeypatch.setattr(gen_docs, "OUT", tmp_path / "docs" / "config-reference.md")
    assert gen_docs.main([]) == 0
    assert gen_docs.main(["--check"]) == 0
    page = tmp_path / "docs" / "coming-from-olive.md"
    page.write_text(page.read_text(encoding="utf-8").replace("Docker", "Dokcer"), encoding="utf-8")
    assert gen_docs.main(["--check"]) == 1
    assert gen_docs.main([]) == 0
    assert "Dokcer" not in page.read_text(encoding="utf-8")
    edited = corpus_text.replace("examples/bert/bert_ptq_cpu.json", "examples/bert/bert_ptq_cpu_v2.json", 1)
    assert edited != corpus_text
    (field / "corpus.yaml").write_text(edited, encoding="utf-8")
    assert gen_docs.main(["--check"]) == 1  # an edited corpus makes its README stale
