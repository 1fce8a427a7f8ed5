"""The one key function (``honed.util.hashing.cache_key``) as each cache uses it: pass outputs, evaluations and
tokenized data. For every term of every key, changing that term's input changes the key; moving a file or
editing code the step does not import keeps it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from honed.data.config import DataConfig
from honed.evaluate.config import EvaluatorConfig
from honed.passes.base import get_pass
from honed.util.accelerator import Accelerator
from honed.util.hashing import PACKAGE_ROOT, code_fingerprint

# ----------------------------------------------------------------------------- code fingerprints


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pkg") / "honed"
    shutil.copytree(PACKAGE_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.mark.parametrize(("module", "edited", "changes"), [
    ("honed.passes.lora", "training/loop.py", True),          # the loop the pass runs
    ("honed.passes.lora", "data/packing.py", True),           # the data it trains on
    ("honed.passes.lora", "config/olive.py", False),          # the layers above it: not the pass's code
    ("honed.passes.lora", "engine/runner.py", False),
    ("honed.passes.lora", "passes/model_builder.py", False),  # another pass
    ("honed.evaluate.evaluator", "data/formatting.py", True),  # the template and label code
    ("honed.evaluate.evaluator", "models/onnx_runtime.py", True),
    ("honed.evaluate.evaluator", "search/runner.py", False),
    ("honed.data.build", "data/packing.py", True),
    ("honed.data.build", "passes/lora.py", False),
])
def test_code_fingerprint_covers_what_the_module_imports(package_copy: Path, module: str, edited: str,
                                                        changes: bool) -> None:
    before = code_fingerprint(module, package_copy)
    f = package_copy / edited
    original = f.read_text()
    try:
        f.write_text(original + "\n# edited\n")
        code_fingerprint.cache_clear()
        assert (code_fingerprint(module, package_copy) != before) is changes
    finally:
        f.write_text(original)
        code_fingerprint.cache_clear()


# ----------------------------------------------------------------------------- pass keys


def _rows(folder: Path, text: str = "a") -> DataConfig:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text(f'{{"phrase": "{text}", "tone": "joy"}}\n')
    return DataConfig(name="d", load_dataset_config={"data_files": str(folder / "rows.jsonl")},
                      pre_process_data_config={"text_template": "{phrase} {tone}"})


def _pass_key(tmp_path: Path, **change: Any) -> str:
    from honed.engine.keys import pass_key

    lora = get_pass("LoRA")
    args = {"input_id": "m1", "config": {"train_data_config": "d", "r": 4}, "data": _rows(tmp_path / "data"),
            "host": Accelerator(), "target": Accelerator(), "system": "local",
            "libraries": {"python": "3.11", "torch": "2.13.0", "peft": "0.21"}} | change
    return pass_key(args["input_id"], lora, lora.config_class(**args["config"]), {"d": args["data"]},
                    args["host"], args["target"], args["system"], args["libraries"])


PASS_TERMS = {
    "input model": {"input_id": "m2"},
    "config": {"config": {"train_data_config": "d", "r": 8}},
    "data content": {"data": "edited"},
    "host": {"host": Accelerator(device="gpu")},
    "target": {"target": Accelerator(device="gpu")},
    "system": {"system": "python:/opt/py/bin/python"},
    "library version": {"libraries": {"python": "3.11", "torch": "2.14.1", "peft": "0.21"}},
    "python version": {"libraries": {"python": "3.12", "torch": "2.13.0", "peft": "0.21"}},
}


@pytest.mark.parametrize("term", sorted(PASS_TERMS))
def test_each_pass_key_term_changes_the_key(term: str, tmp_path: Path) -> None:
    change = dict(PASS_TERMS[term])
    if change.get("data") == "edited":
        change["data"] = _rows(tmp_path / "data2", "b")
    assert _pass_key(tmp_path, **change) != _pass_key(tmp_path)


def test_pass_key_follows_the_code(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import honed.engine.keys as keys

    before = _pass_key(tmp_path)
    monkeypatch.setattr(keys, "code_fingerprint", lambda module: "other code")
    assert _pass_key(tmp_path) != before


def test_pass_key_ignores_where_the_data_lies(tmp_path: Path) -> None:
    assert _pass_key(tmp_path, data=_rows(tmp_path / "moved")) == _pass_key(tmp_path)


@pytest.mark.parametrize(("config", "follows"), [
    ({"precision": "int4", "matmul_mixed_precision": "measured", "fidelity_samples": 0}, True),
    ({"precision": "int4"}, True),  # the fidelity check reads it
    ({"precision": "int4", "fidelity_samples": 0}, False),
    ({"precision": "fp32"}, False),
])
def test_a_default_data_config_is_in_the_key(config: dict[str, Any], follows: bool, tmp_path: Path) -> None:
    """A pass that falls back to the workflow's first data config (ModelBuilder's measured mix and fidelity
    check) reruns when that data changes; one that does not read it keeps its key."""
    from honed.engine.keys import pass_key

    mb = get_pass("ModelBuilder")
    cfg = mb.config_class(**config)
    keys = [pass_key("m1", mb, cfg, {"d": _rows(tmp_path / text, text)}, Accelerator(), Accelerator(), "local",
                     {"python": "3.11"}) for text in ("a", "b")]
    assert (keys[0] != keys[1]) is follows


def test_python_environment_system_reads_versions_in_its_interpreter(tmp_path: Path) -> None:
    """A PythonEnvironment system's key holds what *its* interpreter has: a fake interpreter that reports
    another torch gives another key (a torch upgraded there reruns the passes)."""
    import sys

    from honed.systems.python_env import PythonEnvironmentConfig, PythonEnvironmentSystem

    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\n{sys.executable} \"$@\" | sed 's/\"torch\": \"[^\"]*\"/\"torch\": \"9.9\"/'\n")
    fake.chmod(0o755)
    def system(python: str) -> PythonEnvironmentSystem:
        return PythonEnvironmentSystem(PythonEnvironmentConfig(python_environment_path=python), Accelerator(),
                                       cache_root=tmp_path)

    here, there = system(sys.executable).environment(("torch",)), system(str(fake)).environment(("torch",))
    assert there["torch"] == "9.9" and here["torch"] != "9.9"
    assert _pass_key(tmp_path, libraries=there) != _pass_key(tmp_path, libraries=here)


# ----------------------------------------------------------------------------- evaluation keys


def _eval_key(tmp_path: Path, **change: Any) -> str:
    from honed.evaluate.evaluator import eval_key

    args = {"model": "m1", "data": _rows(tmp_path / "data"), "target": Accelerator(),
            "metrics": [{"name": "acc", "type": "accuracy", "data_config": "d"}]} | change
    cfg = EvaluatorConfig(metrics=args["metrics"])
    return eval_key(args["model"], cfg, {"d": args["data"]}, args["target"])


@pytest.mark.parametrize("term", ["model", "data", "target", "evaluator", "code", "library"])
def test_each_evaluation_key_term_changes_the_key(term: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import honed.evaluate.evaluator as ev

    before = _eval_key(tmp_path)
    change: dict[str, Any] = {}
    if term == "model":
        change["model"] = "m2"
    elif term == "data":
        change["data"] = _rows(tmp_path / "data2", "b")
    elif term == "target":
        change["target"] = Accelerator(device="gpu")
    elif term == "evaluator":
        change["metrics"] = [{"name": "acc", "type": "accuracy", "data_config": "d", "user_config": {"batch_size": 2}}]
    elif term == "code":
        monkeypatch.setattr(ev, "code_fingerprint", lambda module: "other code")
    else:
        monkeypatch.setattr(ev, "library_versions", lambda dists: {"onnxruntime": "0.0"})
    assert _eval_key(tmp_path, **change) != before


def test_evaluation_key_ignores_where_the_data_lies(tmp_path: Path) -> None:
    assert _eval_key(tmp_path, data=_rows(tmp_path / "moved")) == _eval_key(tmp_path)


# ----------------------------------------------------------------------------- tokenized-data keys


@pytest.mark.parametrize("term", ["rows", "tokenizer", "eval size", "seed", "code", "library"])
def test_each_tokenized_key_term_changes_the_key(term: str, tmp_path: Path, tiny_llama: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import honed.data.build as build
    from honed.models.loaders import load_tokenizer_dir

    tok = load_tokenizer_dir(tiny_llama)
    base = {"cfg": _rows(tmp_path / "data"), "tok": tok, "size": 0.2, "seed": 0}

    def key(**change: Any) -> str:
        a = base | change
        return build.tokenized_key(a["cfg"], None, a["tok"], a["size"], a["seed"])

    before = key()
    change: dict[str, Any] = {}
    if term == "rows":
        change["cfg"] = _rows(tmp_path / "data2", "b")
    elif term == "tokenizer":
        monkeypatch.setattr(build, "tokenizer_fingerprint", lambda t: "another tokenizer")
    elif term == "eval size":
        change["size"] = 0.3
    elif term == "seed":
        change["seed"] = 1
    elif term == "code":
        monkeypatch.setattr(build, "code_fingerprint", lambda module: "other code")
    else:
        monkeypatch.setattr(build, "library_versions", lambda dists: {"datasets": "0.0"})
    assert key(**change) != before
    assert key(cfg=_rows(tmp_path / "moved")) == before or term != "rows"  # a moved file keeps the key


def test_a_gpu_build_of_onnxruntime_is_keyed_by_its_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU host onnxruntime is installed as onnxruntime-gpu: its version, not 'absent', goes into the keys."""
    import importlib.metadata

    from honed.util.hashing import library_versions

    installed = {"onnxruntime-gpu": "1.31.1", "onnxruntime-genai-cuda": "0.18.0", "torch": "2.9.0"}

    def version(dist: str) -> str:
        if dist not in installed:
            raise importlib.metadata.PackageNotFoundError(dist)
        return installed[dist]

    monkeypatch.setattr(importlib.metadata, "version", version)
    got = library_versions(["onnxruntime", "onnxruntime-genai", "torch", "peft"])
    assert got["onnxruntime"] == "onnxruntime-gpu 1.31.1"
    assert got["onnxruntime-genai"] == "onnxruntime-genai-cuda 0.18.0"
    assert got["torch"] == "2.9.0" and got["peft"] == "absent"
    installed["onnxruntime-gpu"] = "1.32.0"
    assert library_versions(["onnxruntime"])["onnxruntime"] != got["onnxruntime"]
