"""The Olive field corpus: workflow files shaped like public Olive configs run on honed unchanged.

tests/fixtures/olive-field/corpus.yaml is the table: one row per file with the public config it mirrors,
its schema generation, the data it reads and the outcome of ``honed run --config FILE --dry-run`` (0, or 2
with one error line naming the unsupported feature and the honed alternative). Each file is copied into a
fresh folder with the tiny model linked as ./tiny-model, its data files written and its user scripts
beside it, and run in-process from that folder (Olive resolves relative paths against the working
directory, so that is where its users run it).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from honed.config.olive import UNSUPPORTED, detect_generation
from tests.helpers import cli

FIELD = Path(__file__).parent / "fixtures" / "olive-field"
CORPUS = yaml.safe_load((FIELD / "corpus.yaml").read_text(encoding="utf-8"))
ROWS: list[dict[str, Any]] = CORPUS["files"]
DEFAULT_MODEL = CORPUS["defaults"]["model"]
WORKFLOW_SUFFIXES = (".json", ".yaml", ".yml")
NOT_WORKFLOWS = {"corpus.yaml", "README.md"}
ROW_KEYS = {"file", "mirrors", "generation", "model", "data", "scripts", "files", "python_env", "outcome", "message",
            "changes"}
MIN_FILES = 30
MIN_SUPPORTED_SHARE = 0.85
"""51 of the 60 files run today (issue 13's target, 0.85). The 9 refused use AzureML or Docker systems,
vendor NPU toolchains, Intel Neural Compressor, AWQ, rotation or per-layer mixed precision, or DoRA adapter
extraction. Raise this as honed gains them, never lower it."""
ROWS_PER_DATA_FILE = 8
TONES = ("joy", "fear", "sadness", "surprise")


def cell(column: str, i: int) -> Any:
    """Row ``i``'s value of ``column``: distinct text, except columns whose values a config filters or scores."""
    if column == "label":
        return i % 2
    if column == "programming_language":
        return ("Python", "Go")[i % 2]
    if column == "tone":
        return TONES[i % len(TONES)]
    return f"{column} number {i}: the quick brown fox jumps over the lazy dog"


def write_data(path: Path, columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ({c: cell(c, i) for c in columns} for i in range(ROWS_PER_DATA_FILE))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def localize(row: dict[str, Any], workdir: Path, model: Path) -> Path:
    """The row's file in ``workdir`` with ./tiny-model, its data files, user scripts and interpreter folder."""
    cfg = workdir / row["file"]
    shutil.copy(FIELD / row["file"], cfg)
    (workdir / "tiny-model").symlink_to(model, target_is_directory=True)
    for rel, columns in (row.get("data") or {}).items():
        write_data(workdir / rel, columns)
    for script in [*(row.get("scripts") or []), *(row.get("files") or [])]:
        shutil.copy(FIELD / script, workdir / script)
    if row.get("python_env"):
        bin_dir = workdir / row["python_env"]
        bin_dir.mkdir(parents=True)
        (bin_dir / "python").symlink_to(sys.executable)
        venv_cfg = Path(sys.prefix) / "pyvenv.cfg"
        if venv_cfg.is_file():  # the linked interpreter finds its venv (site-packages) from here
            shutil.copy(venv_cfg, bin_dir.parent / "pyvenv.cfg")
    return cfg


def load_raw(name: str) -> dict[str, Any]:
    text = (FIELD / name).read_text(encoding="utf-8")
    return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["file"])
def test_dry_run_outcome(row: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest,
                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    model = request.getfixturevalue(row.get("model", DEFAULT_MODEL))
    cfg = localize(row, tmp_path, model)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()  # drop what building the session's tiny model printed
    code = cli("run", "--config", str(cfg), "--dry-run")
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code != 1, f"{row['file']}: internal error (exit 1), never expected:\n{err}"
    assert code == row["outcome"], f"{row['file']}: exit {code}, expected {row['outcome']}:\n{err}"
    if row["outcome"] == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if not line.startswith("warning:")]
        assert errors and all(line.startswith("error:") for line in errors), err
        feature, instead = row["message"]
        naming = [line for line in errors if feature in line]
        assert len(naming) == 1, f"{row['file']}: want one error line naming {feature!r}:\n{err}"
        assert instead in naming[0], f"{row['file']}: the line naming {feature!r} lacks {instead!r}:\n{err}"


def test_table_and_folder_agree() -> None:
    """Every workflow file and user script in the folder is in the table, and every row's files exist."""
    listed = [r["file"] for r in ROWS]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    on_disk = {p.name for p in FIELD.iterdir() if p.suffix in WORKFLOW_SUFFIXES and p.name not in NOT_WORKFLOWS}
    assert on_disk == set(listed)
    scripts = {s for r in ROWS for s in r.get("scripts") or []}
    assert scripts == {p.name for p in FIELD.glob("*.py")}
    others = {f for r in ROWS for f in r.get("files") or []}
    assert others == {p.name for p in FIELD.glob("*.txt")}
    for r in ROWS:
        assert set(r) <= ROW_KEYS, f"{r['file']}: unknown keys {set(r) - ROW_KEYS}"
        assert r["outcome"] in (0, 2) and r["mirrors"].startswith("https://github.com/")
        assert r.get("model", DEFAULT_MODEL) in ("tiny_phi3", "tiny_bert", "tiny_llama")
        assert ("message" in r) == (r["outcome"] == 2), f"{r['file']}: message goes with outcome 2 only"


def test_corpus_is_large_enough() -> None:
    assert len(ROWS) >= MIN_FILES
    assert sum(r["file"].endswith((".yaml", ".yml")) for r in ROWS) >= 3
    assert {r["generation"] for r in ROWS} == {"seed", "legacy", "current"}
    assert sum(bool(r.get("scripts")) and r["outcome"] == 0 for r in ROWS) >= 2


def test_supported_share() -> None:
    supported = sum(r["outcome"] == 0 for r in ROWS)
    share = supported / len(ROWS)
    print(f"olive field corpus: {supported}/{len(ROWS)} files run unchanged ({share:.1%})")
    assert share >= MIN_SUPPORTED_SHARE


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["file"])
def test_generation_is_named_as_in_the_table(row: dict[str, Any]) -> None:
    assert detect_generation(load_raw(row["file"])) == row["generation"]


