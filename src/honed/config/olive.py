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
from typing import Any

from honed.errors import ConfigError, ConfigProblem
from honed.systems.accelerator import execution_provider_problem

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
}
IGNORED_PASS_KEYS = {
    "disable_search": "honed searches only parameters given as lists or SEARCHABLE_VALUES",
    "clean_run_cache": "run `honed cache clean` instead",
    "output_name": "outputs go to output_dir",
    "save_data_config": "honed stores data configs in footprints.json",
    "host": "the engine's host runs every pass",
    "evaluator": "set engine.evaluator",
}
PASS_RENAMES = {"lora_r": "r", "lora_alpha": "alpha"}
LORA_TYPES = {"LoRA", "QLoRA", "DoRA", "LoftQ", "LoRA+"}
QUANT_ONLY_KEYS = {"double_quant", "quant_type", "compute_dtype"}
PASS_TYPE_ALIASES = {
    "OnnxMatMul4Quantizer": "OnnxBlockWiseRtnQuantization",
    "OnnxQuantization": "OnnxDynamicQuantization",
    "OrtTransformersOptimization": "OrtTransformersOptimization",
}
LOAD_KEYS = {"data_name", "data_dir", "data_files", "split", "subset", "trust_remote_code", "streaming"}
PRE_PROCESS_RENAMES = {"source_max_len": "max_seq_len", "corpus_strategy": "strategy"}
IGNORED_PRE_PROCESS = {
    "use_attention_mask": "honed always builds attention masks",
    "dataset_type": "honed builds causal-LM sequences from the template",
}
HF_LOAD_KEYS = ("model_loading_args", "from_pretrained_args")
DEVICE_EPS = {"cpu": "CPUExecutionProvider", "gpu": "CUDAExecutionProvider", "npu": "QNNExecutionProvider"}

AZURE_SYSTEM_HINT = (
    "run on this machine with a LocalSystem ({'type': 'LocalSystem', 'accelerators': [{'device': 'gpu'}]}), "
    "in another interpreter with a PythonEnvironment system, or on a cluster with honed's Ray system"
)


@dataclass
class Translation:
    """A config in honed's schema, which Olive generation it came from, and what was ignored."""

    config: dict[str, Any]
    generation: str
    warnings: list[str] = field(default_factory=list)


