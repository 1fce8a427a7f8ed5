"""Translate Olive workflow files into honed's schema: the ONE place that knows Olive's shapes.

Three generations are understood:

* ``seed``    - ``load_dataset_config.params``, ``PyTorchModel`` + ``hf_config``, pass ``config`` wrappers;
* ``legacy``  - data configs with ``params_config`` + ``component_kwargs``;
* ``current`` - flat keys (``HfModel``, ``r``/``alpha``, ``strategy``/``max_seq_len``, engine keys at top level).

The output is a plain dict in honed's schema plus one warning per key that honed understands
but ignores.  Cloud-only parts (AzureML systems, ``azureml_*`` resources) are errors that
name what to use instead.  Translating a config that is already in honed's schema changes nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from honed.errors import ConfigError, ConfigProblem
from honed.evaluate.metrics import hf_metric_names
from honed.util.accelerator import execution_provider_problem

ENGINE_KEYS = {
    "cache_dir", "output_dir", "host", "target", "evaluator", "evaluate_input_model", "evaluate_passes", "seed",
}
# Olive keys honed reads but does not act on: key -> why.
IGNORED_ENGINE_KEYS = {
    "log_severity_level": "honed logs with --log-level",
    "ort_log_severity_level": "honed logs with --log-level",
    "log_to_file": "honed logs with --log-level",
    "verbose": "honed logs with --log-level",
    "clean_cache": "run `honed cache clean` instead",
    "clean_evaluation_cache": "run `honed cache clean` instead",
    "plot_pareto_frontier": "the report always has the Pareto chart",
    "packaging_config": "the output folder already holds the final model",
    "output_name": "outputs go to output_dir",
    "no_artifacts": "honed writes the final model and footprints only",
    "azureml_client": "honed has no AzureML integration",
    "workflow_id": "honed keys runs by content",
    "auto_optimizer_config": "honed runs the passes the file lists (Olive too uses it only without passes)",
    "data_root": "relative data paths resolve against the working folder, then the config's folder",
    "log_severity_level_ort": "honed logs with --log-level",
}
CACHE_CONFIG_KEYS = {"cache_dir": "cache_dir"}
"""Olive's ``cache_config`` keys honed applies (-> engine key); the rest are ignored with a warning."""
IGNORED_PASS_KEYS_BY_TYPE: dict[str, dict[str, str]] = {
    "OnnxConversion": {"device": "honed exports on the host system's device"},
    "QLoRA": {"device_map": "honed places the model on the host system's device",
              "save_quant_config": "honed's QLoRA output is a PEFT adapter over the unquantized base"},
    "LoRA": {"device_map": "honed places the model on the host system's device"},
    "ExtractAdapters": {"pack_inputs": "honed keeps the LoRA input layout ModelBuilder wrote (q/k/v packed as the "
                                       "graph packs them); the adapter files always match the model's inputs"},
    "DoRA": {"device_map": "honed places the model on the host system's device"},
    "GptqQuantizer": {k: "honed finds the decoder layers and their linears itself" for k in (
        "layers_block_name", "outside_layer_modules", "inside_layer_modules")}
    | {"static_groups": "it matters only with desc_act, which honed's Gptq does not take"},
    "AutoAWQQuantizer": {
        "version": "it picks AutoAWQ's CUDA kernel layout (gemm/gemv); honed writes Olive's quantized format, which "
                   "ModelBuilder builds into MatMulNBits",
        "pack_model_for_onnx_conversion": "honed's Awq output is always the format ModelBuilder builds",
        "export_compatible": "honed's Awq always writes the quantized codes (not the scaled float model)",
        "input_model_dtype": "honed calibrates in float32",
        "modules_to_not_convert": "honed's Awq quantizes every linear of the decoder layers and never the LM head",
    },
}
"""Olive pass options that change nothing in honed's output, by pass type: a warning each."""
PRECISION_TO_QTYPE = {"int8": "QInt8", "uint8": "QUInt8"}
"""OnnxQuantization's ``precision`` (Olive) -> onnxruntime's weight_type/activation_type names."""
IGNORED_PASS_KEYS = {
    "disable_search": "honed searches only parameters given as lists or SEARCHABLE_VALUES",
    "clean_run_cache": "run `honed cache clean` instead",
    "output_name": "outputs go to output_dir",
    "save_data_config": "honed stores data configs in footprints.json",
    "host": "the engine's host runs every pass",
    "evaluator": "set engine.evaluator",
}
PASS_RENAMES = {"lora_r": "r", "lora_alpha": "alpha"}
RENAMES_BY_TYPE = {"OrtSessionParamsTuning": {"execution_providers_list": "providers_list"}}
"""Olive's later spellings of a pass option -> the name the pass takes."""
LORA_TYPES = {"LoRA", "QLoRA", "DoRA", "LoftQ", "LoRA+"}
QUANT_ONLY_KEYS = {"double_quant", "quant_type", "compute_dtype"}
PASS_TYPE_ALIASES = {
    "OnnxMatMul4Quantizer": "OnnxBlockWiseRtnQuantization",
    "OrtPerfTuning": "OrtSessionParamsTuning",
    "GenAIModelExporter": "ModelBuilder",
    "GptqQuantizer": "Gptq",
}
STATIC_ONLY_KEYS = {"data_config", "calibrate_method", "calibration_sampling_size", "quant_format",
                    "activation_type", "precision", "prepare_qnn_config", "qnn_extra_options"}
