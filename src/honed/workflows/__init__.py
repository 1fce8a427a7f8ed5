"""Workflows the one-line commands build (``honed finetune``, ``optimize``, ``quantize``,
``capture-onnx-graph``), usable from Python too::

    from honed.workflows import finetune, run
    result = run(finetune("models/base", "rows.jsonl", text_template="{q}\\n{a}", output_dir="out"))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from honed.workflows.build import (
    capture_onnx_graph,
    data_config,
    default_cache_dir,
    finetune,
    optimize,
    quantize,
)
from honed.workflows.inputs import input_model

if TYPE_CHECKING:
    from honed.engine.runner import RunResult


def run(config: dict[str, Any], *, source: str | Path | None = None, dry_run: bool = False,
        display: Any = None) -> RunResult:
    """Validate a workflow dict and run it (``source`` names the file it was saved to, if any)."""
    import honed
    from honed.config.load import validate

    wf = validate(config, Path(source).resolve() if source else None)
    return honed.run(wf, dry_run=dry_run, display=display)


__all__ = ["capture_onnx_graph", "data_config", "default_cache_dir", "finetune", "input_model", "optimize",
           "quantize", "run"]
