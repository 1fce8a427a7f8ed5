"""Broken configs: each exits 2 with one line naming the key path and a fix, and no traceback."""

from __future__ import annotations

import codecs
import copy
import json
import shutil
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from honed.config.load import load_workflow
from honed.config.schema import WorkflowConfig
from honed.passes.base import all_passes
from honed.util.accelerator import EXECUTION_PROVIDERS
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
        node[int(last) if isinstance(node, list) else last] = value
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
    ("unknown-pass-type", _set("passes.lora.type", "LoRAA"), ["passes.lora.type", "did you mean 'LoRA'"]),
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
    # -- every reference check between sections has its broken case (issue 14: a removed check must fail a test)
    ("dangling-metric-data-ref", _set("evaluators", {"e": {"metrics": [
        {"name": "acc", "type": "accuracy", "data_config": "nope"}]}}),
     ["evaluators.e.metrics[0].data_config", "no data config named 'nope'"]),
    ("unknown-evaluate-pass", lambda c: c["engine"].update(evaluate_passes=["lroa"]),
     ["engine.evaluate_passes", "no pass named 'lroa'", "did you mean 'lora'"]),
    ("unknown-flow-pass", _set("pass_flows", [["lora", "nope"]]), ["pass_flows[0]", "no pass named 'nope'"]),
    ("repeated-flow-pass", _set("pass_flows", [["lora", "lora"]]), ["pass_flows[0]", "names a pass twice"]),
    ("unknown-target", _set("engine.target", "npu_box"), ["engine.target", "no system named 'npu_box'"]),
    ("passes-not-mapping", _set("passes", ["lora"]), ["passes", "mapping"]),
    ("uncached-hub-model", _set("input_model.model_path", "someorg/not-downloaded"),
     ["someorg/not-downloaded", "HF_HUB_OFFLINE"]),
    ("missing-package", _set("input_model.model_path", "pkg://no_such_pkg_xyz/model.gguf"),
     ["no_such_pkg_xyz", "pip install"]),
    ("gpu-without-cuda", _set("systems.local.accelerators", [{"device": "gpu"}]), ["engine.host", "gpu"]),
    # -- strict booleans: a string "false" is truthy and must never switch trust_remote_code on
    ("trust-remote-code-string", _set("input_model.load_kwargs", {"trust_remote_code": "false"}),
     ["input_model.load_kwargs.trust_remote_code", "must be true or false", "(got 'false')"]),
    ("local-files-only-number", _set("input_model.load_kwargs", {"local_files_only": 1}),
     ["input_model.load_kwargs.local_files_only", "must be true or false"]),
    ("olive-trust-remote-code-string", lambda c: c.update(input_model={"type": "PyTorchModel", "config": {
        "hf_config": {"model_name": c["input_model"]["model_path"],
                      "model_loading_args": {"trust_remote_code": "true"}}}}),
     ["input_model.load_kwargs.trust_remote_code", "must be true or false", "(got 'true')"]),
    ("data-trust-remote-code-string", _set("data_configs.0.load_dataset_config.trust_remote_code", "no"),
     ["data_configs[0].load_dataset_config.trust_remote_code", "must be true or false"]),
    ("bool-as-2", _set("passes.lora.training_args.bf16", 2), ["passes.lora.training_args.bf16", "must be true or false"]),
    ("bool-as-half", _set("passes.mb.int4_is_symmetric", 0.5), ["passes.mb.int4_is_symmetric", "must be true or false"]),
    ("bool-as-text", _set("data_configs.0.pre_process_data_config.shuffle", "abc"),
     ["data_configs[0].pre_process_data_config.shuffle", "must be true or false"]),
    ("engine-bool-as-text", _set("engine.evaluate_input_model", "yes"), ["engine.evaluate_input_model", "true or false"]),
    ("chat-template-false-string", _set("data_configs.0.pre_process_data_config.chat_template", "false"),
     ["data_configs[0].pre_process_data_config.chat_template", "without quotes"]),
    # -- non-finite and absurd numbers
    ("nan-learning-rate", _set("passes.lora.training_args.learning_rate", float("nan")),
     ["passes.lora.training_args.learning_rate", "finite"]),
    ("inf-alpha", _set("passes.lora.alpha", float("inf")), ["passes.lora.alpha", "finite"]),
    ("nan-warmup-ratio", _set("passes.lora.training_args.warmup_ratio", float("nan")),
     ["passes.lora.training_args.warmup_ratio", "finite"]),
    ("inf-max-grad-norm", _set("passes.lora.training_args.max_grad_norm", float("inf")),
     ["passes.lora.training_args.max_grad_norm", "finite"]),
    ("huge-learning-rate", _set("passes.lora.training_args.learning_rate", 1e308),
     ["passes.lora.training_args.learning_rate", "less than or equal to 10"]),
    ("negative-weight-decay", _set("passes.lora.training_args.weight_decay", -0.1),
     ["passes.lora.training_args.weight_decay"]),
    ("dropout-one", _set("passes.lora.lora_dropout", 1.0), ["passes.lora.lora_dropout", "less than 1"]),
    ("zero-rank", _set("passes.lora.r", 0), ["passes.lora.r"]),
    ("zero-alpha", _set("passes.lora.alpha", 0), ["passes.lora.alpha"]),
    ("seed-beyond-64-bits", _set("passes.lora.training_args.seed", 2**70), ["passes.lora.training_args.seed"]),
    ("seed-beyond-numpy", _set("passes.lora.training_args.seed", 2**32), ["passes.lora.training_args.seed"]),
    ("negative-seed", _set("engine.seed", -1), ["engine.seed"]),
    ("data-seed-huge", _set("data_configs.0.pre_process_data_config.seed", 2**64), ["pre_process_data_config.seed"]),
    ("huge-seq-len", _set("data_configs.0.pre_process_data_config.max_seq_len", 2**40),
     ["data_configs[0].pre_process_data_config.max_seq_len"]),
    ("negative-seq-len", _set("data_configs.0.pre_process_data_config.max_seq_len", -1),
     ["data_configs[0].pre_process_data_config.max_seq_len"]),
    # -- sections of the wrong shape, in honed's schema and inside the Olive translation
    ("engine-string", _set("engine", "out"), ["engine", "must be a mapping"]),
    ("systems-string", _set("systems", "local"), ["systems", "must be a mapping"]),
    ("input-model-list", _set("input_model", []), ["input_model", "must be a mapping"]),
    ("data-configs-number", _set("data_configs", 5), ["data_configs", "must be a list"]),
    ("evaluators-string", _set("evaluators", "x"), ["evaluators", "must be a mapping"]),
    ("pass-type-list", _set("passes.lora.type", ["LoRA"]), ["passes.lora.type", "pass type name"]),
    ("host-list", _set("engine.host", ["local"]), ["engine.host", "must be a string"]),
    ("olive-hf-config-list", lambda c: c.update(input_model={"type": "PyTorchModel", "config": {"hf_config": []}}),
     ["input_model.hf_config", "must be a mapping"]),
    ("olive-loading-args-string", lambda c: c.update(input_model={"type": "PyTorchModel", "config": {"hf_config": {
        "model_name": c["input_model"]["model_path"], "model_loading_args": "trust"}}}),
     ["input_model.hf_config.model_loading_args", "must be a mapping"]),
    ("olive-seed-params-string", _set("data_configs.0.load_dataset_config", {"type": "x", "params": "json"}),
     ["data_configs[0].load_dataset_config.params", "must be a mapping"]),
    ("olive-params-config-list", _set("data_configs.0", {"name": "train", "params_config": ["json"]}),
     ["data_configs[0].params_config", "must be a mapping"]),
    ("olive-component-kwargs-string", _set("data_configs.0", {"name": "train", "params_config": {
        "data_name": "json", "component_kwargs": {"pre_process_data": "x"}}}),
     ["data_configs[0].params_config.component_kwargs.pre_process_data", "must be a mapping"]),
    ("olive-engine-providers-number", lambda c: c.update(execution_providers=5),
     ["engine.execution_providers", "list of execution provider names"]),
    # -- paths
    ("nul-in-cache-dir", _set("engine.cache_dir", "ca\0che"), ["engine.cache_dir", "NUL"]),
    ("long-output-dir-name", _set("engine.output_dir", "out/" + "x" * 5000), ["engine.output_dir", "at most"]),
    ("long-name-in-model-path", _set("input_model.model_path", "m/" + "x" * 300), ["input_model.model_path", "255"]),
    ("nul-in-data-files", _set("data_configs.0.load_dataset_config.data_files", "rows\0.jsonl"),
     ["data_configs[0].load_dataset_config.data_files", "NUL"]),
    ("data-files-root", _set("data_configs.0.load_dataset_config.data_files", "/"),
     ["data_configs[0].load_dataset_config.data_files", "filesystem root"]),
    ("data-folder-without-data", lambda c: (Path("empty_dir").mkdir(), _set(
        "data_configs.0.load_dataset_config.data_files", "empty_dir")(c)),
     ["data_configs[0].load_dataset_config.data_files", "no data files"]),
    ("model-path-root", _set("input_model.model_path", "/"), ["input_model.model_path", "filesystem root"]),
    ("model-path-text-file", lambda c: (Path("notes.txt").write_text("hi"), _set(
        "input_model.model_path", "notes.txt")(c)), ["input_model.model_path", "is a file but not a model"]),
    ("model-path-fake-gguf", lambda c: (Path("m.gguf").write_text("hi"), _set(
        "input_model.model_path", "m.gguf")(c)), ["input_model.model_path", "not a GGUF file"]),
    ("adapter-path-not-adapter", lambda c: (Path("ad").mkdir(), _set("input_model.adapter_path", "ad")(c),
                                            c["passes"].pop("lora")),
     ["input_model.adapter_path", "adapter_config.json"]),
    # -- execution providers and from_pretrained arguments
    ("unknown-execution-provider", _set("systems.local.accelerators", [
        {"device": "cpu", "execution_provider": "FooExecutionProvider"}]),
     ["systems.local.accelerators[0].execution_provider", "unknown execution provider", "CPUExecutionProvider"]),
    ("unknown-olive-execution-providers", _set("systems.local.accelerators", [
        {"device": "cpu", "execution_providers": ["FooExecutionProvider"]}]),
     ["systems.local.accelerators[0].execution_providers[0]", "unknown execution provider"]),
    ("execution-providers-number", _set("systems.local.accelerators", [{"device": "cpu", "execution_providers": 3}]),
     ["systems.local.accelerators[0].execution_providers", "must be a list"]),
    ("model-builder-provider", _set("passes.mb.execution_provider", "tpu"), ["passes.mb.execution_provider"]),
    ("load-kwargs-unknown-key", _set("input_model.load_kwargs", {"load_in_8bit": True}),
     ["input_model.load_kwargs.load_in_8bit", "neither a from_pretrained argument"]),
    ("load-kwargs-bad-dtype", _set("input_model.load_kwargs", {"torch_dtype": "float64"}),
     ["input_model.load_kwargs.torch_dtype"]),
    # -- preflight: what the data, the pass order and the environment make impossible
    ("template-column-missing", _set("data_configs.0.pre_process_data_config.text_template", "{phrase} {mood}"),
     ["data_configs[0].pre_process_data_config.text_template", "'mood' not in", "'phrase', 'tone'"]),
    ("text-cols-missing", lambda c: c["data_configs"][0]["pre_process_data_config"].update(
        text_template=None, text_cols=["phrase", "label"]),
     ["data_configs[0].pre_process_data_config.text_cols", "'label' not in"]),
    ("data-file-empty", lambda c: (Path("empty.jsonl").write_text(""), _set(
        "data_configs.0.load_dataset_config.data_files", "empty.jsonl")(c)),
     ["data_configs[0].load_dataset_config.data_files", "is empty"]),
    ("data-file-blank-lines", lambda c: (Path("blank.jsonl").write_text("\n\n"), _set(
        "data_configs.0.load_dataset_config.data_files", "blank.jsonl")(c)),
     ["data_configs[0].load_dataset_config.data_files", "no rows"]),
    ("data-file-empty-array", lambda c: (Path("none.json").write_text("[]"), _set(
        "data_configs.0.load_dataset_config.data_files", "none.json")(c)),
     ["data_configs[0].load_dataset_config.data_files", "empty list"]),
    ("csv-header-only", lambda c: (Path("h.csv").write_text("phrase,tone\n"), c["data_configs"][0].update(
        load_dataset_config={"data_files": "h.csv"})), ["data_configs[0].load_dataset_config.data_files", "no rows"]),
    ("pass-order-impossible", _set("passes", {"mb": {"type": "ModelBuilder"}, "lora": {
        "type": "LoRA", "train_data_config": "train"}}),
     ["passes.lora", "takes hf models but receives the genai model of passes.mb"]),
    ("merge-without-adapter", _set("passes", {"merge": {"type": "MergeAdapterWeights"}}),
     ["passes.merge", "takes peft models but receives the hf model of the input model"]),
    # -- library errors a pass would raise on bad input, caught at validation instead
    ("template-unbalanced-brace", _set("data_configs.0.pre_process_data_config.text_template", "{phrase"),
     ["data_configs[0].pre_process_data_config.text_template", "not a valid format string"]),
    ("template-positional-field", _set("data_configs.0.pre_process_data_config.text_template", "{} -> {tone}"),
     ["data_configs[0].pre_process_data_config.text_template", "positional field"]),
    ("template-bad-conversion", _set("data_configs.0.pre_process_data_config.text_template", "{phrase!x}"),
     ["data_configs[0].pre_process_data_config.text_template", "conversion"]),
    ("chat-template-bad-jinja", _set("data_configs.0.pre_process_data_config.chat_template", "{% for m in messages %}"),
     ["data_configs[0].pre_process_data_config.chat_template", "Jinja syntax error"]),
    ("external-data-name-with-folder", _set("passes.mb", {"type": "OnnxConversion", "external_data_name": "../x"}),
     ["passes.mb.external_data_name", "file name"]),
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


