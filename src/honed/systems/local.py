"""LocalSystem: run passes in this process, on the CPU or a CUDA device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from honed.models.handle import ModelHandle
from honed.passes.base import Pass, PassContext
from honed.systems.accelerator import Accelerator


def device_problem(acc: Accelerator) -> str | None:
    """Why ``acc`` cannot be used on this machine, or None."""
    if acc.device != "gpu":
        return None
    import torch

    if not torch.cuda.is_available():
        return "asks for a gpu but torch sees none (torch.cuda.is_available() is False)"
    return None


class LocalSystem:
    """Runs each pass in-process. The simplest system and the default."""

    identity = "local"
    """Enters cache keys: outputs made by another interpreter are other outputs."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator

    def run_pass(self, pass_cls: type[Pass], model: ModelHandle, config: Any, output_dir: Path,
                 ctx: PassContext) -> ModelHandle:
        return pass_cls().run(model, config, output_dir, ctx)