def test_refusals_are_documented() -> None:
    """Each outcome-2 message pairs an entry of honed's one table of unsupported Olive features
    (src/honed/config/olive_unsupported.yaml) with a word of its alternative, so the error a user sees and
    docs/coming-from-olive.md say the same thing."""
    for r in (r for r in ROWS if r["outcome"] == 2):
        feature, instead = r["message"]
        entries = [u for u in UNSUPPORTED if feature in u["olive"]]
        assert entries, f"{r['file']}: no unsupported entry names {feature!r}"
        assert any(instead in u["instead"] for u in entries), f"{r['file']}: {instead!r} is not the alternative"
    for u in UNSUPPORTED:
        assert u["kind"] in ("pass", "system", "key") and all(u[k] for k in ("olive", "why", "instead")), u
        if u["kind"] != "key":  # every type an entry names is spelled out in its olive text, and refused
            assert u["types"] and all(re.search(rf"\b{re.escape(t)}\b", u["olive"]) for t in u["types"]), u


@pytest.mark.parametrize("kind", sorted({t for u in UNSUPPORTED if u["kind"] == "pass" for t in u["types"]}))
def test_each_unsupported_pass_type_is_refused_with_its_alternative(kind: str, tiny_phi3: Path) -> None:
    from honed.config.load import validate
    from honed.config.olive import UNSUPPORTED_PASSES
    from honed.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        validate({"input_model": {"model_path": str(tiny_phi3)}, "passes": {"p": {"type": kind.lower()}}})
    (problem,) = e.value.problems
    assert problem.key == "passes.p.type" and kind in problem.message
    assert problem.fix == UNSUPPORTED_PASSES[kind][1]