"""OnnxQuantization keys that only make sense for static quantization (Olive picks static when one is given)."""
ORT_QUANT_EXTRA_OPTIONS = {
    "MatMulConstBOnly", "WeightSymmetric", "ActivationSymmetric", "EnableSubgraph", "ForceQuantizeNoInputCheck",
    "AddQDQPairToWeight", "OpTypesToExcludeOutputQuantization", "DedicatedQDQPair", "QDQOpTypePerChannelAxis",
    "CalibTensorRangeSymmetric", "CalibMovingAverage", "CalibMovingAverageConstant", "SmoothQuant",
    "SmoothQuantAlpha", "SmoothQuantFolding", "UseQDQContribOps", "MinimumRealRange", "QDQKeepRemovableActivations",
    "QDQDisableWeightAdjustForInt32Bias", "TensorQuantOverrides",
}
"""onnxruntime.quantization ``extra_options`` keys Olive lets a file write at the pass's top level."""
METRIC_SESSION_KEYS = {
    "io_bind": "honed's runtime binds no device buffers; outputs are the same, only copy overhead differs",
    "inference_settings": "honed measures with the model's own session settings (OrtSessionParamsTuning "
                          "writes them); set those instead",
    "shared_kv_buffer": "honed's runtime keeps its own KV cache",
    "run_kwargs": "honed calls the model with its inputs only",
}
"""Olive metric user_config keys about its inference session: named in a warning (honed measures without them)."""
INPUT_MODEL_SCRIPT_KEYS = ("model_script", "script_dir", "model_loader", "dummy_inputs_func", "io_config")
"""Olive pass types that are another name of a honed pass (same options)."""
RUNS_AS = {
    "OptimumConversion": ("OnnxConversion", "honed exports with torch.onnx, not Optimum; the ONNX graph has the "
                                            "same inputs and outputs"),
    "GptqModel": ("Gptq", "honed quantizes with its own GPTQ, not the gptqmodel library; the algorithm and the "
                          "output format are the same"),
    "AutoAWQQuantizer": ("Awq", "honed quantizes with its own AWQ, not the autoawq library; the algorithm is the "
                                "same and the output is Olive's quantized format, which ModelBuilder builds"),
}
"""Olive pass types honed runs with a different implementation of the same step; a warning says so."""
IGNORED_OPTIMUM_KEYS = {
    "device": "honed exports on the host system's device",
    "extra_args": "honed's exporter takes target_opset and torch_dtype",
}
UNSUPPORTED_TABLE = Path(__file__).with_name("olive_unsupported.yaml")


def _unsupported() -> list[dict[str, Any]]:
    return yaml.safe_load(UNSUPPORTED_TABLE.read_text(encoding="utf-8"))


UNSUPPORTED: list[dict[str, Any]] = _unsupported()
"""Every Olive key, pass type and system type honed does not support (``olive_unsupported.yaml``): each entry has
``kind`` (pass, system or key), ``olive`` (what the file says), ``why`` and ``instead``; pass and system entries
list their ``types``.  Refusals quote it, the field corpus test checks against it and docs/coming-from-olive.md is
generated from it."""
UNSUPPORTED_PASSES: dict[str, tuple[str, str]] = {
    t: (u["why"], u["instead"]) for u in UNSUPPORTED if u["kind"] == "pass" for t in u["types"]}
UNSUPPORTED_SYSTEMS: dict[str, tuple[str, str]] = {
    t: (u["why"], u["instead"]) for u in UNSUPPORTED if u["kind"] == "system" for t in u["types"]}


def unsupported_key(olive: str) -> tuple[str, str]:
    """(why, instead) of the ``kind: key`` entry whose ``olive`` text starts with ``olive``."""
    entry = next(u for u in UNSUPPORTED if u["kind"] == "key" and u["olive"].startswith(olive))
    return entry["why"], entry["instead"]


SKIPPED_PASSES = {
    "AddOliveMetadata": "it writes Olive's provenance into the ONNX file's metadata, which changes no output; "
                        "honed records every pass, its config and its inputs in footprints.json",
}
"""Olive pass types that change nothing a model computes: left out of the plan with a warning."""
AUTO_OPT_PASSES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "fp32": [("conversion", {"type": "OnnxConversion"}), ("optimization", {"type": "OrtTransformersOptimization"})],
    "fp16": [("conversion", {"type": "OnnxConversion"}), ("optimization", {"type": "OrtTransformersOptimization"}),
             ("fp16", {"type": "OnnxFloatToFloat16"})],
    "int8": [("conversion", {"type": "OnnxConversion"}), ("optimization", {"type": "OrtTransformersOptimization"}),
             ("int8", {"type": "OnnxDynamicQuantization"})],
    "int4": [("conversion", {"type": "OnnxConversion"}), ("int4", {"type": "OnnxBlockWiseRtnQuantization"})],
}
"""The passes Olive's auto-optimizer picks for a causal LM by precision (without use_model_builder)."""
AUTO_OPT_KEYS = {"precision", "precisions", "use_model_builder", "calibration_data_config", "generate_config_only",
                 "disable_auto_optimizer"}
SEARCH_ALGORITHMS = {"exhaustive": "sequential", "random": "random", "tpe": "tpe", "qmc": "qmc", "nsgaII": "nsgaII"}
"""Olive's ``search_algorithm`` names -> honed's ``search_strategy.sampler``."""
LOAD_KEYS = {"data_name", "data_dir", "data_files", "split", "subset", "trust_remote_code", "streaming"}
PRE_PROCESS_RENAMES = {"source_max_len": "max_seq_len", "corpus_strategy": "strategy"}
IGNORED_PRE_PROCESS = {
    "use_attention_mask": "honed always builds attention masks",
    "dataset_type": "honed builds causal-LM sequences from the template",
}
HF_LOAD_KEYS = ("model_loading_args", "from_pretrained_args")
INPUT_MODEL_DATA = "__input_model_data_config__"
"""Olive's name for the data config made from the seed generation's ``hf_config.dataset``."""
DEVICE_EPS = {"cpu": "CPUExecutionProvider", "gpu": "CUDAExecutionProvider", "npu": "QNNExecutionProvider"}
EP_DEVICES = {"CUDAExecutionProvider": "gpu", "TensorrtExecutionProvider": "gpu", "ROCMExecutionProvider": "gpu",
              "MIGraphXExecutionProvider": "gpu", "DmlExecutionProvider": "gpu", "NvTensorRTRTXExecutionProvider": "gpu",
              "WebGpuExecutionProvider": "gpu", "QNNExecutionProvider": "npu", "VitisAIExecutionProvider": "npu",
              "OpenVINOExecutionProvider": "cpu", "CPUExecutionProvider": "cpu"}
