"""Every example workflow (found recursively under examples/) validates and plans; each names its command."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for ext in ("json", "yaml", "yml") for p in (ROOT / "examples").rglob(f"*.{ext}")
                  if p.parent.name not in ("data", "deploy"))  # deploy/: cluster manifests, not workflows


def test_examples_exist() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_plans(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)  # data paths resolve beside the config, as for a user elsewhere
    assert cli("run", "--config", str(config), "--dry-run", "--cache-dir", str(tmp_path / "c")) == 0
    assert "plan" in capsys.readouterr().out


@pytest.mark.parametrize("folder", sorted({p.parent for p in EXAMPLES}), ids=lambda p: p.name)
def test_example_shows_its_command_first(folder: Path) -> None:
    first = (folder / "README.md").read_text().splitlines()[0]
    assert first.startswith("`honed ") or first.startswith("`python ")
