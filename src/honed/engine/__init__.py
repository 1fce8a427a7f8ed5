"""The engine: runs passes through the content-addressed cache and writes outputs."""

from honed.engine.runner import RunResult, run_workflow

__all__ = ["RunResult", "run_workflow"]
