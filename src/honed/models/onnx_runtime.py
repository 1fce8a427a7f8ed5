"""Running what the ONNX passes produce, at the session level: onnxruntime sessions (with past
key/values fed explicitly, tuned session settings applied) and onnxruntime-genai models.  Scoring and
generation over them (and over HF models) live in ``honed.models.runtime``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from honed.errors import ModelNotFoundError, UserError
from honed.util.runtime_flavour import import_runtime

_NP_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "float32",
             "tensor(int64)": "int64", "tensor(int32)": "int32"}


def model_kind(path: str | Path) -> str:
    """'genai', 'onnx' or 'hf' for a folder or file on disk."""
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"model not found: {p}; give a genai, ONNX or Hugging Face model folder")
    if p.is_file():
        if p.suffix == ".onnx":
            return "onnx"
        raise UserError(f"{p} is not a model: give a folder or a .onnx file")
    if (p / "genai_config.json").is_file():
        return "genai"
    if list(p.glob("*.onnx")):
        return "onnx"
    if (p / "config.json").is_file():
        return "hf"
    raise UserError(f"{p} holds no genai_config.json, .onnx file or config.json; it is not a model folder")


# ---------------------------------------------------------------- tuned session settings

SETTINGS_FILE = "inference_settings.json"
"""Sidecar beside an ONNX model with the session settings OrtSessionParamsTuning chose.

Olive's ``inference_settings`` shape: ``{"model_file": "model.onnx", "execution_provider": [ep],
"provider_options": [{...}], "session_options": {"intra_op_num_threads": int, "inter_op_num_threads": int,
"execution_mode": 0 | 1, "graph_optimization_level": 0 | 1 | 2 | 3 | 99, "extra_session_config": {key: str}},
"io_bind": false}``.  Every ``OnnxSession`` over that model file applies it; provider options only when
the session's first provider is the one they were tuned for."""

GRAPH_OPT_LEVELS = (0, 1, 2, 3, 99)
"""onnxruntime's GraphOptimizationLevel values: disable all, basic, extended, layout, all."""


def read_inference_settings(model_file: Path) -> dict[str, Any]:
    """The settings in ``SETTINGS_FILE`` beside ``model_file`` when the file names that model; else {}.

    Raises UserError (naming the file and key) for a sidecar honed cannot apply.
    """
    f = model_file.parent / SETTINGS_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{f} is not readable JSON ({e}); delete it or rerun OrtSessionParamsTuning") from e
    if not isinstance(data, dict):
        raise UserError(f"{f} must hold a JSON object; delete it or rerun OrtSessionParamsTuning")
    if data.get("model_file", model_file.name) != model_file.name:
        return {}
    check_session_settings(data.get("session_options") or {}, str(f))
    return data


def check_session_settings(options: Any, where: str) -> None:
    """Raise UserError when ``options`` (a session_options mapping) holds a value onnxruntime would reject."""
    def bad(key: str, want: str) -> UserError:
        return UserError(f"{where}: session_options.{key} must be {want} (got {options.get(key)!r}); "
                         "fix it or rerun OrtSessionParamsTuning")

    if not isinstance(options, dict):
        raise UserError(f"{where}: session_options must be a mapping; fix it or rerun OrtSessionParamsTuning")
    for key in ("intra_op_num_threads", "inter_op_num_threads"):
        v = options.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 4096):
            raise bad(key, "an integer from 0 to 4096 (0: onnxruntime's choice)")
    if options.get("execution_mode") not in (None, 0, 1) or isinstance(options.get("execution_mode"), bool):
        raise bad("execution_mode", "0 (sequential) or 1 (parallel)")
    level = options.get("graph_optimization_level")
    if level is not None and (isinstance(level, bool) or level not in GRAPH_OPT_LEVELS):
        raise bad("graph_optimization_level", "one of 0, 1, 2, 3, 99")
    extra = options.get("extra_session_config")
    if extra is not None and not (isinstance(extra, dict) and all(isinstance(v, str) for v in extra.values())):
        raise bad("extra_session_config", "a mapping of config keys to strings")


def build_session_options(settings: dict[str, Any], threads: int | None = None) -> Any:
    """``onnxruntime.SessionOptions`` for ``settings`` (the sidecar's shape; {} for none).

    Intra-op threads: ``threads``, else the settings' count, else ``physical_cores()`` (as load_genai:
    onnxruntime's default was slower on small VMs).  When the CPUs are shared (``honed.util.cpus``) the pools
    do not spin, unless the settings' ``extra_session_config`` sets that key itself.  Unset fields keep
    onnxruntime's defaults.
    """
    from honed.util.cpus import ort_config_entries

    ort = import_runtime("onnxruntime")

    so = settings.get("session_options") or {}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads or so.get("intra_op_num_threads") or physical_cores()
    if so.get("inter_op_num_threads"):
        opts.inter_op_num_threads = so["inter_op_num_threads"]
    if so.get("execution_mode") is not None:
        opts.execution_mode = ort.ExecutionMode(so["execution_mode"])
    if so.get("graph_optimization_level") is not None:
        opts.graph_optimization_level = ort.GraphOptimizationLevel(so["graph_optimization_level"])
    extra = so.get("extra_session_config") or {}
    for key, value in {**ort_config_entries(extra), **extra}.items():
        opts.add_session_config_entry(key, value)
    return opts


