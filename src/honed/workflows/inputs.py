"""Turn what a user types after ``-m`` into an ``input_model`` section.

A shortcut accepts a Hugging Face folder, a GGUF file, a ``pkg://`` file, a hub id, an ONNX
model, or a PEFT adapter folder (its base read from ``adapter_config.json``).  The task
(causal LM or encoder) is read from ``config.json`` so ``honed optimize`` can pick the right
passes without a flag; nothing is downloaded except, when online, a hub model's config.json.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from honed.errors import UserError
from honed.models.resolve import _HUB_ID, PKG_SCHEME
from honed.util.offline import hub_offline, hub_reachable

log = logging.getLogger("honed")

CAUSAL_LM = "text-generation"
CLASSIFIER = "text-classification"
FEATURES = "feature-extraction"


def _local(path: str) -> Path | None:
    if path.startswith(PKG_SCHEME):
        return None
    p = Path(path).expanduser()
    return p.resolve() if p.exists() else None


def _hub_config(repo_id: str) -> dict[str, Any]:
    """config.json of a hub model: from the HF cache, or downloaded (one small file) when online."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text())
    if hub_offline() or not hub_reachable():
        return {}
    try:
        return json.loads(Path(hf_hub_download(repo_id, "config.json")).read_text())
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
        log.debug("could not read config.json of %s: %s", repo_id, e)
        return {}


def task_from_config(config: dict[str, Any]) -> str:
    """text-generation for causal LMs, text-classification for classifiers, else feature-extraction."""
    archs = config.get("architectures") or []
    arch = archs[0] if archs else ""
    if not arch or arch.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
        return CAUSAL_LM
    if arch.endswith("ForSequenceClassification"):
        return CLASSIFIER
    return FEATURES


def is_onnx(model: str) -> bool:
    """An ONNX file, or a folder holding model.onnx that is not an onnxruntime-genai folder."""
    p = _local(model)
    if p is None:
        return False
    if p.is_file():
        return p.suffix == ".onnx"
    return (p / "model.onnx").is_file() and not (p / "genai_config.json").is_file()


def input_model(model: str, *, adapter_path: str | None = None, task: str | None = None,
                load_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``input_model`` section for ``model`` (see the module docstring for the accepted forms).

    Local paths are made absolute so a saved config runs from any folder.
    """
    local = _local(model)
    section: dict[str, Any] = {}
    config: dict[str, Any] = {}
    if local is not None and local.is_dir() and (local / "genai_config.json").is_file():
        raise UserError(f"-m {model}: this is an onnxruntime-genai model, already optimized; "
                        "give the Hugging Face model it was built from, or run it with `honed generate`")
    if is_onnx(model):
        section = {"type": "OnnxModel", "model_path": str(local)}
        folder = local if local.is_dir() else local.parent
        if (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text())
    elif local is not None and local.is_dir() and (local / "adapter_config.json").is_file() \
            and not (local / "config.json").is_file():
        if adapter_path:
            raise UserError(f"-m {model} is an adapter folder and --adapter-path is set too; "
                            "give the base model with -m and the adapter with --adapter-path")
        adapter_cfg = json.loads((local / "adapter_config.json").read_text())
        base = adapter_cfg.get("base_model_name_or_path")
        if not base:
            raise UserError(f"{local / 'adapter_config.json'}: no base_model_name_or_path; "
                            "give the base with -m BASE --adapter-path ADAPTER")
        inner = input_model(base, task=task, load_kwargs=load_kwargs)
        return {**inner, "adapter_path": str(local)}
    elif local is not None:
        section = {"model_path": str(local)}
        if local.suffix == ".gguf" or (local.is_dir() and not (local / "config.json").is_file()):
            config = {}  # GGUF files hold causal LMs
        elif (local / "config.json").is_file():
            config = json.loads((local / "config.json").read_text())
    elif model.startswith(PKG_SCHEME):
        section = {"model_path": model}
    elif _HUB_ID.match(model) and not model.startswith("."):
        section = {"model_path": model}
        config = _hub_config(model)
    if not section:
        raise UserError(f"-m {model}: not found; give a model folder, a .gguf or .onnx file, "
                        "an adapter folder or a hub id (org/name)")
    section["task"] = task or task_from_config(config)
    if adapter_path:
        p = _local(adapter_path)
        if p is None or not (p / "adapter_config.json").is_file():
            raise UserError(f"--adapter-path {adapter_path}: not a PEFT adapter folder (no adapter_config.json)")
        section["adapter_path"] = str(p)
    if load_kwargs:
        section["load_kwargs"] = dict(load_kwargs)
    return section
