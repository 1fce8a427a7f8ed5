"""LocalSystem: run passes in this process, on the CPU or a CUDA device."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from typing import Any, Literal

from pydantic import Field

from honed.systems.base import PassRequest, PassResponse, System, SystemConfig, register_system
from honed.util.accelerator import Accelerator
from honed.util.hashing import library_versions


def device_problem(acc: Accelerator) -> str | None:
    """Why ``acc`` cannot be used on this machine, or None."""
    if acc.device != "gpu":
        return None
    import torch

    if not torch.cuda.is_available():
        return "asks for a gpu but torch sees none (torch.cuda.is_available() is False)"
    return None


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None


def release_memory() -> None:
    """Hand memory freed by a pass back to the OS, so the next pass does not peak on top of it.

    A pass frees its model when it returns, but glibc keeps the freed heap mapped; ``malloc_trim``
    returns it (glibc only; elsewhere this only collects garbage).
    """
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class LocalSystemConfig(SystemConfig):
    """This machine, in the process that runs honed."""

    type: Literal["LocalSystem"] = Field("LocalSystem", description="Runs each pass in this process.")


class LocalSystem(System):
    """Runs each pass in-process. The simplest system and the default."""

    name = "LocalSystem"
    description = "this machine, in the honed process (cpu or a CUDA gpu)"
    config_class = LocalSystemConfig
    identity = "local"

    def environment(self, distributions: tuple[str, ...]) -> dict[str, str]:
        """Python's and the distributions' versions in this interpreter (they enter the pass keys)."""
        return library_versions(distributions)

    def run_pass(self, request: PassRequest) -> PassResponse:
        try:
            return request.execute()
        finally:
            release_memory()


register_system(LocalSystem)
