"""PythonEnvironment: run each pass in another interpreter (a venv with other library versions).

The pass, its config, the input handle and the context go to ``python -m honed.systems.worker`` as
JSON; the worker runs the pass there and answers with the output handle.  honed must be installed
in that environment too (``pip install honed`` there).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.passes.base import Pass, PassContext
from honed.systems.accelerator import Accelerator


def find_python(path: str) -> Path:
    """The interpreter in ``path`` (a venv folder, its bin/ folder, or the interpreter itself)."""
    p = Path(path).expanduser()
    for cand in (p, p / "python", p / "bin" / "python", p / "Scripts" / "python.exe"):
        if cand.is_file():
            return cand
    raise UserError(f"python_environment_path '{path}': no Python interpreter there; give a venv folder or its bin/")


class PythonEnvironmentSystem:
    """Runs each pass in a subprocess of another interpreter."""

    def __init__(self, accelerator: Accelerator, python: Path) -> None:
        self.accelerator = accelerator
        self.python = python
        self.identity = f"python:{python}"

    def run_pass(self, pass_cls: type[Pass], model: ModelHandle, config: Any, output_dir: Path,
                 ctx: PassContext) -> ModelHandle:
        request = {
            "pass": pass_cls.name,
            "config": config.model_dump(mode="json"),
            "model": model.model_dump(mode="json"),
            "output_dir": str(output_dir),
            "context": {
                "pass_name": ctx.pass_name, "host": ctx.host.model_dump(), "target": ctx.target.model_dump(),
                "data_configs": {k: v.model_dump(mode="json") for k, v in ctx.data_configs.items()},
                "work_dir": str(ctx.work_dir), "cache_dir": str(ctx.cache_dir),
            },
        }
        req = output_dir.parent / "request.json"
        resp = output_dir.parent / "response.json"
        req.write_text(json.dumps(request))
        proc = subprocess.run([str(self.python), "-m", "honed.systems.worker", str(req), str(resp)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not resp.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"worker in {self.python} exited {proc.returncode}: {tail[0]}")
        answer = json.loads(resp.read_text())
        ctx.metrics.update(answer.get("metrics", {}))
        ctx.metrics["python"] = str(self.python)
        return ModelHandle.model_validate(answer["handle"])
