"""One search trial as a plain function: what a worker process (or a Ray task) runs.

``run_trial`` is top-level and takes picklable arguments (the trial's ``Workflow``: a dataclass of pydantic
configs and pass classes, which pickle by reference), and answers a plain dict, so the same code runs in this
process, in a spawned process of a pool, or on another node.  The engine's per-key file lock makes trials
that share a pass prefix wait for one another, so the prefix is computed once and read from the cache after.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from honed.config.load import Workflow
from honed.engine.footprints import StepRecord
from honed.engine.progress import RunDisplay
from honed.engine.runner import RunResult, run_workflow
from honed.errors import HonedError, UserError
from honed.models.handle import ModelHandle


def where() -> dict[str, Any]:
    """The node and process running a trial (the report shows them when trials ran in several)."""
    return {"node": socket.gethostname(), "pid": os.getpid()}


def outcome(res: RunResult) -> dict[str, Any]:
    """A finished trial's run as plain data (JSON): steps, evaluation and the final model's handle."""
    return {"steps": [asdict(s) for s in res.steps], "evaluation": res.evaluation,
            "model": res.model.model_dump(mode="json") if res.model else None}


def execute(wf: Workflow, output_dir: str | Path, cache_dir: str | Path,
            display: RunDisplay | None = None) -> dict[str, Any]:
    """Run one trial's workflow without writing the output folder. Raises what the run raises."""
    t0 = time.perf_counter()
    res = run_workflow(wf, output_dir=output_dir, cache_dir=cache_dir, display=display, write_output=False)
    return {**outcome(res), **where(), "wall_s": round(time.perf_counter() - t0, 3)}


def run_trial(wf: Workflow, output_dir: str, cache_dir: str, threads: int | None = None) -> dict[str, Any]:
    """The function a trial executor runs: ``execute`` in a worker, a failure (HonedError) as ``error``.

    ``threads``: torch's intra-op threads for this worker (the host's cores shared among the trials running at
    once, so two trials on two cores do not each start two threads).
    """
    if threads:
        import torch

        from honed.util.cpus import set_share

        set_share(threads)  # onnxruntime sessions in this worker size their pools to the share too
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        return execute(wf, output_dir, cache_dir)
    except HonedError as e:  # a failing combination is a result of the search, not a crash of the worker
        return {"error": str(e), "user_error": isinstance(e, UserError), **where(),
                "wall_s": round(time.perf_counter() - t0, 3)}


def result_of(data: dict[str, Any], output_dir: Path) -> RunResult:
    """A ``RunResult`` rebuilt from a trial's plain data (to write the best trials' output folders)."""
    return RunResult(model=ModelHandle.model_validate(data["model"]) if data.get("model") else None,
                     output_dir=output_dir, steps=[StepRecord(**s) for s in data.get("steps") or []],
                     evaluation=data.get("evaluation"))
