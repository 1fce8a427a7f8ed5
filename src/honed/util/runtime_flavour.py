"""Which onnxruntime build ("flavour") is installed: the one way honed imports onnxruntime and onnxruntime-genai.

Why: onnxruntime ships one import package (``onnxruntime``; ``onnxruntime_genai`` for genai) under a distribution
name per hardware (``onnxruntime``, ``onnxruntime-gpu``, ``onnxruntime-directml``...).  pip sees different names,
so it installs a second flavour beside the first without a word: both write the same folder, the last one wins
file by file, and uninstalling either deletes files the other needs.  So honed depends on no flavour (the user
picks one with an extra: ``honed[cpu]``, ``honed[cuda]``, ``honed[directml]``), every import of the runtimes in
honed goes through :func:`import_runtime`, which turns "not installed" into one line naming the extra, and two
flavours side by side are named in one warning.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import sys
from types import ModuleType

from honed.errors import UserError

log = logging.getLogger("honed")

FLAVOURS: dict[str, dict[str, str]] = {
    "onnxruntime": {
        "onnxruntime": "cpu", "onnxruntime-gpu": "cuda", "onnxruntime-directml": "directml",
        "onnxruntime-openvino": "", "onnxruntime-qnn": "", "onnxruntime-rocm": "", "onnxruntime-migraphx": "",
        "onnxruntime-training": "",
    },
    "onnxruntime_genai": {
        "onnxruntime-genai": "cpu", "onnxruntime-genai-cuda": "cuda", "onnxruntime-genai-directml": "directml",
    },
}
"""Import package -> the distributions that provide it -> honed's extra that installs that one ('' for none)."""

_checked = False


def installed_flavours(package: str) -> dict[str, str]:
    """The distributions providing ``package`` (``onnxruntime`` or ``onnxruntime_genai``) installed here, with
    their versions; read from package metadata, so nothing is imported."""
    out = {}
    for dist in FLAVOURS[package]:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def missing_message(package: str) -> str:
    """The one line for ``package`` not being importable: which extra installs it."""
    name = package.replace("_", "-")
    # Half a non-CPU flavour already here (onnxruntime-gpu without onnxruntime-genai-cuda): name the extra that
    # completes it, not the CPU one, which would put a second flavour beside it.
    for pkg, flavours in FLAVOURS.items():
        for dist in installed_flavours(pkg):
            if flavours[dist] not in ("", "cpu"):
                return f"{name} is not installed: pip install 'honed[{flavours[dist]}]' ({dist} is installed here)"
    windows = ", or 'honed[directml]' on Windows with DirectML" if sys.platform == "win32" else ""
    return f"{name} is not installed: pip install 'honed[cpu]' (or 'honed[cuda]' on a CUDA host{windows})"


def mixed_flavours() -> list[str]:
    """One line per import package that more than one flavour provides here (empty when all is well)."""
    lines = []
    for package, flavours in FLAVOURS.items():
        found = list(installed_flavours(package))
        if len(found) > 1:
            keep = next((d for d in found if flavours[d] not in ("", "cpu")), found[0])
            extra = flavours[keep]
            reinstall = f"pip install 'honed[{extra}]'" if extra else f"pip install {keep}"
            lines.append(f"{' and '.join(found)} are installed side by side and share the '{package}' folder, so "
                         f"one overwrote the other's files; keep one: pip uninstall -y {' '.join(found)} "
                         f"&& {reinstall}")
    return lines


def warn_if_mixed() -> None:
    """Log the :func:`mixed_flavours` lines, the first time it is called in a process (the check reads package
    metadata, and runtimes are opened many times in one run)."""
    global _checked
    if _checked:
        return
    _checked = True
    for line in mixed_flavours():
        log.warning(line)


def import_runtime(module: str = "onnxruntime") -> ModuleType:
    """``module`` imported (``onnxruntime``, ``onnxruntime_genai`` or a submodule of either).

    A runtime that is not installed is a UserError naming the extra that installs it; any other missing
    module (a submodule an older release lacks, ``onnx_ir`` under the genai builder) is raised as it is.
    """
    package = module.partition(".")[0]
    if package not in FLAVOURS:
        raise ValueError(f"import_runtime imports onnxruntime or onnxruntime_genai, not {module!r}")
    try:
        importlib.import_module(package)  # first the package itself: its absence is the user's to fix
    except ModuleNotFoundError as e:
        if e.name not in FLAVOURS:  # something the runtime itself imports
            raise
        raise UserError(missing_message(e.name)) from e
    warn_if_mixed()
    return importlib.import_module(module)
