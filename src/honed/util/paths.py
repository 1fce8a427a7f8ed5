"""Resolving the input paths a config names.

As in Olive, a relative path resolves against the working directory.  When nothing is
there but the path exists beside the config file, that one is used and logged once, so a
config keeps working when run from another folder.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationInfo

from honed.util.fs import path_problem

log = logging.getLogger("honed")
_noted: set[str] = set()



def is_url(value: str) -> bool:
    """True for fsspec URLs (s3://, https://, hf://) that are not local paths."""
    return "://" in value and not value.startswith("file://")


def expand_home(value: str) -> str:
    """``~`` and ``~user`` at the start of a local path -> the home folder (URLs are kept as written)."""
    if value.startswith("~"):
        return os.path.expanduser(value)
    if value.startswith("file://~"):
        return "file://" + os.path.expanduser(value[len("file://"):])
    return value


def _check_path(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    problem = path_problem(value)
    if problem:
        raise ValueError(f"path {problem}")
    return expand_home(value)


def _exists(p: Path) -> bool:
    return p.exists() or bool(glob.has_magic(str(p)) and glob.glob(str(p), recursive=True))


def resolve_local(value: str, config_dir: Path | None) -> Path | None:
    """Absolute path ``value`` points to, looking in the cwd first then beside the config."""
    if value.startswith("file://"):
        value = value[len("file://"):]
    p = Path(value).expanduser()
    if p.is_absolute():
        return p if _exists(p) else None
    here = Path.cwd() / p
    if _exists(here):
        return here.resolve() if here.exists() else here
    if config_dir is not None:
        beside = config_dir / p
        if _exists(beside):
            if value not in _noted:
                _noted.add(value)
                log.info("'%s' not found in %s; using the one beside the config: %s", value, Path.cwd(), beside)
            return beside.resolve() if beside.exists() else beside
    return None


def _resolve_input(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, str) or is_url(value):
        return value
    config_dir = (info.context or {}).get("config_dir")
    found = resolve_local(value, Path(config_dir) if config_dir else None)
    if found is None:
        where = f"{Path.cwd()}" + (f" or beside the config in {config_dir}" if config_dir else "")
        raise ValueError(f"file not found: '{value}' (looked in {where}); fix the path")
    return str(found)


LocalPath = Annotated[str, AfterValidator(_check_path)]
"""A path the config names (it may not exist yet): no NUL byte, no over-long name, ``~`` expanded."""

InputPath = Annotated[str, AfterValidator(_check_path), AfterValidator(_resolve_input)]
"""A local file, folder or glob that must exist (or an fsspec URL, kept as is); ``~`` expanded."""


def _python_file(value: Any) -> Any:
    if isinstance(value, str) and not (Path(value).is_file() and value.endswith(".py")):
        raise ValueError(f"'{value}' is not a Python file; give the .py file that defines the function")
    return value


PythonFile = Annotated[str, AfterValidator(_check_path), AfterValidator(_resolve_input), AfterValidator(_python_file)]
"""A local .py file that must exist (user scripts)."""
