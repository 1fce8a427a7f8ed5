"""Olive's three schema generations (tests/fixtures/olive, copied from the seed) run on honed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from honed.config.load import load_workflow
from honed.config.olive import detect_generation
from honed.engine.runner import run_workflow
from tests.helpers import cli

FIXTURES = Path(__file__).parent / "fixtures" / "olive"
LOCAL = sorted(p for p in FIXTURES.glob("*.json") if "azureml" not in p.name)
HUB_ID = "microsoft/Phi-3-mini-4k-instruct"
ROWS = [{"phrase": "I won the race", "tone": "joy"}, {"phrase": "The cellar door creaked", "tone": "fear"}]


def _localize(fixture: Path, workdir: Path, model: Path) -> Path:
    """Copy a fixture into ``workdir`` with its model pointed at a local tiny model and its data written."""
    raw = fixture.read_text().replace(HUB_ID, str(model)).replace("model-cache/microsoft/phi-3-mini", str(model))
    cfg = json.loads(raw)
    data = workdir / "dataset" / "dataset-classification.json"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = workdir / fixture.name
    out.write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("fixture", LOCAL, ids=lambda p: p.stem)
def test_dry_run_exits_0(fixture: Path, tmp_path: Path, tiny_phi3: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _localize(fixture, tmp_path, tiny_phi3)
    assert cli("run", "--config", str(cfg), "--dry-run") == 0
    out = capsys.readouterr().out
    for name in ("lora", "LoRA", "MergeAdapterWeights", "ModelBuilder", '"precision": "int4"'):
        assert name in out


def test_generations_are_detected() -> None:
    found = {p.stem: detect_generation(json.loads(p.read_text())) for p in FIXTURES.glob("*.json")}
    assert found == {"seed-local": "seed", "seed-azureml": "seed", "legacy-params-config": "legacy",
                     "current-flat": "current"}


def test_data_path_found_beside_config(tmp_path: Path, tiny_phi3: Path, monkeypatch) -> None:
    """Olive resolves against the cwd; honed falls back to the config's folder."""
    cfg = _localize(FIXTURES / "seed-local.json", tmp_path / "project", tiny_phi3)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    wf = load_workflow(cfg)
    files = wf.data_configs["dataset_default_train"].load_dataset_config.data_files
    assert files == str((tmp_path / "project" / "dataset" / "dataset-classification.json").resolve())


def _diff(a: Any, b: Any, path: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return set().union(*(_diff(a.get(k), b.get(k), f"{path}.{k}".strip(".")) for k in a.keys() | b.keys()))
    return set() if a == b else {path}


def test_seed_and_legacy_resolve_to_the_same_plan(tmp_path: Path, tiny_phi3: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    plans, wfs = {}, {}
    for name in ("seed-local", "legacy-params-config"):
        wf = load_workflow(_localize(FIXTURES / f"{name}.json", tmp_path, tiny_phi3))
        wfs[name] = wf
        plans[name] = {s.name: s.config for s in run_workflow(wf, dry_run=True).plan}
    seed, legacy = plans["seed-local"], plans["legacy-params-config"]
    # The seed names its passes merge_adapter_weights/builder, the legacy file merge/mb.
    assert seed["merge_adapter_weights"] == legacy["merge"]
    assert seed["builder"] == legacy["mb"]
    # These are the values the two files really set differently; nothing else may differ.
    # (those the legacy file leaves out may resolve to the seed's value by default).
    lora_diff = _diff(seed["lora"], legacy["lora"])
    assert "training_args.max_steps" in lora_diff  # 10 vs 150
    assert lora_diff <= {
        "training_args.num_train_epochs", "training_args.max_steps", "training_args.logging_steps",
        "training_args.eval_steps", "training_args.group_by_length",
    }
    a, b = (wfs[n].config.model_dump(mode="json", exclude={"passes", "engine"}) for n in wfs)
    assert _diff(a, b) == {
        "systems.local_system.accelerators",  # cpu in the seed, gpu + CUDA in the legacy file
        "data_configs",  # template and max_seq_len differ
    }


def test_azureml_config_is_rejected_with_alternatives(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "seed-azureml.json"
    shutil.copy(FIXTURES / "seed-azureml.json", cfg)
    assert cli("run", "--config", str(cfg), "--dry-run") == 2
    err = capsys.readouterr().err
    assert "AzureML" in err and "LocalSystem" in err and "azureml_datastore" in err
    assert "Traceback" not in err


def test_ignored_keys_warn_once_each(tmp_path: Path, tiny_phi3: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    wf = load_workflow(_localize(FIXTURES / "seed-local.json", tmp_path, tiny_phi3))
    keys = [w.split(":")[0] for w in wf.warnings]
    assert "passes.lora.double_quant" in keys and "engine.log_severity_level" in keys
    assert len(keys) == len(set(keys))


def test_migrate_output_runs_as_honed_schema(tmp_path: Path, tiny_phi3: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _localize(FIXTURES / "legacy-params-config.json", tmp_path, tiny_phi3)
    assert cli("config", "migrate", str(cfg)) == 0
    migrated = json.loads(capsys.readouterr().out)
    assert migrated["passes"]["lora"]["r"] == 64 and "config" not in migrated["passes"]["lora"]
    again = tmp_path / "migrated.json"
    again.write_text(json.dumps(migrated))
    wf = load_workflow(again)
    assert wf.generation == "honed" and wf.warnings == []
    first = {s.name: s.config for s in run_workflow(load_workflow(cfg), dry_run=True).plan}
    second = {s.name: s.config for s in run_workflow(wf, dry_run=True).plan}
    assert first == second