def _alias_bomb(levels: int = 9) -> str:
    """A 'billion laughs' YAML file: 10 lines whose aliases expand to 9**9 strings."""
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for prev, name in zip("abcdefghijklmnop", "bcdefghijklmnopq"[: levels - 1], strict=False):
        text += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    return text


@pytest.mark.parametrize(("name", "data", "expected"), [
    ("trailing-comma.json", '{"input_model": {"model_path": "x"},}', ["line 1", "invalid JSON"]),
    ("bad.yaml", "input_model:\n  model_path: [unclosed\n", ["invalid YAML", "line"]),
    ("list.json", "[1, 2]", ["must be a mapping"]),
    ("latin1.json", '{"input_model": {"model_path": "caf\xe9"}}'.encode("latin-1"), ["UTF-8"]),
    ("deep.json", '{"input_model": ' + "[" * 10000 + "]" * 10000 + "}", ["too deeply"]),
    ("deep-under-recursion-limit.json", '{"input_model": ' + "[" * 500 + "]" * 500 + "}", ["more than 100 levels"]),
    ("deep.yaml", "input_model: " + "[" * 10000 + "]" * 10000 + "\n", ["too deeply"]),
    ("alias-bomb.yaml", _alias_bomb(), ["expands to more than"]),
    ("many-aliases.yaml", "a: &a x\nb: [" + "*a, " * 10001 + "]\n", ["alias uses"]),
    ("self-alias.yaml", "input_model: &a [*a]\n", ["nests"]),
    ("utf16-without-bom.json", '{"input_model": {}}'.encode("utf-16-le"), ["NUL bytes", "UTF-8"]),
])
def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture, name: str, data: str | bytes,
                         expected: list[str]) -> None:
    f = tmp_path / name
    if isinstance(data, bytes):
        f.write_bytes(data)
    else:
        f.write_text(data)
    start = time.perf_counter()
    code, lines = _run(f, capsys, "--dry-run")
    assert time.perf_counter() - start < 5
    assert code == 2 and len(lines) == 1, lines
    assert str(f) in lines[0]
    for t in expected:
        assert t in lines[0], (t, lines[0])