"""The device an execution provider runs on (Olive infers the accelerator from the provider the same way)."""



@dataclass
class Translation:
    """A config in honed's schema, which Olive generation it came from, and what was ignored."""

    config: dict[str, Any]
    generation: str
    warnings: list[str] = field(default_factory=list)


def _marked_generation(raw: dict[str, Any]) -> str | None:
    """seed or legacy when the file carries that generation's marks; None otherwise (current or honed)."""
    text = repr(raw)
    if "params_config" in text:
        return "legacy"
    data = raw.get("data_configs")
    datas = list(data.values()) if isinstance(data, dict) else data if isinstance(data, list) else []
    if "hf_config" in text or any(
        isinstance(d, dict) and isinstance(d.get(section), dict) and d[section].get("params")
        for d in datas for section in ("load_dataset_config", "pre_process_data_config")
    ):
        return "seed"
    passes = raw.get("passes")
    if isinstance(passes, dict) and any(isinstance(p, dict) and "config" in p for p in passes.values()):
        return "seed"
    return None


def _generation(raw: dict[str, Any], translated: dict[str, Any], t: _Translator) -> str:
    """The generation of ``raw``, given its translation: honed when translating changed nothing."""
    marked = _marked_generation(raw)
    if marked:
        return marked
    return "honed" if translated == raw and not t.warnings and not t.problems else "current"


def detect_generation(raw: dict[str, Any]) -> str:
    """Name the schema generation of a workflow dict: seed, legacy, current or honed."""
    t = _Translator()
    return _generation(raw, t.workflow(copy.deepcopy(raw)), t)


def _canonical_pass_type(kind: str) -> str:
    """``kind`` spelled as honed or Olive registers it (``qlora`` -> ``QLoRA``); unknown names unchanged."""
    from honed.passes.base import all_passes

    names = [*all_passes(), *PASS_TYPE_ALIASES, *RUNS_AS, *UNSUPPORTED_PASSES, *SKIPPED_PASSES, "OnnxQuantization",
             "OnnxIODataTypeConverter"]
    return next((n for n in names if n.lower() == kind.lower()), kind)


def _unwrap(d: Any) -> Any:
    """Olive's ``{"type": ..., "config": {...}}`` -> ``{"type": ..., **config}``."""
    if isinstance(d, dict) and isinstance(d.get("config"), dict):
        inner = dict(d["config"])
        out = {k: v for k, v in d.items() if k != "config"}
        out.update(inner)
        return out
    return d


