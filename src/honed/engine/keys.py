"""Cache keys: what a pass output depends on, hashed.

A key covers the input model's identity (content hash), the pass type, its fully resolved
config with the contents of every file it names (data files, scripts), the data configs it
refers to, the host and target, the honed source files the pass is built from, and the versions
of the libraries it declares.  Change any of these and the pass reruns; change nothing and it
does not.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import inspect
from functools import cache
from pathlib import Path
from typing import Any

import honed
from honed.data.config import DataConfig, data_config_refs
from honed.engine.hashing import hash_json, with_content_hashes
from honed.passes.base import Pass, PassConfig
from honed.systems.accelerator import Accelerator

_ROOT = Path(honed.__file__).parent


@cache
def _module_file(name: str) -> Path | None:
    """Source file of a honed module by name; None for names that are not modules (imported objects)."""
    parts = name.split(".")[1:]
    if not parts:
        return _ROOT / "__init__.py"
    for cand in (_ROOT.joinpath(*parts[:-1], parts[-1] + ".py"), _ROOT.joinpath(*parts, "__init__.py")):
        if cand.is_file():
            return cand
    return None


def _honed_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("honed"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("honed"))
    return names


@cache
def code_fingerprint(module: str) -> str:
    """Hash of a honed module's source and every honed module it imports, transitively."""
    seen: dict[str, bytes] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name) if name.startswith("honed") else None
        if path is None:
            seen[name] = b""
            continue
        seen[name] = path.read_bytes()
        todo.extend(_honed_imports(path))
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(name.encode() + b"\0" + hashlib.sha256(seen[name]).digest())
    return h.hexdigest()


def library_versions(pass_cls: type[Pass]) -> dict[str, str]:
    out = {}
    for dist in pass_cls.libraries:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def data_refs(config: PassConfig, data_configs: dict[str, DataConfig]) -> dict[str, Any]:
    """The data configs a pass config names (fields ending in ``data_config``), with file contents hashed."""
    return {key: with_content_hashes(data_configs[name].model_dump(mode="json"))
            for key, name in data_config_refs(config.model_dump()) if name in data_configs}


def pass_key(
    input_id: str, pass_cls: type[Pass], config: PassConfig, data_configs: dict[str, DataConfig],
    host: Accelerator, target: Accelerator, system: str = "local",
) -> str:
    """The cache key of running ``pass_cls`` with ``config`` on the model ``input_id``."""
    module = inspect.getmodule(pass_cls)
    parts = {
        "input": input_id,
        "pass": pass_cls.name,
        "config": with_content_hashes(config.model_dump(mode="json")),
        "data": data_refs(config, data_configs),
        "host": host.model_dump(),
        "system": system,
        "target": target.model_dump(),
        "honed": honed.__version__,
        "code": code_fingerprint(module.__name__) if module else "",
        "libraries": library_versions(pass_cls),
    }
    return hash_json(parts)[:32]
