"""honed: fine-tune, compress and compile language models, and prove the result with measurements."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from honed.util.offline import block_hub_kernels, disable_telemetry

__version__ = "0.1.0"

disable_telemetry()  # honed sends no telemetry; see honed.util.offline
block_hub_kernels()  # no compiled kernels downloaded from the hub at import (bitsandbytes on AVX512-BF16)

if TYPE_CHECKING:
    from honed.engine.runner import RunResult


def run(config: str | Path | dict[str, Any], **kwargs: Any) -> RunResult:
    """Run a workflow (a file path or a dict in any supported schema) and return its outputs.

    Keyword arguments are those of ``honed.engine.run_workflow`` (output_dir, cache_dir, dry_run).
    """
    from honed.config.load import load_workflow, validate
    from honed.engine.runner import run_workflow

    wf = validate(config) if isinstance(config, dict) else load_workflow(config)
    return run_workflow(wf, **kwargs)