def _shape(value: Any) -> str:
    """How a config author would name the type of a JSON/YAML value."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    shown = repr(value) if isinstance(value, bool | int | float | str) and len(repr(value)) <= 40 else ""
    return names.get(type(value), type(value).__name__) + (f" ({shown})" if shown else "")


def _is_azure(value: Any) -> bool:
    return isinstance(value, dict) and str(value.get("type", "")).lower().startswith("azureml")


class _Translator:
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.problems: list[ConfigProblem] = []
        self.new_data_configs: list[dict[str, Any]] = []
        self.searching = False
        """Whether the workflow has a search_strategy (SEARCHABLE_VALUES is the default value otherwise)."""
        """Data configs made from Olive's ``dataloader_func`` keys (metrics, passes)."""

    def ignore(self, key: str, why: str) -> None:
        self.warnings.append(f"{key}: ignored ({why})")

    def mapping(self, key: str, value: Any, what: str = "keys", unwrap: bool = True) -> dict[str, Any] | None:
        """A copy of ``value`` (Olive's ``{type, config}`` unwrapped) when it is a mapping; None when it is
        absent; a problem naming ``key`` when it has another shape (the translator reads into it)."""
        if value is None:
            return None
        value = _unwrap(value) if unwrap else value
        if not isinstance(value, dict):
            self.problems.append(ConfigProblem(key, f"must be a mapping of {what}, got {_shape(value)}"))
            return None
        return dict(value)

    def providers(self, key: str, value: Any) -> list[str] | None:
        """Olive's ``execution_providers``: a list of provider names (one name alone is read as a list of one)."""
        if value is None:
            return None
        eps = [value] if isinstance(value, str) else value
        if not isinstance(eps, list) or not eps:
            self.problems.append(ConfigProblem(key, f"must be a list of execution provider names, got {_shape(value)}",
                                               "e.g. [\"CPUExecutionProvider\"]"))
            return None
        bad = [(i, execution_provider_problem(ep)) for i, ep in enumerate(eps)]
        for i, problem in bad:
            if problem:
                self.problems.append(ConfigProblem(f"{key}[{i}]", problem))
        return None if any(problem for _, problem in bad) else eps

    # -- sections -------------------------------------------------------------------------------
    def input_model(self, m: Any) -> Any:
        m = _unwrap(m)
        if not isinstance(m, dict):
            return m
        m = dict(m)
        if _is_azure(m.get("model_path")):
            why, instead = unsupported_key("input_model.model_path")
            self.problems.append(ConfigProblem(
                "input_model.model_path", f"'{m['model_path'].get('type')}' is an AzureML model ({why})", instead))
            m.pop("model_path")
        hf = self.mapping("input_model.hf_config", m.pop("hf_config", None), "keys (model_name, task, ...)")
        if hf is not None:
            if "model_name" in hf:
                m.setdefault("model_path", hf["model_name"])
            if "task" in hf:
                m.setdefault("task", hf["task"])
            dataset = self.mapping("input_model.hf_config.dataset", hf.get("dataset"), "dataset keys")
            if dataset is not None:
                self.input_model_data(dataset)
            for k in sorted(set(hf) - {"model_name", "task", "dataset", *HF_LOAD_KEYS}, key=str):
                self.ignore(f"input_model.hf_config.{k}", "honed loads the model with transformers' Auto classes")
            given = m.get("load_kwargs")
            if given is None or isinstance(given, dict):  # any other shape is reported by the schema
                kwargs = dict(given or {})
                for k in HF_LOAD_KEYS:
                    extra = self.mapping(f"input_model.hf_config.{k}", hf.get(k), "from_pretrained arguments")
                    kwargs.update(extra or {})
                if kwargs:
                    m["load_kwargs"] = kwargs
        kind = str(m.get("type", "")).lower()
        if kind in ("pytorchmodel", "hfmodel", "onnxmodel", "genaimodel"):
            m["type"] = {"onnxmodel": "OnnxModel", "genaimodel": "GenAIModel"}.get(kind, "HfModel")
        if m.get("type") in ("PyTorchModel", "HFModel", "HfModel"):
            m["type"] = "HfModel"
        elif m.get("type") == "ONNXModel":
            m["type"] = "OnnxModel"
        for k in ("model_file_format", "generative", "model_attributes"):
            if k in m:
                m.pop(k)
                self.ignore(f"input_model.{k}", "honed reads this from the model files")
        for k in INPUT_MODEL_SCRIPT_KEYS:
            if k in m:
                value = m.pop(k)
                if k == "model_loader" and value:
                    self.problems.append(ConfigProblem(
                        "input_model.model_loader", "honed loads Hugging Face models with transformers' Auto "
                        "classes, not a user function", "save the model with save_pretrained and set model_path "
                        "to that folder"))
                else:
                    self.ignore(f"input_model.{k}", "honed derives ONNX input/output names and example inputs "
                                "from the model's config")
        return m

    def system(self, name: str, s: Any) -> Any:
        s = _unwrap(s)
        if not isinstance(s, dict):
            return s
        s = dict(s)
        kind = s.get("type")
        if isinstance(kind, str) and kind in UNSUPPORTED_SYSTEMS:  # a list/dict type is unhashable
            why, instead = UNSUPPORTED_SYSTEMS[kind]
            self.problems.append(ConfigProblem(f"systems.{name}", f"{kind} systems are not supported by honed "
                                               f"({why})", instead))
            return None
        managed = s.pop("olive_managed_env", None)
        if managed is True:  # honed builds the venv from requirements_file, as Olive does
            s["managed_env"] = True
        elif managed is not None:
            self.ignore(f"systems.{name}.olive_managed_env", f"{managed!r}: honed runs in the environment you give it")
        if "requirements_file" in s and managed is not None and not s.get("managed_env"):  # Olive ignores it too
            s.pop("requirements_file")
            self.ignore(f"systems.{name}.requirements_file", "only a managed environment (olive_managed_env: true) "
                        "installs it")
        for k in ("hf_token",):
            if k in s:
                s.pop(k)
                self.ignore(f"systems.{name}.{k}", "honed runs in the environment you give it")
        accs = s.get("accelerators")
        if isinstance(accs, list):
            s["accelerators"] = [self.accelerator(f"systems.{name}.accelerators[{i}]", a) for i, a in enumerate(accs)]
        return s

    def accelerator(self, key: str, a: Any) -> Any:
        if isinstance(a, str):
            return {"device": a.lower(), "execution_provider": DEVICE_EPS.get(a.lower(), "CPUExecutionProvider")}
        if not isinstance(a, dict):
            return a
        a = dict(a)
        if "accelerator_type" in a:  # Olive's other name for the device
            a.setdefault("device", a.pop("accelerator_type"))
        eps = self.providers(f"{key}.execution_providers", a.pop("execution_providers", None))
        if eps:
            if len(eps) > 1:
                self.warnings.append(f"{key}.execution_providers: honed targets one provider; using {eps[0]}")
            a.setdefault("execution_provider", eps[0])
        if isinstance(a.get("device"), str):
            a["device"] = a["device"].lower()
            a.setdefault("execution_provider", DEVICE_EPS.get(a["device"], "CPUExecutionProvider"))
        return a

    def data_config(self, i: int, d: Any) -> Any:
        from honed.data.config import BUILTIN_COMPONENTS, COMPONENT_KEYS

        if not isinstance(d, dict):
            return d
        d = dict(d)
        key = f"data_configs[{i}]"
        subs = {section: self.mapping(f"{key}.{section}", d.pop(section, None)) or {}
                for section in COMPONENT_KEYS.values()}
        # The legacy generation names components (components.<kind>.type) and their arguments
        # (params_config.component_kwargs.<kind>) apart from each other.
        comps = self.mapping(f"{key}.components", d.pop("components", None), "components") or {}
        legacy = self.mapping(f"{key}.params_config", d.pop("params_config", None))
        kwargs = {}
        if legacy is not None:
            kwargs = self.mapping(f"{key}.params_config.component_kwargs", legacy.pop("component_kwargs", None)) or {}
            from honed.data.config import PreProcessDataConfig

            pre_keys = set(PreProcessDataConfig.model_fields) | set(PRE_PROCESS_RENAMES) | set(IGNORED_PRE_PROCESS)
            subs["load_dataset_config"].update({k: v for k, v in legacy.items() if k in LOAD_KEYS})
            subs["pre_process_data_config"].update({k: v for k, v in legacy.items() if k in pre_keys - LOAD_KEYS})
            for k in sorted(set(legacy) - LOAD_KEYS - pre_keys, key=str):
                self.ignore(f"{key}.params_config.{k}", "not a data loading or pre-processing option honed knows")
        for kind in sorted({*comps, *kwargs}, key=str):
            section = COMPONENT_KEYS.get(kind)
            if section is None:
                self.problems.append(ConfigProblem(f"{key}.components.{kind}", "unknown data component",
                                                   "use " + ", ".join(COMPONENT_KEYS)))
                continue
            comp = self.mapping(f"{key}.components.{kind}", comps.get(kind)) or {}
            subs[section].update(comp)
            subs[section].update(self.mapping(f"{key}.params_config.component_kwargs.{kind}", kwargs.get(kind)) or {})
        for kind, section in COMPONENT_KEYS.items():
            sub = subs[section]
            # seed generation: {type, params}; a built-in component's params are honed's own keys
            if sub.get("params") and sub.get("type") in (None, *BUILTIN_COMPONENTS[kind]):
                params = self.mapping(f"{key}.{section}.params", sub.pop("params"))
                sub.update(params or {})
        load, pre = subs["load_dataset_config"], subs["pre_process_data_config"]
        if _is_azure(load.get("data_files")):
            why, instead = unsupported_key("data_configs[*].load_dataset_config.data_files")
            self.problems.append(ConfigProblem(
                f"{key}.load_dataset_config.data_files", f"azureml_datastore data cannot be read ({why})", instead))
            load.pop("data_files")
        for old, new in PRE_PROCESS_RENAMES.items():
            if old in pre:
                pre.setdefault(new, pre.pop(old))
        for k, why in IGNORED_PRE_PROCESS.items():
            if k in pre:
                pre.pop(k)
                self.ignore(f"{key}.pre_process_data_config.{k}", why)
        for section, sub in subs.items():
            if sub:
                d[section] = sub
        return d

    def pass_entry(self, name: str, p: Any) -> Any:
        p = _unwrap(p)
        if not isinstance(p, dict):
            return p
        p = dict(p)
        kind = p.get("type")
        if not isinstance(kind, str):  # the loader names a missing or mistyped type
            return p
        kind = p["type"] = _canonical_pass_type(kind)  # Olive matches pass types case-insensitively
        for k in [k for k, v in p.items() if v == "DEFAULT_VALUE"]:  # Olive's "use the default"
            p.pop(k)
        if not self.searching:
            for k in [k for k, v in p.items() if v == "SEARCHABLE_VALUES"]:
                p.pop(k)
                self.ignore(f"passes.{name}.{k}", "SEARCHABLE_VALUES without a search_strategy: the default "
                            "value, as in Olive")
        if kind == "OnnxIODataTypeConverter":  # Olive's later, general name of OnnxIOFloat16ToFloat32
            src, dst = p.pop("source_dtype", 10), p.pop("target_dtype", 1)
            if src in (10, "float16") and dst in (1, "float32"):
                p["type"] = kind = "OnnxIOFloat16ToFloat32"
            else:
                self.problems.append(ConfigProblem(f"passes.{name}", f"OnnxIODataTypeConverter from {src!r} to "
                                                   f"{dst!r} is not supported (honed converts float16 inputs and "
                                                   "outputs to float32 only)", "use source_dtype 10 (float16) and "
                                                   "target_dtype 1 (float32)"))
        if kind == "OnnxQuantization":
            static = p.get("quant_mode") == "static" or (p.get("quant_mode") is None
                                                         and bool(STATIC_ONLY_KEYS & set(p)))
            p.pop("quant_mode", None)
            p["type"] = kind = "OnnxStaticQuantization" if static else "OnnxDynamicQuantization"
            self.warnings.append(f"passes.{name}.type: OnnxQuantization runs as {kind} "
                                 + ("(static: it has calibration data)" if static else "(no calibration data)"))
        if kind in ("OnnxDynamicQuantization", "OnnxStaticQuantization"):
            top = {k: p.pop(k) for k in sorted(ORT_QUANT_EXTRA_OPTIONS & set(p))}
            if top:
                extra = p.get("extra_options")
                p["extra_options"] = {**top, **(extra if isinstance(extra, dict) else {})}
        for old, new in RENAMES_BY_TYPE.get(kind, {}).items():
            if old in p:
                p.setdefault(new, p.pop(old))
        for k, why in IGNORED_PASS_KEYS_BY_TYPE.get(kind, {}).items():
            if k in p:
                p.pop(k)
                self.ignore(f"passes.{name}.{k}", why)
        if kind == "OnnxStaticQuantization" and isinstance(p.get("precision"), str):
            qtype = PRECISION_TO_QTYPE.get(p["precision"].lower())
            if qtype is None:
                self.problems.append(ConfigProblem(f"passes.{name}.precision", f"{p['precision']!r} is not an 8-bit "
                                                   "precision honed's static quantization writes", "use int8 or "
                                                   "uint8 (4-bit: OnnxBlockWiseRtnQuantization)"))
            else:
                p.setdefault("weight_type", qtype)
                p.setdefault("activation_type", qtype)
            p.pop("precision")
        if kind == "ExtractAdapters" and str(p.get("adapter_type", "lora")).lower() != "lora":
            why, instead = unsupported_key("passes.*.adapter_type (ExtractAdapters)")
            self.problems.append(ConfigProblem(f"passes.{name}.adapter_type", f"ExtractAdapters adapter_type "
                                               f"{p['adapter_type']!r} is not supported ({why})", instead))
        if p.get("dataloader_func") and not p.get("data_config"):
            p["data_config"] = self.loader_data_config(name, p)
        if kind in UNSUPPORTED_PASSES:
            why, instead = UNSUPPORTED_PASSES[kind]
            self.problems.append(ConfigProblem(f"passes.{name}.type", f"Olive's {kind} is not supported by honed "
                                               f"({why})", instead))
            return p
        if kind in PASS_TYPE_ALIASES:
            p["type"] = kind = PASS_TYPE_ALIASES[kind]
        if kind in RUNS_AS:
            p["type"], why = RUNS_AS[kind]
            self.warnings.append(f"passes.{name}.type: {kind} runs as {p['type']} ({why})")
            if kind == "OptimumConversion":
                self.optimum(name, p)
            kind = p["type"]
        for k, why in IGNORED_PASS_KEYS.items():
            if k in p:
                p.pop(k)
                self.ignore(f"passes.{name}.{k}", why)
        if isinstance(p.get("training_args"), dict):
            p["training_args"] = self.training_args(f"passes.{name}.training_args", p["training_args"])
        if kind in LORA_TYPES:
            for old, new in PASS_RENAMES.items():
                if old in p:
                    p.setdefault(new, p.pop(old))
            if kind != "QLoRA":
                for k in sorted(QUANT_ONLY_KEYS & set(p)):
                    p.pop(k)
                    self.ignore(f"passes.{name}.{k}", f"only QLoRA quantizes the base model; {kind} trains it as is")
        return p

    def auto_optimizer(self, auto: dict[str, Any], out: dict[str, Any], engine: dict[str, Any]) -> None:
        """Olive's auto-optimizer (a workflow without passes): the passes it would pick for a causal LM, one pass
        flow per precision, named in a warning; ``generate_config_only`` writes that workflow and runs nothing."""
        precisions = auto.get("precisions") or [auto.get("precision", "fp32")]
        if not isinstance(precisions, list) or any(not isinstance(p, str) or p not in AUTO_OPT_PASSES
                                                   for p in precisions):
            self.problems.append(ConfigProblem("auto_optimizer_config.precision", f"{precisions!r}: honed picks "
                                               "passes for " + ", ".join(AUTO_OPT_PASSES), "list the passes"))
            return
        builder = bool(auto.get("use_model_builder"))
        passes: dict[str, Any] = {}
        flows = []
        for precision in precisions:
            chain = ([("model_builder_" + precision, {"type": "ModelBuilder", "precision": precision})] if builder
                     else [(n, dict(c)) for n, c in AUTO_OPT_PASSES[precision]])
            for n, c in chain:
                if c["type"] == "OnnxDynamicQuantization" and auto.get("calibration_data_config"):
                    c = {"type": "OnnxStaticQuantization", "data_config": auto["calibration_data_config"]}
                passes.setdefault(n, c)
            flows.append([n for n, _ in chain])
        out["passes"] = passes
        if len(flows) > 1:
            out["pass_flows"] = flows
        chosen = "; ".join(" -> ".join(passes[n]["type"] for n in f) for f in flows)
        self.warnings.append(f"auto_optimizer_config: honed runs {chosen} (the passes Olive's auto-optimizer "
                             "picks for this precision); list passes to choose others")
        for k in sorted(set(auto) - AUTO_OPT_KEYS, key=str):
            self.ignore(f"auto_optimizer_config.{k}", "honed's auto-optimizer reads precision(s), "
                        "use_model_builder and calibration_data_config")
        if auto.get("generate_config_only"):
            engine["generate_config_only"] = True

    def input_model_data(self, dataset: dict[str, Any]) -> None:
        """The seed generation's ``hf_config.dataset`` -> the data config Olive names
        ``__input_model_data_config__``, which metrics without a data_config of their own score on."""
        cfg: dict[str, Any] = {"name": INPUT_MODEL_DATA, "load_dataset_config": {}, "pre_process_data_config": {},
                               "dataloader_config": {}}
        for k, v in dataset.items():
            if k in LOAD_KEYS:
                cfg["load_dataset_config"][k] = v
            elif k == "batch_size":
                cfg["dataloader_config"][k] = v
            else:
                cfg["pre_process_data_config"][k] = v
        self.new_data_configs.append(cfg)

    def loader_data_config(self, owner: str, d: dict[str, Any]) -> str | None:
        """Olive's older ``dataloader_func`` (with ``user_script``, ``script_dir``, ``data_dir``, ``batch_size``,
        ``dataloader_func_kwargs``/``func_kwargs``) taken out of ``d`` into a data config of its own, whose name
        is returned (None when ``d`` has none).  honed then calls the user's function through the data layer."""
        func = d.pop("dataloader_func", None)
        if not func:
            return None
        cfg: dict[str, Any] = {"name": f"{owner}_dataloader", "dataloader_func": func,
                               "dataloader_config": {}}
        for k in ("user_script", "script_dir"):
            if k in d:
                cfg[k] = d.pop(k)
        for k in ("data_dir", "batch_size"):
            if k in d:
                cfg["dataloader_config"][k] = d.pop(k)
        for k in ("dataloader_func_kwargs", "func_kwargs"):
            kwargs = d.pop(k, None)
            if isinstance(kwargs, dict):
                cfg["dataloader_config"].update(kwargs)
        self.new_data_configs.append(cfg)
        return cfg["name"]

    def evaluator(self, name: str, e: Any) -> Any:
        """Sub type names of the ``huggingface_metrics`` backend (accuracy, f1) -> honed's (accuracy_score, ...);
        a metric's ``user_config.dataloader_func`` -> a data config of its own."""
        metrics = e.get("metrics") if isinstance(e, dict) else None
        if not isinstance(metrics, list):
            return e
        out = []
        for i, m in enumerate(metrics):
            uc = m.get("user_config") if isinstance(m, dict) else None
            for k in sorted(set(uc) & set(METRIC_SESSION_KEYS) if isinstance(uc, dict) else (), key=str):
                uc = {kk: vv for kk, vv in uc.items() if kk != k}
                m = {**m, "user_config": uc}
                self.ignore(f"evaluators.{name}.metrics[{i}].user_config.{k}", METRIC_SESSION_KEYS[k])
            if isinstance(m, dict) and not m.get("data_config") and m.get("type") in ("accuracy", "perplexity") \
                    and any(d["name"] == INPUT_MODEL_DATA for d in self.new_data_configs):
                m = {**m, "data_config": INPUT_MODEL_DATA}
            uc = m.get("user_config") if isinstance(m, dict) else None
            if isinstance(uc, dict) and uc.get("input_shapes") and not m.get("data_config") \
                    and not uc.get("dataloader_func"):  # Olive's made-up inputs -> its DummyDataContainer
                uc = dict(uc)
                dummy = {k: uc.pop(k) for k in ("input_shapes", "input_names", "input_types") if k in uc}
                cfg = {"name": f"{name}_{m.get('name')}_dummy", "type": "DummyDataContainer",
                       "load_dataset_config": dummy}
                self.new_data_configs.append(cfg)
                m = {**m, "user_config": uc, "data_config": cfg["name"]}
            if isinstance(uc, dict) and uc.get("dataloader_func") and not m.get("data_config"):
                uc = dict(uc)
                m = {**m, "user_config": uc, "data_config": self.loader_data_config(f"{name}_{m.get('name')}", uc)}
            if isinstance(m, dict) and m.get("backend") == "huggingface_metrics" and isinstance(m.get("sub_types"), list):
                hf = hf_metric_names()  # the evaluate library's names -> honed's, from the metric registry
                subs = [{**st, "name": hf.get(st.get("name"), st.get("name"))}
                        if isinstance(st, dict) and isinstance(st.get("name"), str) else st
                        for st in m["sub_types"]]
                m = {**m, "sub_types": subs}
            out.append(m)
        return {**e, "metrics": out}

    def optimum(self, name: str, p: dict[str, Any]) -> None:
        """OptimumConversion's own options, read as OnnxConversion's."""
        if p.pop("fp16", False) is True:
            p.setdefault("torch_dtype", "float16")
        if p.pop("components", None) is not None:
            why, instead = unsupported_key("passes.*.components (OptimumConversion)")
            self.problems.append(ConfigProblem(f"passes.{name}.components", f"OptimumConversion's components are "
                                               f"not supported ({why})", instead))
        for k, why in IGNORED_OPTIMUM_KEYS.items():
            if k in p:
                p.pop(k)
                self.ignore(f"passes.{name}.{k}", why)

    def training_args(self, key: str, args: dict[str, Any]) -> dict[str, Any]:
        """Hugging Face TrainingArguments fields honed does not apply: a warning each, or an error when the
        value would change the trained model."""
        from honed.training.args import unapplied_training_args  # training imports data, which imports config

        warnings, errors = unapplied_training_args(args)
        for k, why in warnings.items():
            self.ignore(f"{key}.{k}", why)
        for k, why in errors.items():
            self.problems.append(ConfigProblem(f"{key}.{k}", "not applied by honed", why))
        return {k: v for k, v in args.items() if k not in warnings and k not in errors}

    def search_strategy(self, s: Any) -> Any:
        """Olive's ``search_algorithm`` + ``search_algorithm_config`` (and ``sampler_config``) -> honed's sampler."""
        if not isinstance(s, dict):
            return s
        s = dict(s)
        algo = s.pop("search_algorithm", None)
        if algo is not None:
            if not isinstance(algo, str) or algo not in SEARCH_ALGORITHMS:  # a list/dict is unhashable
                self.problems.append(ConfigProblem(
                    "search_strategy.search_algorithm", f"unknown search algorithm {algo!r}",
                    "use one of " + ", ".join(SEARCH_ALGORITHMS)))
            else:
                s.setdefault("sampler", SEARCH_ALGORITHMS[algo])
        for section in ("search_algorithm_config", "sampler_config"):
            conf = self.mapping(f"search_strategy.{section}", s.pop(section, None), unwrap=False) or {}
            for k, v in conf.items():
                if k == "num_samples":
                    s.setdefault("max_iter", v)
                elif k == "seed":
                    s.setdefault("seed", v)
                else:
                    self.ignore(f"search_strategy.{section}.{k}", "honed's samplers take only num_samples and seed")
        if "max_samples" in s:  # Olive 0.8's flat spelling of search_algorithm_config.num_samples
            s.setdefault("max_iter", s.pop("max_samples"))
        if "include_pass_params" in s:
            s.pop("include_pass_params")
            self.ignore("search_strategy.include_pass_params", "honed searches the parameters given as lists")
        return s

    def data_configs(self, value: Any) -> Any:
        """The first generation's ``{name: config}`` mapping -> a list of named configs."""
        if not isinstance(value, dict):
            return value
        out = []
        for name, d in value.items():
            if isinstance(d, dict) and d.get("name", name) != name:
                self.ignore(f"data_configs.{name}.name", f"passes refer to this data config by its key "
                            f"'{name}', as in Olive, not by {d['name']!r}")
            out.append({**d, "name": name} if isinstance(d, dict) else d)
        return out

    # -- whole file -------------------------------------------------------------------------------
    def workflow(self, raw: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        engine = self.mapping("engine", raw.get("engine"), "keys (cache_dir, output_dir, host, ...)",
                              unwrap=False) or {}
        for k, v in raw.items():
            if k in ENGINE_KEYS or k in IGNORED_ENGINE_KEYS or k == "execution_providers":
                engine.setdefault(k, v)
            elif k != "engine":
                out[k] = v
        if "search_strategy" in engine:
            out.setdefault("search_strategy", engine.pop("search_strategy"))
        if out.get("search_strategy") is False:
            out.pop("search_strategy")
        elif out.get("search_strategy") is True:
            out["search_strategy"] = {}
        if "search_strategy" in out:
            out["search_strategy"] = self.search_strategy(out["search_strategy"])
            self.searching = out["search_strategy"] is not None
        out.pop("$schema", None)  # an editor hint (Olive's JSON Schema URL); it changes nothing
        if "data_configs" in out:
            out["data_configs"] = self.data_configs(out["data_configs"])
        cache_config = self.mapping("cache_config", raw.get("cache_config", engine.pop("cache_config", None)),
                                    unwrap=False)
        out.pop("cache_config", None)
        for k, v in (cache_config or {}).items():
            if k in CACHE_CONFIG_KEYS:
                engine.setdefault(CACHE_CONFIG_KEYS[k], v)
            else:
                self.ignore(f"cache_config.{k}", "honed's cache is content-addressed and local; see `honed cache`")
        for k in ("host", "target"):
            if isinstance(engine.get(k), dict):  # a system written inline: give it a name under systems
                systems = out.setdefault("systems", {})
                if isinstance(systems, dict):
                    name = f"{k}_system" if f"{k}_system" not in systems else f"engine_{k}"
                    systems[name] = engine[k]
                    engine[k] = name
        auto = engine.pop("auto_optimizer_config", None)
        if isinstance(auto, dict) and not auto.get("disable_auto_optimizer") and not raw.get("passes"):
            self.auto_optimizer(auto, out, engine)
        elif auto is not None:
            self.ignore("engine.auto_optimizer_config", "Olive uses it only when a workflow lists no passes")
        if raw.get("workflow_host") is not None or engine.get("workflow_host") is not None:
            why, instead = unsupported_key("workflow_host")
            self.problems.append(ConfigProblem("workflow_host", f"not supported ({why})", instead))
        out.pop("workflow_host", None)
        engine.pop("workflow_host", None)
        for k, why in IGNORED_ENGINE_KEYS.items():
            if k in engine:
                engine.pop(k)
                self.ignore(f"engine.{k}", why)
        engine_eps = self.providers("engine.execution_providers", engine.pop("execution_providers", None))

        if "input_model" in out:
            out["input_model"] = self.input_model(out["input_model"])
        if engine_eps and not out.get("systems"):  # Olive's default system: this machine with those providers
            device = EP_DEVICES.get(engine_eps[0], "cpu")
            out["systems"] = {"local_system": {"type": "LocalSystem", "accelerators": [
                {"device": device, "execution_provider": engine_eps[0]}]}}
            engine.setdefault("host", "local_system")
            engine.setdefault("target", "local_system")
            if len(engine_eps) > 1:
                self.warnings.append(f"engine.execution_providers: honed targets one provider; using {engine_eps[0]}")
        if isinstance(out.get("systems"), dict):
            systems = {n: self.system(n, s) for n, s in out["systems"].items()}
            out["systems"] = {n: s for n, s in systems.items() if s is not None}
            if engine_eps:
                for s in out["systems"].values():
                    accs = s.get("accelerators") if isinstance(s, dict) else None
                    for a in accs if isinstance(accs, list) else []:
                        device = a.get("device") if isinstance(a, dict) else None
                        if isinstance(device, str) and a.get("execution_provider") == DEVICE_EPS.get(device):
                            a["execution_provider"] = engine_eps[0]
        if isinstance(out.get("data_configs"), list):
            out["data_configs"] = [self.data_config(i, d) for i, d in enumerate(out["data_configs"])]
        if isinstance(out.get("passes"), dict):
            for n in [n for n, q in out["passes"].items() if isinstance(q, dict)
                      and _canonical_pass_type(str(_unwrap(q).get("type"))) in SKIPPED_PASSES]:
                kind = _canonical_pass_type(str(_unwrap(out["passes"].pop(n)).get("type")))
                self.warnings.append(f"passes.{n}: {kind} skipped ({SKIPPED_PASSES[kind]})")
                if isinstance(out.get("pass_flows"), list):
                    out["pass_flows"] = [[x for x in f if x != n] if isinstance(f, list) else f
                                         for f in out["pass_flows"]]
            out["passes"] = {
                n: [self.pass_entry(n, q) for q in p] if isinstance(p, list) else self.pass_entry(n, p)
                for n, p in out["passes"].items()
            }
        if isinstance(out.get("evaluators"), dict):
            out["evaluators"] = {n: self.evaluator(n, _unwrap(e)) for n, e in out["evaluators"].items()}
        if self.new_data_configs:
            datas = out.get("data_configs")
            if datas is None or isinstance(datas, list):
                out["data_configs"] = [*(datas or []), *self.new_data_configs]
        systems = raw.get("systems")
        kept = out.get("systems")
        dropped = ({n for n in systems if not isinstance(kept, dict) or n not in kept}
                   if isinstance(systems, dict) else set())
        for k in ("host", "target"):
            if isinstance(engine.get(k), str) and engine[k] in dropped:
                engine.pop(k)
        if engine:
            out["engine"] = engine
        return out


def translate(raw: dict[str, Any], source: str = "") -> Translation:
    """Translate any supported generation into honed's schema; raise ConfigError for cloud-only parts."""
    t = _Translator()
    config = t.workflow(copy.deepcopy(raw))
    if t.problems:
        raise ConfigError(t.problems, source)
    return Translation(config, _generation(raw, config, t), t.warnings)
