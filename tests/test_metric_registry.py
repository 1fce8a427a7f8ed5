"""The metric registry (honed.evaluate.metrics): every metric is one definition, and the schema, the JSON Schema,
``honed evaluate`` and the docs follow from it."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from honed.cli.cmd_evaluate import metric_sub_types, result_units
from honed.config.jsonschema import workflow_schema
from honed.config.load import validate
from honed.errors import ConfigError
from honed.evaluate.config import EvaluatorConfig
from honed.evaluate.evaluator import evaluate_model
from honed.evaluate.metrics import (
    MetricDef,
    SubType,
    all_metrics,
    get_metric,
    register_metric,
    unit_of,
    unregister_metric,
)
from honed.models.handle import ModelHandle

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ["accuracy", "perplexity", "latency", "throughput", "size_on_disk", "memory", "custom", "fidelity"]


def _metric(mtype: str, sub: str | None = None) -> dict[str, Any]:
    """A metric config of ``mtype`` that its own checks accept (data for scoring, a script for custom)."""
    m: dict[str, Any] = {"name": "m", "type": mtype, "data_config": "d"}
    if sub is not None:
        m["sub_types"] = [{"name": sub}]
    if get_metric(mtype).open_sub_types:  # type: ignore[union-attr]
        m["sub_types"] = [{"name": sub or "x", "higher_is_better": True}]
        m["user_config"] = {"user_script": __file__, "evaluate_func": "f"}
    return m


def test_the_builtin_metrics_are_registered() -> None:
    assert list(all_metrics()) == BUILTIN


@pytest.mark.parametrize(("mtype", "sub"), [(n, s) for n, d in all_metrics().items()
                                            for st in d.sub_types for s in (st.name, *st.aliases)])
def test_every_sub_type_validates_with_its_direction_and_unit(mtype: str, sub: str) -> None:
    defn = get_metric(mtype)
    assert defn is not None
    sub_def = defn.sub_type(sub)
    assert sub_def is not None and isinstance(sub_def.higher_is_better, bool)
    assert unit_of(mtype, sub) == sub_def.unit and sub_def.unit.strip()
    cfg = EvaluatorConfig.model_validate({"metrics": [_metric(mtype, sub)]})
    assert cfg.directions() == {f"m-{sub}": sub_def.higher_is_better}
    assert result_units(cfg) == {f"m-{sub}": sub_def.unit}


@pytest.mark.parametrize("mtype", BUILTIN)
def test_every_metric_validates_with_its_defaults(mtype: str) -> None:
    cfg = EvaluatorConfig.model_validate({"metrics": [_metric(mtype)]})
    defn = get_metric(mtype)
    assert defn is not None
    expected = ["x"] if defn.open_sub_types else list(defn.defaults())
    assert [s.name for s in cfg.metrics[0].sub_types] == expected and expected


def test_a_units_are_stated_as_measured() -> None:
    assert {s.unit for s in get_metric("latency").sub_types} == {"ms"}  # type: ignore[union-attr]
    assert unit_of("throughput", "avg") == "samples/s" and unit_of("throughput", "tokens_per_s") == "tokens/s"
    assert unit_of("size_on_disk", "mb") == "MiB" and unit_of("size_on_disk", "bytes") == "bytes"
    assert unit_of("memory", "peak_rss_mb") == "MiB"
    assert unit_of("custom", "x") is None and unit_of("nope", "avg") is None


def test_a_second_metric_under_a_taken_name_is_refused() -> None:
    before = get_metric("latency")
    dup = MetricDef(name="latency", description="again", compute=lambda s, m: {},
                    sub_types=(SubType("avg", False, "s", default=True),))
    with pytest.raises(ValueError, match=r"'latency' is already registered by honed\.evaluate\.evaluator"):
        register_metric(dup)
    assert get_metric("latency") is before
    register_metric(before)  # the same definition again is no second metric


def test_a_definition_without_units_or_defaults_is_refused() -> None:
    with pytest.raises(ValueError, match="need a unit"):
        register_metric(MetricDef(name="unitless_test", description="", compute=lambda s, m: {},
                                  sub_types=(SubType("a", True, " ", default=True),)))
    with pytest.raises(ValueError, match="default=True"):
        register_metric(MetricDef(name="nodefault_test", description="", compute=lambda s, m: {},
                                  sub_types=(SubType("a", True, "J"),)))
    assert get_metric("unitless_test") is None and get_metric("nodefault_test") is None


# ---- a metric added by one definition ------------------------------------------------------------------

def _energy(session: Any, metric: Any) -> dict[str, float]:
    return {"joules_per_token": 0.25, "watts": 30.0}


ENERGY = MetricDef(
    name="energy_test", description="Energy of generation (a test metric).", compute=_energy,
    sub_types=(SubType("joules_per_token", False, "J/token", "energy per new token", default=True,
                       aliases=("jpt",)),
               SubType("watts", False, "W", "mean power", priority=2)),
)


@pytest.fixture
def energy() -> Iterator[MetricDef]:
    register_metric(ENERGY)
    try:
        yield ENERGY
    finally:
        unregister_metric(ENERGY.name)


def test_a_registered_metric_is_usable_everywhere(energy: MetricDef, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    raw = {"input_model": {"model_path": str(tmp_path / "m")},
           "evaluators": {"e": {"metrics": [{"name": "en", "type": "energy_test",
                                             "sub_types": [{"name": "jpt"}, {"name": "watts"}]}]}},
           "engine": {"evaluator": "e"}}
    cfg = validate(raw, tmp_path / "workflow.json").config.evaluators["e"]
    assert cfg.directions() == {"en-jpt": False, "en-watts": False}
    assert cfg.objectives() == [("en-watts", False, 2)]  # the sub type's default priority
    assert result_units(cfg) == {"en-jpt": "J/token", "en-watts": "W"}
    assert evaluate_model(ModelHandle(kind="hf", path=str(tmp_path / "m")), cfg) == {"en-jpt": 0.25, "en-watts": 30.0}

    schema = workflow_schema()
    metric = schema["$defs"]["MetricConfig"]
    assert "energy_test" in metric["properties"]["type"]["enum"]
    rule = next(r for r in metric["allOf"] if r["if"]["properties"]["type"]["const"] == "energy_test")
    names = rule["then"]["properties"]["sub_types"]["items"]["properties"]["name"]["oneOf"]
    assert [n["const"] for n in names] == ["joules_per_token", "jpt", "watts"]
    assert "J/token" in names[0]["description"] and "lower is better" in names[0]["description"]

    assert metric_sub_types()["energy_test"] == ("joules_per_token",)  # honed evaluate --metrics
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec and spec.loader
    gen_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_docs)
    docs = "\n".join(gen_docs.metrics_section())
    assert "### energy_test" in docs and "| **`joules_per_token`** | J/token | lower is better | -1 | `jpt` |" in docs


def test_an_unregistered_metric_is_gone(energy: MetricDef) -> None:
    unregister_metric(energy.name)
    with pytest.raises(ValueError, match="unknown metric type 'energy_test'"):
        EvaluatorConfig.model_validate({"metrics": [{"name": "en", "type": "energy_test"}]})
    assert "energy_test" not in workflow_schema()["$defs"]["MetricConfig"]["properties"]["type"]["enum"]


# ---- errors -----------------------------------------------------------------------------------------------

def _problems(tmp_path: Path, metric: dict[str, Any]) -> str:
    (tmp_path / "m").mkdir(exist_ok=True)
    raw = {"input_model": {"model_path": str(tmp_path / "m")}, "evaluators": {"e": {"metrics": [metric]}}}
    with pytest.raises(ConfigError) as err:
        validate(raw, tmp_path / "workflow.json")
    return str(err.value)


def test_an_unknown_sub_type_is_one_line_naming_the_valid_ones(tmp_path: Path) -> None:
    text = _problems(tmp_path, {"name": "lat", "type": "latency", "sub_types": [{"name": "avrg"}]})
    assert "\n" not in text.strip()
    assert "unknown latency sub type 'avrg'; did you mean 'avg'?" in text
    assert "use one of avg, max, min, p50, p75, p90, p95, p99, p999" in text


def test_an_unknown_metric_type_is_one_line_with_a_suggestion(tmp_path: Path) -> None:
    text = _problems(tmp_path, {"name": "lat", "type": "latncy"})
    assert "\n" not in text.strip()
    assert "unknown metric type 'latncy'; did you mean 'latency'? use one of " + ", ".join(BUILTIN) in text
