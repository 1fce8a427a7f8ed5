"""The one pass registry: complete descriptions, no duplicates, JSON Schema for every pass."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from honed.config.jsonschema import workflow_schema
from honed.passes.base import Pass, PassConfig, all_passes, register_pass
from tests.helpers import cli

PASSES = all_passes()


@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_pass_is_described(name: str) -> None:
    cls = PASSES[name]
    assert cls.name == name and cls.description.strip() and "\n" not in cls.description
    assert issubclass(cls.config_class, PassConfig)
    for field, info in cls.config_class.model_fields.items():
        assert info.description, f"{name}.{field} has no description"


def test_duplicate_names_are_refused() -> None:
    class Impostor(Pass):
        name = "CastDtype"
        description = "x"
        config_class = PassConfig

    with pytest.raises(ValueError, match="already registered"):
        register_pass(Impostor)


def test_schema_accepts_fixtures_and_rejects_typos(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli("config", "schema") == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    good = {"input_model": {"model_path": "m"},
            "passes": {"lora": {"type": "LoRA", "r": 8, "train_data_config": "d"}, "cast": {"type": "CastDtype"}}}
    jsonschema.validate(good, schema)
    bad = {"input_model": {"model_path": "m"}, "passes": {"lora": {"type": "LoRA", "rr": 8, "train_data_config": "d"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    assert set(schema["$defs"]) >= {f"pass_{n}" for n in PASSES}


def test_passes_command_lists_all(capsys: pytest.CaptureFixture) -> None:
    assert cli("passes") == 0
    out = capsys.readouterr().out
    for name in PASSES:
        assert name[:20] in out


def test_schema_function_is_deterministic() -> None:
    assert workflow_schema() == workflow_schema()


def test_entry_point_plugins_are_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party package registers passes through the ``honed.passes`` entry point group."""
    import importlib.metadata

    import honed.passes.base as base

    class PluginConfig(PassConfig):
        pass

    class Plugin(Pass):
        name = "ThirdPartyPass"
        description = "A pass from another package."
        config_class = PluginConfig

    class FakeEntryPoint:
        def load(self) -> type[Pass]:
            return Plugin

    def entry_points(group: str) -> list[FakeEntryPoint]:
        return [FakeEntryPoint()] if group == "honed.passes" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(base, "_LOADED", False)
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    assert base.get_pass("ThirdPartyPass") is Plugin