class OnnxSession:
    """An onnxruntime session plus the feeding rules of exported LMs: position ids from the
    mask, zero token_type_ids, empty past key/values on the first step.

    ``settings`` None reads the tuned settings beside the model (``SETTINGS_FILE``); a dict (``{}``: none)
    is used instead of them.  ``self.settings`` is what was applied.
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None,
                 settings: dict[str, Any] | None = None) -> None:
        ort = import_runtime("onnxruntime")

        p = Path(path)
        if p.is_dir():
            p = p / "model.onnx" if (p / "model.onnx").exists() else next(iter(sorted(p.glob("*.onnx"))), p)
        if settings is None:
            settings = read_inference_settings(p)
        else:
            check_session_settings(settings.get("session_options") or {}, "session settings")
        opts = build_session_options(settings, threads)
        providers = providers or ["CPUExecutionProvider"]
        provider_options = None
        tuned_eps = settings.get("execution_provider") or []
        tuned_opts = settings.get("provider_options") or []
        if (isinstance(tuned_eps, list) and isinstance(tuned_opts, list) and tuned_eps and tuned_opts
                and tuned_eps[0] == providers[0] and isinstance(tuned_opts[0], dict)):
            provider_options = [{k: str(v) for k, v in tuned_opts[0].items()}] + [{} for _ in providers[1:]]
        self.path = p
        self.settings = settings
        self.session = ort.InferenceSession(str(p), opts, providers=providers, provider_options=provider_options)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values")]
        self.present_names = [n for n in self.output_names if n.startswith("present")]

    @property
    def is_causal_lm(self) -> bool:
        return bool(self.past_names) or ("logits" in self.output_names and "position_ids" in self.inputs)

    @staticmethod
    def position_ids(mask: Any, past_len: int = 0) -> Any:
        """HF's convention: cumulative count of real tokens, 0-based, padding at 1."""
        import numpy as np

        pos = np.cumsum(mask, axis=-1) - 1
        pos[mask == 0] = 1
        return pos[:, past_len:].astype(np.int64)

    def empty_past(self, batch: int) -> dict[str, Any]:
        import numpy as np

        past = {}
        for name in self.past_names:
            meta = self.inputs[name]
            heads, head_dim = meta.shape[1], meta.shape[3]
            if not isinstance(head_dim, int):
                head_dim = self._head_size()
            if not isinstance(heads, int) or not isinstance(head_dim, int):
                raise UserError(f"{self.path}: input {name} has no fixed head count/size ({meta.shape})")
            past[name] = np.zeros((batch, heads, 0, head_dim), dtype=_NP_TYPES.get(meta.type, "float32"))
        return past

    def _head_size(self) -> int | None:
        """Head size from genai_config.json or config.json beside the model (symbolic in the graph)."""
        folder = self.path.parent
        if (folder / "genai_config.json").is_file():
            return json.loads((folder / "genai_config.json").read_text())["model"]["decoder"].get("head_size")
        if (folder / "config.json").is_file():
            cfg = json.loads((folder / "config.json").read_text())
            return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        return None

    def feeds(self, ids: Any, mask: Any, past: dict[str, Any] | None = None) -> dict[str, Any]:
        """Inputs for one step: ``mask`` covers past + new tokens; ``past`` None means empty."""
        import numpy as np

        feeds: dict[str, Any] = {"input_ids": ids.astype(np.int64)}
        past_len = mask.shape[1] - ids.shape[1]
        if "attention_mask" in self.inputs:
            feeds["attention_mask"] = mask.astype(_NP_TYPES.get(self.inputs["attention_mask"].type, "int64"))
        if "position_ids" in self.inputs:
            feeds["position_ids"] = self.position_ids(mask, past_len)
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        if self.past_names:
            feeds.update(past if past is not None else self.empty_past(ids.shape[0]))
        return feeds

    def run(self, ids: Any, mask: Any, past: dict[str, Any] | None = None) -> list[Any]:
        return self.session.run(None, self.feeds(ids, mask, past))

    def step(self, ids: Any, mask: Any, past: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        """Logits and the next step's past (presents renamed to past inputs)."""
        outs = dict(zip(self.output_names, self.run(ids, mask, past), strict=True))
        new_past = {
            p: outs[p.replace("past_key_values", "present")] for p in self.past_names
        }
        return outs["logits"], new_past


# ---------------------------------------------------------------- onnxruntime-genai


def physical_cores() -> int:
    """Default intra-op threads: one per physical core this process may use (``honed.util.cpus``)."""
    from honed.util.cpus import cpu_budget

    return cpu_budget().threads


def load_genai(folder: Path, threads: int | None = None) -> tuple[Any, int]:
    """``og.Model`` over ``folder`` with one intra-op thread per physical core (or ``threads``), and
    the model's context length.

    Why the threads: onnxruntime-genai leaves the count to onnxruntime's default, which on a 2-core VM
    decoded SmolLM2 int4 at 98 tokens/s against 160 with 2 threads set.  A count the folder's
    genai_config.json sets itself is kept unless ``threads`` is given.  When the CPUs are shared
    (``honed.util.cpus``) the pools do not spin, unless the folder's session_options set that key (genai
    passes a session_options key with a string value to onnxruntime as a config entry).
    """
    from honed.util.cpus import ort_config_entries

    og = import_runtime("onnxruntime_genai")

    cfg = json.loads((folder / "genai_config.json").read_text())
    context_length = int(cfg.get("model", {}).get("context_length", 2048))
    options = cfg.get("model", {}).get("decoder", {}).get("session_options", {})
    overlay: dict[str, Any] = dict(ort_config_entries(options))
    if threads is not None or "intra_op_num_threads" not in options:
        overlay["intra_op_num_threads"] = threads or physical_cores()
    if not overlay:
        return og.Model(str(folder)), context_length
    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": overlay}}}))
    return og.Model(config), context_length