def test_alias_bomb_is_refused_without_expanding(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import psutil

    f = tmp_path / "bomb.yaml"
    f.write_text(_alias_bomb(12) + "input_model: {model_path: x}\n")
    before = psutil.Process().memory_info().rss
    code, lines = _run(f, capsys, "--dry-run")
    assert code == 2 and len(lines) == 1
    assert psutil.Process().memory_info().rss - before < 200 << 20


@pytest.mark.parametrize(("name", "encode"), [
    ("bom.json", lambda t: codecs.BOM_UTF8 + t.encode()),
    ("bom.yaml", lambda t: codecs.BOM_UTF8 + t.encode()),
    ("utf16.json", lambda t: t.encode("utf-16")),  # with its byte order mark
    ("utf16-be.yaml", lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be")),
])
def test_encoded_file_is_read(project: tuple[Path, dict], capsys: pytest.CaptureFixture, name: str, encode) -> None:
    tmp, cfg = project
    f = tmp / name
    f.write_bytes(encode(json.dumps(cfg)))
    assert cli("run", "--config", str(f), "--dry-run") == 0, capsys.readouterr().err


def test_config_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, lines = _run(tmp_path, capsys, "--dry-run")
    assert code == 2 and len(lines) == 1 and "is a folder" in lines[0]


def test_missing_dependency_is_found_before_any_pass(project: tuple[Path, dict], capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from honed.passes.base import get_pass

    monkeypatch.setattr(get_pass("ModelBuilder"), "requires", ("no_such_module_xyz",))
    tmp, cfg = project
    f = tmp / "dep.json"
    f.write_text(json.dumps(cfg))
    code, lines = _run(f, capsys, "--dry-run")
    assert code == 2 and len(lines) == 1
    assert "passes.mb" in lines[0] and "no_such_module_xyz" in lines[0] and "pip install" in lines[0]


def test_tilde_means_home(project: tuple[Path, dict], capsys: pytest.CaptureFixture,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`~` in model_path, data_files, cache_dir and output_dir is the home folder, never a folder named '~'."""
    tmp, cfg = project
    home = tmp / "home"
    shutil.copytree(cfg["input_model"]["model_path"], home / "model")
    shutil.copy(cfg["data_configs"][0]["load_dataset_config"]["data_files"], home / "rows.jsonl")
    monkeypatch.setenv("HOME", str(home))
    cfg["input_model"]["model_path"] = "~/model"
    cfg["data_configs"][0]["load_dataset_config"]["data_files"] = "~/rows.jsonl"
    cfg["engine"].update(cache_dir="~/cache", output_dir="~/out")
    f = tmp / "tilde.json"
    f.write_text(json.dumps(cfg))
    wf = load_workflow(f)
    assert wf.input_model.model_path == str(home / "model")
    assert wf.config.data_configs[0].load_dataset_config.data_files == str(home / "rows.jsonl")
    assert (wf.engine.cache_dir, wf.engine.output_dir) == (str(home / "cache"), str(home / "out"))
    assert cli("run", "--config", str(f), "--dry-run") == 0
    assert f"output -> {home / 'out'}" in capsys.readouterr().out
    assert not (tmp / "~").exists()


def test_unknown_load_kwargs_of_a_hub_model_warn(project: tuple[Path, dict], capsys: pytest.CaptureFixture,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Without a config.json to check against, an unknown from_pretrained key is named in a warning."""
    tmp, cfg = project
    gguf = tmp / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    cfg["input_model"] = {"model_path": str(gguf), "load_kwargs": {"rope_scalling": {"type": "linear"}}}
    f = tmp / "warn.json"
    f.write_text(json.dumps(cfg))
    wf = load_workflow(f)
    from honed.engine.preflight import preflight

    with caplog.at_level("WARNING", logger="honed"):
        preflight(wf, tmp / "out", tmp / "cache")
    assert "rope_scalling" in caplog.text


def _config_models() -> list[type[BaseModel]]:
    """Every pydantic model a workflow file is validated against (the schema's and every built-in pass's)."""
    seen: list[type[BaseModel]] = []
    builtin = [cls.config_class for cls in all_passes().values() if cls.__module__.startswith("honed.")]
    todo: list[Any] = [WorkflowConfig, *builtin]
    while todo:
        ann = todo.pop()
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if ann not in seen:
                seen.append(ann)
                todo += [f.annotation for f in ann.model_fields.values()]
        else:
            todo += list(typing.get_args(ann))
    return seen


def _loose_bools(model: type[BaseModel]) -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        members = typing.get_args(f.annotation) or (f.annotation,)
        if bool in members or f.annotation is bool:
            strict = any(getattr(m, "strict", False) for m in f.metadata)
            if not strict:
                out.append(name)
    return out


@pytest.mark.parametrize("model", _config_models(), ids=lambda m: m.__name__)
def test_every_boolean_is_strict(model: type[BaseModel]) -> None:
    """A bool field accepts "false", 0.5 or 2 unless it is StrictBool; declare each one StrictBool."""
    assert _loose_bools(model) == []
    assert model.model_config.get("allow_inf_nan") is False or model.__name__ == "PassEntry"


def test_execution_providers_cover_onnxruntime() -> None:
    import onnxruntime

    assert set(onnxruntime.get_all_providers()) <= set(EXECUTION_PROVIDERS)


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
