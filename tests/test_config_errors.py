"""Broken configs: each exits 2 with one line naming the key path and a fix, and no traceback."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import cli


def base_config(model: Path, data: Path) -> dict[str, Any]:
    return {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "systems": {"local": {"type": "LocalSystem", "accelerators": [{"device": "cpu"}]}},
        "data_configs": [{
            "name": "train",
            "load_dataset_config": {"data_name": "json", "data_files": str(data)},
            "pre_process_data_config": {"text_template": "{phrase} -> {tone}", "max_seq_len": 64},
        }],
        "passes": {
            "lora": {"type": "LoRA", "r": 8, "train_data_config": "train", "training_args": {"max_steps": 2}},
            "mb": {"type": "ModelBuilder", "precision": "int4"},
        },
        "engine": {"host": "local", "target": "local", "cache_dir": "cache", "output_dir": "out"},
    }


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(cfg: dict) -> None:
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    return edit


def _del(path: str) -> Callable[[dict], None]:
    def edit(cfg: dict) -> None:
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        del node[last]
    return edit


def _rename(path: str, new: str) -> Callable[[dict], None]:
    def edit(cfg: dict) -> None:
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[new] = node.pop(last)
    return edit


# (id, edit, substrings the one error line must contain)
CASES: list[tuple[str, Callable[[dict], None], list[str]]] = [
    ("misspelled-training-arg", _rename("passes.lora.training_args.max_steps", "max_stpes"),
     ["passes.lora.training_args.max_stpes", "did you mean 'max_steps'"]),
    ("negative-max-steps", _set("passes.lora.training_args.max_steps", -5), ["passes.lora.training_args.max_steps"]),
    ("wrong-type-r", _set("passes.lora.r", "sixteen"), ["passes.lora.r", "integer"]),
    ("unknown-pass-type", _set("passes.lora.type", "LoRa"), ["passes.lora.type", "did you mean 'LoRA'"]),
    ("pass-without-type", _del("passes.mb.type"), ["passes.mb.type"]),
    ("misspelled-pass-key", _rename("passes.lora.r", "rr"), ["passes.lora.rr", "did you mean 'r'"]),
    ("dangling-data-ref", _set("passes.lora.train_data_config", "trian"),
     ["passes.lora.train_data_config", "no data config named 'trian'", "did you mean 'train'"]),
    ("missing-data-file", _set("data_configs.0.load_dataset_config.data_files", "nope/missing.jsonl"),
     ["data_configs[0].load_dataset_config.data_files", "file not found"]),
    ("missing-model", _set("input_model.model_path", "./no/such/model"), ["input_model.model_path", "not found"]),
    ("missing-input-model", _del("input_model"), ["input_model", "missing"]),
    ("misspelled-top-level", _rename("passes", "pases"), ["pases", "did you mean 'passes'"]),
    ("misspelled-engine-key", _rename("engine.cache_dir", "cache_dri"), ["engine.cache_dri", "did you mean 'cache_dir'"]),
    ("unknown-host", _set("engine.host", "gpu_box"), ["engine.host", "no system named 'gpu_box'"]),
    ("bad-device", _set("systems.local.accelerators", [{"device": "tpu"}]),
     ["systems.local.accelerators[0].device"]),
    ("bad-strategy", _set("data_configs.0.pre_process_data_config.strategy", "zigzag"),
     ["data_configs[0].pre_process_data_config.strategy"]),
    ("zero-seq-len", _set("data_configs.0.pre_process_data_config.max_seq_len", 0),
     ["data_configs[0].pre_process_data_config.max_seq_len", "greater than 0"]),
    ("bad-precision", _set("passes.mb.precision", "int3"), ["passes.mb.precision"]),
    ("mixed-precision-with-default-rtn", lambda c: c["passes"]["mb"].update(
        int4_algo_config="default", matmul_mixed_precision="last_matmul:int8"), ["passes.mb", "'rtn' or 'k_quant'"]),
    ("duplicate-data-names", _set("data_configs", [
        {"name": "train", "load_dataset_config": {"data_name": "json"}},
        {"name": "train", "load_dataset_config": {"data_name": "json"}}]), ["data_configs", "unique"]),
    ("unknown-evaluator", _set("engine.evaluator", "acc"), ["engine.evaluator", "no evaluator named 'acc'"]),
    ("passes-not-mapping", _set("passes", ["lora"]), ["passes", "mapping"]),
    ("uncached-hub-model", _set("input_model.model_path", "someorg/not-downloaded"),
     ["someorg/not-downloaded", "HF_HUB_OFFLINE"]),
    ("missing-package", _set("input_model.model_path", "pkg://no_such_pkg_xyz/model.gguf"),
     ["no_such_pkg_xyz", "pip install"]),
    ("gpu-without-cuda", _set("systems.local.accelerators", [{"device": "gpu"}]), ["engine.host", "gpu"]),
]


@pytest.fixture
def project(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "rows.jsonl"
    data.write_text('{"phrase": "a", "tone": "joy"}\n')
    return tmp_path, base_config(tiny_llama, data)


def _run(cfg_file: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, list[str]]:
    code = cli("run", "--config", str(cfg_file), *extra)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in err
    return code, lines


def test_base_config_is_valid(project: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    tmp, cfg = project
    f = tmp / "ok.json"
    f.write_text(json.dumps(cfg))
    assert cli("run", "--config", str(f), "--dry-run") == 0


@pytest.mark.parametrize(("edit", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_config(project: tuple[Path, dict], capsys: pytest.CaptureFixture, edit, expected) -> None:
    tmp, cfg = project
    cfg = copy.deepcopy(cfg)
    edit(cfg)
    f = tmp / "broken.json"
    f.write_text(json.dumps(cfg))
    # A GPU that isn't there is found when running, not when planning.
    code, lines = _run(f, capsys, *([] if "gpu" in json.dumps(cfg["systems"]) else ["--dry-run"]))
    assert code == 2
    assert len(lines) == 1, lines
    for text in expected:
        assert text in lines[0], (text, lines[0])


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("trailing-comma.json", '{"input_model": {"model_path": "x"},}', ["line 1", "invalid JSON"]),
    ("bad.yaml", "input_model:\n  model_path: [unclosed\n", ["invalid YAML", "line"]),
    ("list.json", "[1, 2]", ["must be a mapping"]),
    ("latin1.json", None, ["UTF-8"]),
])
def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture, name: str, text: str | None,
                         expected: list[str]) -> None:
    f = tmp_path / name
    if text is None:
        f.write_bytes('{"input_model": {"model_path": "caf\xe9"}}'.encode("latin-1"))
    else:
        f.write_text(text)
    code, lines = _run(f, capsys, "--dry-run")
    assert code == 2 and len(lines) == 1
    assert str(f) in lines[0]
    for t in expected:
        assert t in lines[0]


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, lines = _run(tmp_path / "nope.json", capsys, "--dry-run")
    assert code == 2 and "config file not found" in lines[0]


def test_problems_are_collected(project: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    tmp, cfg = project
    cfg["passes"]["lora"]["r"] = "x"
    cfg["passes"]["mb"]["precision"] = "int3"
    cfg["engine"]["cache_dri"] = "c"
    f = tmp / "three.json"
    f.write_text(json.dumps(cfg))
    code, lines = _run(f, capsys, "--dry-run")
    assert code == 2
    assert len(lines) == 3
    assert {k for ln in lines for k in ("passes.lora.r", "passes.mb.precision", "engine.cache_dri") if k in ln} == {
        "passes.lora.r", "passes.mb.precision", "engine.cache_dri"}


def test_debug_shows_traceback(project: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    tmp, cfg = project
    cfg["passes"]["lora"]["r"] = "x"
    f = tmp / "dbg.json"
    f.write_text(json.dumps(cfg))
    assert cli("run", "--config", str(f), "--dry-run", "--log-level", "debug") == 2
    assert "Traceback" in capsys.readouterr().err