def detect_generation(raw: dict[str, Any]) -> str:
    """Name the schema generation of a workflow dict: seed, legacy, current or honed."""
    text = repr(raw)
    if "params_config" in text:
        return "legacy"
    if "'params'" in text or "hf_config" in text:
        return "seed"
    passes = raw.get("passes")
    if isinstance(passes, dict) and any(isinstance(p, dict) and "config" in p for p in passes.values()):
        return "seed"
    if "engine" in raw and not (ENGINE_KEYS | set(IGNORED_ENGINE_KEYS)) & set(raw):
        return "honed"
    return "current"


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
            self.problems.append(ConfigProblem(
                "input_model.model_path",
                f"'{m['model_path'].get('type')}' is an AzureML registry model, which honed cannot fetch",
                "download the model once and set model_path to its folder or hub id",
            ))
            m.pop("model_path")
        hf = self.mapping("input_model.hf_config", m.pop("hf_config", None), "keys (model_name, task, ...)")
        if hf is not None:
            if "model_name" in hf:
                m.setdefault("model_path", hf["model_name"])
            if "task" in hf:
                m.setdefault("task", hf["task"])
            for k in sorted(set(hf) - {"model_name", "task", *HF_LOAD_KEYS}, key=str):
                self.ignore(f"input_model.hf_config.{k}", "honed loads the model with transformers' Auto classes")
            given = m.get("load_kwargs")
            if given is None or isinstance(given, dict):  # any other shape is reported by the schema
                kwargs = dict(given or {})
                for k in HF_LOAD_KEYS:
                    extra = self.mapping(f"input_model.hf_config.{k}", hf.get(k), "from_pretrained arguments")
                    kwargs.update(extra or {})
                if kwargs:
                    m["load_kwargs"] = kwargs
        if m.get("type") in ("PyTorchModel", "HFModel", "HfModel"):
            m["type"] = "HfModel"
        elif m.get("type") == "ONNXModel":
            m["type"] = "OnnxModel"
        for k in ("model_file_format", "io_config", "generative", "model_attributes"):
            if k in m:
                m.pop(k)
                self.ignore(f"input_model.{k}", "honed reads this from the model files")
        return m

    def system(self, name: str, s: Any) -> Any:
        s = _unwrap(s)
        if not isinstance(s, dict):
            return s
        s = dict(s)
        kind = s.get("type")
        if kind in ("AzureML", "AzureMLSystem"):
            self.problems.append(ConfigProblem(
                f"systems.{name}", "AzureML systems run in Azure and are not supported by honed",
                AZURE_SYSTEM_HINT,
            ))
            return None
        if kind in ("Docker", "IsolatedORT"):
            self.problems.append(ConfigProblem(
                f"systems.{name}", f"'{kind}' systems are not supported by honed",
                "use a PythonEnvironment system pointing at the interpreter to isolate, or a LocalSystem",
            ))
            return None
        for k in ("olive_managed_env", "requirements_file", "hf_token"):
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
        if not isinstance(d, dict):
            return d
        d = dict(d)
        key = f"data_configs[{i}]"
        load = self.mapping(f"{key}.load_dataset_config", d.pop("load_dataset_config", None)) or {}
        pre = self.mapping(f"{key}.pre_process_data_config", d.pop("pre_process_data_config", None)) or {}
        for name, sub in (("load_dataset_config", load), ("pre_process_data_config", pre)):
            if "params" in sub:  # seed generation
                params = self.mapping(f"{key}.{name}.params", sub.pop("params"))
                sub.pop("type", None)
                sub.update(params or {})
        load.pop("type", None)
        pre.pop("type", None)
        legacy = self.mapping(f"{key}.params_config", d.pop("params_config", None))
        if legacy is not None:
            comps = self.mapping(f"{key}.params_config.component_kwargs", legacy.pop("component_kwargs", None)) or {}
            load.update({k: v for k, v in legacy.items() if k in LOAD_KEYS})
            for k in sorted(set(legacy) - LOAD_KEYS, key=str):
                self.ignore(f"{key}.params_config.{k}", "not a data loading option honed knows")
            comp_key = f"{key}.params_config.component_kwargs"
            load.update(self.mapping(f"{comp_key}.load_dataset", comps.get("load_dataset")) or {})
            pre.update(self.mapping(f"{comp_key}.pre_process_data", comps.get("pre_process_data")) or {})
            for k in sorted(set(comps) - {"load_dataset", "pre_process_data"}, key=str):
                self.ignore(f"{comp_key}.{k}", "honed batches data itself")
        for k in ("post_process_data_config", "dataloader_config", "components", "user_script", "script_dir"):
            if k in d:
                d.pop(k)
                self.ignore(f"{key}.{k}", "honed tokenizes, packs and batches data itself")
        if _is_azure(load.get("data_files")):
            self.problems.append(ConfigProblem(
                f"{key}.load_dataset_config.data_files",
                "azureml_datastore data cannot be read by honed",
                "copy the file locally, or use an fsspec URL such as az://container/path.jsonl with "
                "AZURE_STORAGE_ACCOUNT_NAME/AZURE_STORAGE_ACCOUNT_KEY set",
            ))
            load.pop("data_files")
        for old, new in PRE_PROCESS_RENAMES.items():
            if old in pre:
                pre.setdefault(new, pre.pop(old))
        for k, why in IGNORED_PRE_PROCESS.items():
            if k in pre:
                pre.pop(k)
                self.ignore(f"{key}.pre_process_data_config.{k}", why)
        if load:
            d["load_dataset_config"] = load
        if pre:
            d["pre_process_data_config"] = pre
        return d

    def pass_entry(self, name: str, p: Any) -> Any:
        p = _unwrap(p)
        if not isinstance(p, dict):
            return p
        p = dict(p)
        kind = p.get("type")
        if not isinstance(kind, str):  # the loader names a missing or mistyped type
            return p
        if kind in PASS_TYPE_ALIASES:
            p["type"] = kind = PASS_TYPE_ALIASES[kind]
        for k, why in IGNORED_PASS_KEYS.items():
            if k in p:
                p.pop(k)
                self.ignore(f"passes.{name}.{k}", why)
        if kind in LORA_TYPES:
            for old, new in PASS_RENAMES.items():
                if old in p:
                    p.setdefault(new, p.pop(old))
            if kind != "QLoRA":
                for k in sorted(QUANT_ONLY_KEYS & set(p)):
                    p.pop(k)
                    self.ignore(f"passes.{name}.{k}", f"only QLoRA quantizes the base model; {kind} trains it as is")
        return p

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
        for k, why in IGNORED_ENGINE_KEYS.items():
            if k in engine:
                engine.pop(k)
                self.ignore(f"engine.{k}", why)
        engine_eps = self.providers("engine.execution_providers", engine.pop("execution_providers", None))

        if "input_model" in out:
            out["input_model"] = self.input_model(out["input_model"])
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
            out["passes"] = {
                n: [self.pass_entry(n, q) for q in p] if isinstance(p, list) else self.pass_entry(n, p)
                for n, p in out["passes"].items()
            }
        if isinstance(out.get("evaluators"), dict):
            out["evaluators"] = {n: _unwrap(e) for n, e in out["evaluators"].items()}
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
    generation = detect_generation(raw)
    t = _Translator()
    config = t.workflow(copy.deepcopy(raw))
    if t.problems:
        raise ConfigError(t.problems, source)
    return Translation(config, generation, t.warnings)
