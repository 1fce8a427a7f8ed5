"""The parts of Olive's schema its published files use: each small input of issue 13 as a test.

``$schema``, ``pass_flows``, ``search_algorithm``, ``data_configs`` as a mapping, every Hugging Face
``TrainingArguments`` field, pass types honed runs under another name or refuses with an alternative,
and error messages that recommend only what exists.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from honed.config.load import validate
from honed.config.olive import UNSUPPORTED_SYSTEMS, translate
from honed.config.schema import SYSTEM_TYPES
from honed.errors import ConfigError
from honed.training.args import (
    ALIASES,
    CHANGES_RESULT,
    HF_TRAINING_ARGUMENTS,
    WHY_NOT_APPLIED,
    TrainingArgs,
    unapplied_training_args,
)
from tests.helpers import cli, write_config

SCHEMA_URL = "https://microsoft.github.io/Olive/schema.json"


def _wf(model: Path, **extra: Any) -> dict[str, Any]:
    return {"input_model": {"type": "HfModel", "model_path": str(model)}, **extra}


def _run(tmp_path: Path, config: dict[str, Any], *args: str) -> int:
    return cli("run", "--config", str(write_config(tmp_path / "wf.json", config)), *args)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


# -- the issue's small inputs ------------------------------------------------------------------------

def test_schema_key_is_an_editor_hint(tmp_path: Path, tiny_phi3: Path, capsys) -> None:
    cfg = {"$schema": SCHEMA_URL, **_wf(tiny_phi3, passes={"mb": {"type": "ModelBuilder", "precision": "int4"}})}
    assert _run(tmp_path, cfg, "--dry-run") == 0
    assert "$schema" not in capsys.readouterr().err


def test_model_builder_after_conversion_is_refused_before_any_pass(tmp_path: Path, tiny_phi3: Path, capsys) -> None:
    cfg = _wf(tiny_phi3, passes={"conv": {"type": "OnnxConversion"}, "mb": {"type": "ModelBuilder",
                                                                           "precision": "fp16"}},
              engine={"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")})
    assert _run(tmp_path, cfg, "--dry-run") == 2
    line = _one_error_line(capsys)
    assert "passes.mb" in line and "onnx" in line and "conv" in line
    assert _run(tmp_path, cfg) == 2  # the real run stops at the same check, before the conversion
    _one_error_line(capsys)
    assert not (tmp_path / "cache" / "entries").exists() or not any((tmp_path / "cache" / "entries").iterdir())


@pytest.mark.parametrize(("algorithm", "sampler"), [("exhaustive", "sequential"), ("random", "random"),
                                                    ("tpe", "tpe"), ("qmc", "qmc"), ("nsgaII", "nsgaII")])
def test_search_algorithm_maps_to_a_sampler(tmp_path: Path, tiny_phi3: Path, algorithm: str, sampler: str) -> None:
    cfg = _wf(tiny_phi3, passes={"mb": {"type": "ModelBuilder", "precision": ["int4", "fp32"]}},
              evaluators={"e": {"metrics": [{"name": "size", "type": "size_on_disk",
                                             "sub_types": [{"name": "mb", "priority": 1}]}]}},
              evaluator="e",
              search_strategy={"execution_order": "joint", "search_algorithm": algorithm,
                               "search_algorithm_config": {"num_samples": 3, "seed": 7}})
    wf = validate(cfg)
    s = wf.config.search_strategy
    assert (s.sampler, s.max_iter, s.seed, s.execution_order) == (sampler, 3, 7, "joint")
    assert wf.warnings == []


def test_unknown_search_algorithm_lists_the_known_ones(tiny_phi3: Path) -> None:
    with pytest.raises(ConfigError) as e:
        validate(_wf(tiny_phi3, search_strategy={"search_algorithm": "bayes"}))
    assert "search_strategy.search_algorithm" in str(e.value) and "exhaustive" in str(e.value)


def test_data_configs_as_a_mapping(tmp_path: Path, tiny_phi3: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"phrase": "a", "tone": "joy"}\n')
    data = {"type": "HuggingfaceContainer", "load_dataset_config": {"data_files": str(tmp_path / "d.jsonl")}}
    wf = validate(_wf(tiny_phi3, data_configs={"train": data, "eval": {**data, "name": "eval"}},
                      passes={"l": {"type": "LoRA", "train_data_config": "train", "eval_data_config": "eval"}}))
    assert [d.name for d in wf.config.data_configs] == ["train", "eval"]
    # Olive refers to a data config by its key; a differing inner name is named in a warning, never used
    wf = validate(_wf(tiny_phi3, data_configs={"train": {**data, "name": "other"}},
                      passes={"l": {"type": "LoRA", "train_data_config": "train"}}))
    assert [d.name for d in wf.config.data_configs] == ["train"]
    assert any(w.startswith("data_configs.train.name:") for w in wf.warnings)


def test_training_args_output_dir_is_named_in_a_warning(tmp_path: Path, tiny_phi3: Path, capsys) -> None:
    (tmp_path / "d.jsonl").write_text('{"phrase": "a", "tone": "joy"}\n')
    cfg = _wf(tiny_phi3, data_configs=[{"name": "d", "load_dataset_config": {"data_files": str(tmp_path / "d.jsonl")},
                                        "pre_process_data_config": {"text_template": "{phrase} {tone}"}}],
              passes={"lora": {"type": "LoRA", "train_data_config": "d",
                               "training_args": {"max_steps": 1, "output_dir": "models/checkpoints"}}})
    assert _run(tmp_path, cfg, "--dry-run") == 0
    err = capsys.readouterr().err
    assert err.count("passes.lora.training_args.output_dir") == 1 and "ignored" in err


def test_every_transformers_field_is_known() -> None:
    """The static list covers the installed transformers (a new release's fields would otherwise be 'unknown')."""
    import transformers

    installed = {f.name for f in dataclasses.fields(transformers.TrainingArguments) if f.init}
    assert installed <= HF_TRAINING_ARGUMENTS, sorted(installed - HF_TRAINING_ARGUMENTS)
    explained = set(WHY_NOT_APPLIED) | set(CHANGES_RESULT) | set(ALIASES)
    assert explained <= HF_TRAINING_ARGUMENTS
    assert not explained & set(TrainingArgs.model_fields)  # a field honed applies is never called ignored


@pytest.mark.parametrize("key", sorted(HF_TRAINING_ARGUMENTS - set(TrainingArgs.model_fields) - {"evaluation_strategy"}))
def test_each_unapplied_training_argument_warns_or_errs_once(key: str, tiny_phi3: Path) -> None:
    """Every TrainingArguments field honed does not apply is named: a warning, or an error when its value
    would change the result.  The value used is one that changes the result where there is one."""
    value = {"label_smoothing_factor": 0.1, "neftune_noise_alpha": 5.0, "lr_scheduler_kwargs": {"power": 2},
             "optim_args": "foo=1", "optim_target_modules": ["q_proj"], "metric_for_best_model": "accuracy",
             "greater_is_better": True, "auto_find_batch_size": True, "dataloader_drop_last": True,
             "train_sampling_strategy": "group_by_length", "eval_delay": 3}.get(key, 1)
    raw = _wf(tiny_phi3, passes={"lora": {"type": "LoRA", "training_args": {key: value}}})
    if key in CHANGES_RESULT or key in ALIASES:
        with pytest.raises(ConfigError) as e:
            translate(raw)
        assert str(e.value).count(f"passes.lora.training_args.{key}") == 1
    else:
        t = translate(raw)
        assert [w for w in t.warnings if w.startswith(f"passes.lora.training_args.{key}:")] != []
        assert key not in t.config["passes"]["lora"]["training_args"]


def test_neutral_values_of_result_changing_fields_only_warn() -> None:
    warnings, errors = unapplied_training_args({"label_smoothing_factor": 0.0, "greater_is_better": False,
                                                "metric_for_best_model": "eval_loss", "dataloader_drop_last": True})
    assert set(warnings) == {"label_smoothing_factor", "greater_is_better", "metric_for_best_model"}
    assert set(errors) == {"dataloader_drop_last"}


def test_azureml_message_recommends_only_systems_honed_has(tmp_path: Path, tiny_phi3: Path, capsys) -> None:
    cfg = _wf(tiny_phi3, systems={"aml": {"type": "AzureML", "accelerators": ["gpu"]}})
    assert _run(tmp_path, cfg, "--dry-run") == 2
    line = _one_error_line(capsys)
    named = {w.strip("(),.;'") for w in line.split()} & {"LocalSystem", "PythonEnvironment", "Ray", "Docker"}
    assert named and named <= set(SYSTEM_TYPES)
    assert all(t in UNSUPPORTED_SYSTEMS["AzureML"][1] for t in SYSTEM_TYPES)
    # ... and whatever it recommends is accepted
    for kind in named:
        extra = {"python_environment_path": str(tmp_path)} if kind == "PythonEnvironment" else {}
        assert validate(_wf(tiny_phi3, systems={"s": {"type": kind, **extra}})).config.systems["s"].type == kind


def test_the_azureml_message_example_is_a_working_ray_system(tiny_phi3: Path) -> None:
    """The refusal shows a Ray system as JSON: that text, pasted into a workflow, validates as written."""
    instead = UNSUPPORTED_SYSTEMS["AzureML"][1]
    example = json.loads(instead[instead.index("{"):instead.index("}}}") + 3])
    (name, system), = example.items()
    wf = validate({**_wf(tiny_phi3, systems=example), "engine": {"host": name}})
    assert wf.config.systems[name].type == "Ray" and wf.config.systems[name].resources.num_gpus == system[
        "resources"]["num_gpus"]


def test_a_system_type_honed_lacks_lists_the_ones_it_has(tmp_path: Path, tiny_phi3: Path, capsys) -> None:
    assert _run(tmp_path, _wf(tiny_phi3, systems={"r": {"type": "Kubernetes"}}), "--dry-run") == 2
    line = _one_error_line(capsys)
    assert "systems.r.type" in line and all(t in line for t in SYSTEM_TYPES)


# -- pass types ------------------------------------------------------------------------------------

def test_optimum_conversion_runs_as_onnx_conversion_and_says_so(tiny_phi3: Path) -> None:
    wf = validate(_wf(tiny_phi3, passes={"c": {"type": "OptimumConversion", "target_opset": 18, "fp16": True,
                                               "device": "cpu"}}))
    step = wf.steps[0]
    assert step.pass_cls.name == "OnnxConversion" and step.config.target_opset == 18
    assert step.config.torch_dtype == "float16"  # fp16 kept its meaning
    assert any(w.startswith("passes.c.type: OptimumConversion runs as OnnxConversion") for w in wf.warnings)
    assert any(w.startswith("passes.c.device:") for w in wf.warnings)
    with pytest.raises(ConfigError) as e:
        validate(_wf(tiny_phi3, passes={"c": {"type": "OptimumConversion", "components": ["decoder_model"]}}))
    assert "passes.c.components" in str(e.value)


def test_did_you_mean_only_for_close_names(tiny_phi3: Path) -> None:
    with pytest.raises(ConfigError) as e:
        validate(_wf(tiny_phi3, passes={"p": {"type": "ModelBuildr"}}))
    assert e.value.problems[0].fix == "did you mean 'ModelBuilder'?"
    with pytest.raises(ConfigError) as e:
        validate(_wf(tiny_phi3, passes={"p": {"type": "Zebra"}}))
    fix = e.value.problems[0].fix
    assert "did you mean" not in fix and "ModelBuilder" in fix and "LoRA" in fix


# -- pass flows --------------------------------------------------------------------------------------

def _flows(model: Path, tmp_path: Path) -> dict[str, Any]:
    return _wf(model, passes={"half": {"type": "CastDtype", "dtype": "float16"},
                              "full": {"type": "CastDtype", "dtype": "float32"},
                              "brain": {"type": "CastDtype", "dtype": "bfloat16"}},
               pass_flows=[["half", "full"], ["half", "brain"]],
               evaluators={"e": {"metrics": [{"name": "size", "type": "size_on_disk"}]}},
               engine={"evaluator": "e", "evaluate_input_model": False, "cache_dir": str(tmp_path / "cache"),
                       "output_dir": str(tmp_path / "out")})


def test_pass_flows_plan(tmp_path: Path, tiny_phi3: Path) -> None:
    wf = validate(_flows(tiny_phi3, tmp_path))
    assert [(name, [s.name for s in f.steps]) for name, f in wf.flows] == [
        ("half-full", ["half", "full"]), ("half-brain", ["half", "brain"])]
    for bad, key in (([["half", "nope"]], "pass_flows[0]"), ([["half", "half"]], "pass_flows[0]"),
                     ([], "pass_flows"), ([["half"], ["half"]], "pass_flows")):
        with pytest.raises(ConfigError) as e:
            validate({**_flows(tiny_phi3, tmp_path), "pass_flows": bad})
        assert e.value.problems[0].key == key


def test_pass_flows_run_as_branches_over_one_cache(tmp_path: Path, tiny_phi3: Path, capsys) -> None:
    cfg = _flows(tiny_phi3, tmp_path)
    assert _run(tmp_path, cfg) == 0
    out = tmp_path / "out"
    top = json.loads((out / "footprints.json").read_text())
    assert list(top["flows"]) == ["half-full", "half-brain"]
    for name, dtype in (("half-full", "float32"), ("half-brain", "bfloat16")):
        fp = json.loads((out / name / "footprints.json").read_text())
        assert [s["name"] for s in fp["steps"]] == name.split("-") and fp["steps"][1]["config"]["dtype"] == dtype
        assert json.loads((out / name / "config.json").read_text())["dtype"] == dtype
    # the shared first pass ran once: the second flow took it from the cache
    cached = [[s["cached"] for s in f["steps"]] for f in top["flows"].values()]
    assert cached == [[False, False], [True, False]]
    sizes = [f["evaluation"]["output"]["size-mb"] for f in top["flows"].values()]
    assert sizes[0] == pytest.approx(2 * sizes[1], rel=0.1)  # float32 vs bfloat16 weights
    report = (out / "report.html").read_text()
    assert "Pass flows" in report and "half-full" in report and "half-brain" in report
    assert "half-brain" in capsys.readouterr().out


# -- the translator, one row per Olive shape ---------------------------------------------------------

M = {"input_model": {"type": "HfModel", "model_path": "m"}}


def _dig(d: Any, path: str) -> Any:
    for part in path.split("."):
        d = d[int(part)] if isinstance(d, list) else d[part]
    return d


TRANSLATIONS = [
    # (Olive shape, key path in the translated config, expected value, warning key or None)
    ({"passes": {"q": {"type": "qlora"}}}, "passes.q.type", "QLoRA", None),
    ({"passes": {"q": {"type": "OnnxDynamicQuantization", "per_channel": "DEFAULT_VALUE"}}}, "passes.q",
     {"type": "OnnxDynamicQuantization"}, None),
    ({"passes": {"q": {"type": "OnnxQuantization", "data_config": "calib"}}}, "passes.q.type",
     "OnnxStaticQuantization", "passes.q.type"),
    ({"passes": {"q": {"type": "OnnxQuantization"}}}, "passes.q.type", "OnnxDynamicQuantization", "passes.q.type"),
    ({"passes": {"q": {"type": "OnnxQuantization", "quant_mode": "static", "precision": "uint8"}}}, "passes.q",
     {"type": "OnnxStaticQuantization", "weight_type": "QUInt8", "activation_type": "QUInt8"}, "passes.q.type"),
    ({"passes": {"q": {"type": "OnnxDynamicQuantization", "MatMulConstBOnly": False}}}, "passes.q.extra_options",
     {"MatMulConstBOnly": False}, None),
    ({"passes": {"c": {"type": "OnnxIODataTypeConverter", "source_dtype": 10, "target_dtype": 1}}}, "passes.c",
     {"type": "OnnxIOFloat16ToFloat32"}, None),
    ({"passes": {"g": {"type": "GenAIModelExporter", "precision": "int4"}}}, "passes.g.type", "ModelBuilder", None),
    ({"passes": {"t": {"type": "OrtPerfTuning"}}}, "passes.t.type", "OrtSessionParamsTuning", None),
    # renamed keys with distinct values: a swap of two renames lands a value in the wrong place
    ({"passes": {"l": {"type": "LoRA", "lora_r": 4, "lora_alpha": 16, "lora_dropout": 0.1}}}, "passes.l",
     {"type": "LoRA", "r": 4, "alpha": 16, "lora_dropout": 0.1}, None),
    ({"passes": {"t": {"type": "OrtSessionParamsTuning", "execution_providers_list": ["CPUExecutionProvider"]}}},
     "passes.t", {"type": "OrtSessionParamsTuning", "providers_list": ["CPUExecutionProvider"]}, None),
    ({"input_model": {"type": "PyTorchModel", "config": {"hf_config": {
        "model_name": "m", "model_loading_args": {"revision": "r1"},
        "from_pretrained_args": {"attn_implementation": "eager"}}}}},
     "input_model.load_kwargs", {"revision": "r1", "attn_implementation": "eager"}, None),
    ({"passes": {"g": {"type": "GptqQuantizer", "layers_block_name": "model.decoder.layers", "bits": 4}}},
     "passes.g", {"type": "Gptq", "bits": 4}, "passes.g.layers_block_name"),
    ({"passes": {"g": {"type": "gptq", "sym": True}}}, "passes.g", {"type": "Gptq", "sym": True}, None),
    ({"passes": {"g": {"type": "GptqModel"}}}, "passes.g.type", "Gptq", "passes.g.type"),
    ({"passes": {"e": {"type": "ExtractAdapters", "pack_inputs": True}}}, "passes.e", {"type": "ExtractAdapters"},
     "passes.e.pack_inputs"),
    ({"search_strategy": {"max_samples": 4, "sampler": "random"}}, "search_strategy.max_iter", 4, None),
    ({"engine": {"execution_providers": ["CUDAExecutionProvider"]}}, "systems.local_system.accelerators",
     [{"device": "gpu", "execution_provider": "CUDAExecutionProvider"}], None),
    ({"engine": {"execution_providers": ["CUDAExecutionProvider"]}}, "engine.host", "local_system", None),
    ({"data_configs": [{"name": "d", "params_config": {"data_files": "x.jsonl", "text_template": "{a} {b}",
                                                      "source_max_len": 64, "corpus_strategy": "join"}}]},
     "data_configs.0.pre_process_data_config", {"text_template": "{a} {b}", "max_seq_len": 64, "strategy": "join"},
     None),
    ({"evaluators": {"e": {"metrics": [{"name": "lat", "type": "latency", "user_config": {
        "io_bind": True, "batch_size": 2}}]}}}, "evaluators.e.metrics.0.user_config", {"batch_size": 2},
     "evaluators.e.metrics[0].user_config.io_bind"),
    ({"passes": {"q": {"type": "OnnxDynamicQuantization", "per_channel": "SEARCHABLE_VALUES"}}}, "passes.q",
     {"type": "OnnxDynamicQuantization"}, "passes.q.per_channel"),
    ({"input_model": {"type": "hfmodel", "model_path": "m"}}, "input_model.type", "HfModel", None),
    ({"systems": {"s": {"type": "PythonEnvironment", "olive_managed_env": True, "requirements_file": "r.txt"}}},
     "systems.s", {"type": "PythonEnvironment", "managed_env": True, "requirements_file": "r.txt"}, None),
    ({"systems": {"s": {"type": "PythonEnvironment", "olive_managed_env": False, "requirements_file": "r.txt"}}},
     "systems.s", {"type": "PythonEnvironment"}, "systems.s.requirements_file"),
    ({"systems": {"s": {"type": "LocalSystem", "accelerators": [{"accelerator_type": "gpu"}]}}},
     "systems.s.accelerators.0.device", "gpu", None),
    ({"cache_config": {"cache_dir": "c", "enable_shared_cache": False}}, "engine.cache_dir", "c",
     "cache_config.enable_shared_cache"),
    ({"engine": {"host": {"type": "LocalSystem", "config": {"accelerators": ["cpu"]}}}}, "engine.host",
     "host_system", None),
    ({"evaluators": {"e": {"metrics": [{"name": "acc", "type": "accuracy", "backend": "huggingface_metrics",
                                         "data_config": "d", "sub_types": [{"name": "accuracy"}, {"name": "f1"}]}]}}},
     "evaluators.e.metrics.0.sub_types", [{"name": "accuracy_score"}, {"name": "f1_score"}], None),
    ({"evaluators": {"e": {"metrics": [{"name": "lat", "type": "latency", "user_config": {
        "user_script": "u.py", "dataloader_func": "make", "batch_size": 2}}]}}},
     "data_configs.0", {"name": "e_lat_dataloader", "dataloader_func": "make", "user_script": "u.py",
                        "dataloader_config": {"batch_size": 2}}, None),
    ({"data_configs": [{"name": "d", "user_script": "u.py", "components": {"load_dataset": {"type": "load_rows"}},
                        "params_config": {"data_files": "x.jsonl",
                                          "component_kwargs": {"load_dataset": {"language": "Python"}}}}]},
     "data_configs.0.load_dataset_config", {"type": "load_rows", "data_files": "x.jsonl", "language": "Python"},
     None),
]


@pytest.mark.parametrize(("olive", "path", "expected", "warned"), TRANSLATIONS,
                         ids=[f"{i}-{r[1]}" for i, r in enumerate(TRANSLATIONS)])
def test_translation(olive: dict[str, Any], path: str, expected: Any, warned: str | None) -> None:
    t = translate({**M, **olive})
    assert _dig(t.config, path) == expected
    if warned:
        assert any(w.startswith(warned + ":") for w in t.warnings), t.warnings


@pytest.mark.parametrize(("olive", "key"), [
    ({"workflow_host": "aml"}, "workflow_host"),
    ({"passes": {"e": {"type": "ExtractAdapters", "adapter_type": "dora"}}}, "passes.e.adapter_type"),
    ({"passes": {"c": {"type": "OptimumConversion", "components": ["decoder_model"]}}}, "passes.c.components"),
    ({"passes": {"c": {"type": "OnnxIODataTypeConverter", "source_dtype": 1, "target_dtype": 10}}}, "passes.c"),
    ({"input_model": {"type": "HfModel", "model_path": "m", "model_loader": "load"}}, "input_model.model_loader"),
])
def test_translation_refuses(olive: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        translate({**M, **olive})
    assert [p.key for p in e.value.problems] == [key]


def test_seed_dataset_becomes_the_input_model_data_config() -> None:
    t = translate({"input_model": {"type": "PyTorchModel", "config": {"hf_config": {
        "model_name": "m", "task": "text-classification",
        "dataset": {"data_name": "json", "data_files": "d.jsonl", "split": "train", "batch_size": 4,
                    "max_samples": 10}}}},
        "evaluators": {"e": {"metrics": [{"name": "acc", "type": "accuracy", "sub_types": [{"name": "accuracy_score"}]},
                                         {"name": "lat", "type": "latency"}]}}})
    (d,) = t.config["data_configs"]
    assert d == {"name": "__input_model_data_config__",
                 "load_dataset_config": {"data_name": "json", "data_files": "d.jsonl", "split": "train"},
                 "pre_process_data_config": {"max_samples": 10}, "dataloader_config": {"batch_size": 4}}
    metrics = t.config["evaluators"]["e"]["metrics"]
    assert metrics[0]["data_config"] == "__input_model_data_config__" and "data_config" not in metrics[1]


def test_searchable_values_of_a_boolean_are_both(tiny_phi3: Path) -> None:
    wf = validate(_wf(tiny_phi3, passes={"q": {"type": "OnnxDynamicQuantization", "reduce_range": "SEARCHABLE_VALUES"}},
                      evaluators={"e": {"metrics": [{"name": "size", "type": "size_on_disk"}]}},
                      search_strategy={"sampler": "sequential"}, engine={"evaluator": "e"}))
    assert [d.values for d in wf.search_space.dimensions] == [[False, True]]


def test_metric_input_shapes_become_dummy_data() -> None:
    t = translate({**M, "evaluators": {"e": {"metrics": [{"name": "lat", "type": "latency", "user_config": {
        "input_names": ["input_ids"], "input_shapes": [[1, 8]], "input_types": ["int64"]}}]}}})
    (d,) = t.config["data_configs"]
    assert d == {"name": "e_lat_dummy", "type": "DummyDataContainer", "load_dataset_config": {
        "input_shapes": [[1, 8]], "input_names": ["input_ids"], "input_types": ["int64"]}}
    metric = t.config["evaluators"]["e"]["metrics"][0]
    assert metric["data_config"] == "e_lat_dummy" and metric["user_config"] == {}


def test_metadata_only_passes_are_skipped_with_a_warning() -> None:
    t = translate({**M, "passes": {"meta": {"type": "AddOliveMetadata", "config": {"graph_name": "g"}},
                                   "mb": {"type": "ModelBuilder"}}, "pass_flows": [["meta", "mb"]]})
    assert list(t.config["passes"]) == ["mb"] and t.config["pass_flows"] == [["mb"]]
    assert any(w.startswith("passes.meta: AddOliveMetadata skipped") for w in t.warnings)


@pytest.mark.parametrize(("auto", "types", "flows"), [
    ({"precision": "int4", "use_model_builder": True}, ["ModelBuilder"], None),
    ({"precision": "int8"}, ["OnnxConversion", "OrtTransformersOptimization", "OnnxDynamicQuantization"], None),
    ({"precision": "int8", "calibration_data_config": "calib"},
     ["OnnxConversion", "OrtTransformersOptimization", "OnnxStaticQuantization"], None),
    ({"precisions": ["fp16", "int4"]}, ["OnnxConversion", "OrtTransformersOptimization", "OnnxFloatToFloat16",
                                        "OnnxBlockWiseRtnQuantization"],
     [["conversion", "optimization", "fp16"], ["conversion", "int4"]]),
])
def test_auto_optimizer_picks_passes_and_says_which(auto: dict[str, Any], types: list[str], flows: Any) -> None:
    t = translate({**M, "auto_optimizer_config": auto})
    assert [p["type"] for p in t.config["passes"].values()] == types
    assert t.config.get("pass_flows") == flows
    assert any(w.startswith("auto_optimizer_config: honed runs") for w in t.warnings)
    # with passes listed (or the auto-optimizer disabled) Olive ignores it, and so does honed, saying so
    t = translate({**M, "auto_optimizer_config": auto, "passes": {"mb": {"type": "ModelBuilder"}}})
    assert list(t.config["passes"]) == ["mb"] and any(w.startswith("engine.auto_optimizer_config:")
                                                      for w in t.warnings)


def test_generate_config_only_writes_the_workflow_and_runs_nothing(tmp_path: Path, tiny_phi3: Path) -> None:
    cfg = _wf(tiny_phi3, auto_optimizer_config={"precision": "fp32", "use_model_builder": True,
                                                "generate_config_only": True},
              engine={"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")})
    assert _run(tmp_path, cfg) == 0
    written = json.loads((tmp_path / "out" / "workflow.json").read_text())
    assert written["passes"]["model_builder_fp32"]["type"] == "ModelBuilder"
    assert "generate_config_only" not in written["engine"]
    assert not (tmp_path / "out" / "model.onnx").exists()
    assert not (tmp_path / "cache" / "entries").exists() or not any((tmp_path / "cache" / "entries").iterdir())
    assert cli("run", "--config", str(tmp_path / "out" / "workflow.json"), "--dry-run") == 0


SCRIPT = '''
from olive.data.registry import Registry

@Registry.register_dataset("tiny_rows")
def load(data_dir=None):
    return [{"text": "a b"}]

def latency_loader(data_dir, batch_size):
    return []

def score(model, rows):
    return 1.0
'''


@pytest.mark.parametrize(("section", "name", "key"), [
    ({"load_dataset_config": {"type": "tiny_rows"}}, None, None),  # registered under its decorator's name
    ({"load_dataset_config": {"type": "load"}}, None, None),  # or defined under its own
    ({"load_dataset_config": {"type": "tiny_row"}}, None, "data_configs[0].load_dataset_config.type"),
    ({"dataloader_func": "latency_loader"}, None, None),
    ({"dataloader_func": "latency_loadr"}, None, "data_configs[0].dataloader_func"),
    ({}, "scor", "evaluators.e.metrics[0].user_config.evaluate_func"),
])
def test_dry_run_finds_functions_a_user_script_lacks(section: dict[str, Any], name: str | None, key: str | None,
                                                      tmp_path: Path, tiny_phi3: Path, capsys) -> None:
    """Read with ast, never run: a misspelt function name fails the dry run, not the real run after a pass."""
    (tmp_path / "script.py").write_text(SCRIPT)
    cfg = _wf(tiny_phi3, data_configs=[{"name": "d", "user_script": str(tmp_path / "script.py"), **section}],
              evaluators={"e": {"metrics": [{"name": "c", "type": "custom", "sub_types": [
                  {"name": "s", "higher_is_better": True}], "user_config": {
                      "user_script": str(tmp_path / "script.py"), "evaluate_func": name or "score"}}]}})
    code = _run(tmp_path, cfg, "--dry-run")
    if key is None:
        assert code == 0, capsys.readouterr().err
    else:
        assert code == 2
        line = _one_error_line(capsys)
        assert key in line and "script.py does not define" in line and "latency_loader" in line


def test_a_searchable_key_without_values_is_one_line(tiny_phi3: Path) -> None:
    with pytest.raises(ConfigError) as e:
        validate(_wf(tiny_phi3, passes={"conv": {"type": "OnnxConversion", "target_opset": "SEARCHABLE_VALUES"}},
                     evaluators={"e": {"metrics": [{"name": "size", "type": "size_on_disk"}]}},
                     search_strategy={"sampler": "sequential"}, engine={"evaluator": "e"}))
    assert [p.key for p in e.value.problems] == ["passes.conv.target_opset"]
    assert "give a list of values" in e.value.problems[0].fix or "give a list of values" in str(e.value)
