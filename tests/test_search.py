"""Search: spaces from pass configs, samplers, the Pareto front, and a real search over
LoRA r x ModelBuilder precision x int4_block_size on a tiny Llama."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from honed import run as run_workflow
from honed.config.load import validate
from honed.config.space import SearchSpace, extract_space
from honed.errors import ConfigError
from honed.search.pareto import pareto_front, rank
from honed.search.samplers import make_sampler

ROWS = [("I passed the exam", "joy"), ("lights went out upstairs", "fear"), ("my old dog died", "sadness"),
        ("they threw me a party", "surprise"), ("top marks again", "joy"), ("something moved", "fear")]
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"


def write_rows(path: Path) -> Path:
    path.write_text("\n".join(json.dumps({"phrase": p, "tone": t}) for p, t in ROWS))
    return path


def search_config(model: Path, data: Path, tmp: Path, **strategy: Any) -> dict[str, Any]:
    return {
        "input_model": {"model_path": str(model)},
        "data_configs": [{"name": "d", "load_dataset_config": {"data_files": str(data)},
                          "pre_process_data_config": {"text_template": TEMPLATE, "max_seq_len": 64}}],
        "evaluators": {"ev": {"metrics": [
            {"name": "acc", "type": "accuracy", "data_config": "d",
             "sub_types": [{"name": "accuracy_score", "priority": 1}]},
            {"name": "lat", "type": "latency", "user_config": {"warmup_num": 0, "repeat_test_num": 2},
             "sub_types": [{"name": "avg", "priority": 2}]},
            {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "mb", "priority": 3}]},
        ]}},
        "passes": {
            "lora": {"type": "LoRA", "train_data_config": "d", "r": [2, 4], "alpha": 8,
                     "training_args": {"max_steps": 2, "per_device_train_batch_size": 4}},
            "merge": {"type": "MergeAdapterWeights"},
            "mb": {"type": "ModelBuilder", "precision": ["int4", "int8"], "int4_block_size": [16, 32]},
        },
        "engine": {"evaluator": "ev", "output_dir": str(tmp / "out"), "cache_dir": str(tmp / "cache")},
        "search_strategy": {"sampler": "sequential", **strategy},
    }


@pytest.fixture(scope="module")
def searched(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Any]:
    tmp = tmp_path_factory.mktemp("search")
    cfg = search_config(tiny_llama, write_rows(tmp / "rows.jsonl"), tmp)
    result = run_workflow(validate(cfg))
    return cfg, tmp, result


def test_sequential_search_covers_every_combination(searched: tuple[dict, Path, Any]) -> None:
    _, tmp, result = searched
    trials = result.search["trials"]
    seen = {(t["params"]["passes.lora.r"], t["params"]["passes.mb.precision"], t["params"]["passes.mb.int4_block_size"])
            for t in trials}
    assert seen == set(itertools.product([2, 4], ["int4", "int8"], [16, 32]))
    assert len(trials) == 8 and all(t["metrics"] for t in trials)
    # LoRA trained once per r: the other six trials found it in the cache.
    lora_runs = [t["steps"][0]["cached"] for t in trials]
    assert lora_runs.count(False) == 2
    # int4 weights are smaller than int8 ones, whatever the rank.
    by = {(t["params"]["passes.lora.r"], t["params"]["passes.mb.precision"], t["params"]["passes.mb.int4_block_size"]):
          t["metrics"]["size-mb"] for t in trials}
    assert all(by[(r, "int4", b)] < by[(r, "int8", b)] for r in (2, 4) for b in (16, 32))
    out = tmp / "out"
    fp = json.loads((out / "footprints.json").read_text())
    assert len(fp["search"]["trials"]) == 8 and fp["search"]["chosen"] == result.search["ranking"][0]
    ranks = sorted(int(p.name) for p in out.iterdir() if p.is_dir() and p.name.isdigit())
    assert ranks == list(range(1, len(ranks) + 1)) and ranks
    assert (out / "1" / "genai_config.json").is_file() and (out / "1" / "footprints.json").is_file()
    front = set(result.search["pareto"])
    assert result.search["ranking"][0] in front
    assert (out / "report.html").is_file()
    assert result.evaluation["input"] and result.evaluation["output"]


def test_max_iter_and_cached_rerun(searched: tuple[dict, Path, Any]) -> None:
    cfg, _, _ = searched
    cfg = {**cfg, "search_strategy": {"sampler": "random", "seed": 3, "max_iter": 3}}
    result = run_workflow(validate(cfg))
    trials = result.search["trials"]
    assert len(trials) == 3
    # every pass and every evaluation of these trials is in the cache already
    assert all(s["cached"] for t in trials for s in t["steps"])


def space_of(passes: dict[str, Any]) -> SearchSpace:
    _, space, problems = extract_space(passes)
    assert not problems, problems
    return space


def test_space_from_lists_searchable_values_and_alternatives() -> None:
    space = space_of({
        "lora": {"type": "LoRA", "train_data_config": "d", "r": "SEARCHABLE_VALUES",
                 "target_modules": [["q_proj"], ["q_proj", "v_proj"]]},
        "keep": {"type": "LoRA", "train_data_config": "d", "target_modules": ["q_proj", "v_proj"]},
        "conv": [{"type": "ModelBuilder", "precision": ["int4", "fp32"]}, {"type": "OnnxConversion"}],
    })
    keys = [d.key for d in space.dimensions]
    assert keys == ["passes.lora.r", "passes.lora.target_modules", "passes.conv", "passes.conv[0].precision"]
    assert space.dimensions[0].values == [8, 16, 32, 64]  # LoRA's declared search space
    assert space.size == 4 * 2 * 2 * 2
    # the OnnxConversion alternative ignores the precision choice: 4*2*(2 + 1) distinct configurations
    distinct = {json.dumps(space.active(p), sort_keys=True) for p in space.points()}
    assert len(distinct) == 24
    concrete = space.concrete({"passes.lora.r": 16, "passes.lora.target_modules": ["q_proj"], "passes.conv": 1,
                               "passes.conv[0].precision": "fp32"})
    assert concrete["conv"] == {"type": "OnnxConversion"} and concrete["lora"]["r"] == 16
    assert concrete["keep"]["target_modules"] == ["q_proj", "v_proj"]


@pytest.mark.parametrize(("passes", "message"), [
    ({"mb": {"type": "ModelBuilder", "precision": ["int4", "int3"]}}, "passes.mb.precision[1]"),
    ({"mb": {"type": "ModelBuilder", "int4_accuracy_level": "SEARCHABLE_VALUES"}}, "declares no search values"),
    ({"mb": {"type": "ModelBuilder", "precision": []}}, "passes.mb.precision"),
])
def test_bad_search_values_fail_at_load(tiny_llama: Path, passes: dict, message: str) -> None:
    cfg = {"input_model": {"model_path": str(tiny_llama)}, "passes": passes,
           "evaluators": {"ev": {"metrics": [{"name": "size", "type": "size_on_disk"}]}},
           "engine": {"evaluator": "ev"}, "search_strategy": {}}
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        validate(cfg)


def test_lists_need_search_strategy(tiny_llama: Path) -> None:
    cfg = {"input_model": {"model_path": str(tiny_llama)},
           "passes": {"mb": {"type": "ModelBuilder", "precision": ["int4", "int8"]}}}
    with pytest.raises(ConfigError, match=r"passes\.mb\.precision"):
        validate(cfg)


def _objective(point: dict[str, Any]) -> dict[str, float]:
    """A deterministic stand-in for evaluation: accuracy peaks at r=16, latency grows with r."""
    r, prec = point["passes.lora.r"], point["passes.mb.precision"]
    return {"acc": 1 - abs(r - 16) / 64 - (0.05 if prec == "int4" else 0), "lat": r / 10 + (0 if prec == "int4" else 1)}


def _drive(sampler_name: str, seed: int, n: int) -> list[dict[str, Any]]:
    space = space_of({"lora": {"type": "LoRA", "train_data_config": "d", "r": [4, 8, 16, 32, 64]},
                      "mb": {"type": "ModelBuilder", "precision": ["int4", "int8", "fp32"]}})
    sampler = make_sampler(sampler_name, space, [("acc", True), ("lat", False)], seed)
    out = []
    for _ in range(n):
        p = sampler.ask()
        if p is None:
            break
        sampler.tell(p, _objective(p))
        out.append(p)
    return out


def test_tpe_is_reproducible_with_a_seed() -> None:
    a, b, c = _drive("tpe", 7, 8), _drive("tpe", 7, 8), _drive("tpe", 8, 8)
    assert a == b
    assert a != c
    assert len({json.dumps(p, sort_keys=True) for p in a}) == 8  # never repeats a configuration


@pytest.mark.parametrize("name", ["sequential", "random", "tpe"])
def test_samplers_exhaust_the_space_once(name: str) -> None:
    points = _drive(name, 0, 100)
    assert len(points) == 15
    assert len({json.dumps(p, sort_keys=True) for p in points}) == 15


def test_pareto_front_and_rank_on_a_constructed_example() -> None:
    pts = [
        {"acc": 0.90, "lat": 10.0},  # 0: front (most accurate)
        {"acc": 0.85, "lat": 5.0},   # 1: front
        {"acc": 0.80, "lat": 6.0},   # 2: dominated by 1
        {"acc": 0.70, "lat": 2.0},   # 3: front (fastest)
        {"acc": 0.90, "lat": 12.0},  # 4: dominated by 0 (same acc, slower)
        {"acc": 0.85, "lat": 5.0},   # 5: equal to 1: kept
        None,                        # 6: failed trial
        {"acc": 0.95},               # 7: lacks latency: left out
    ]
    objs = [("acc", True), ("lat", False)]
    assert pareto_front(pts, objs) == [0, 1, 3, 5]
    assert rank(pts, objs)[:5] == [0, 1, 5, 3, 4]
    # a goal-missing front member ranks after a goal-meeting dominated one
    met = [False, True, True, True, True, True, False, False]
    assert rank(pts, objs, met)[:4] == [1, 5, 3, 4]
