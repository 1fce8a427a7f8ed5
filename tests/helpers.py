"""Running the CLI in-process or in a subprocess, the way a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from honed.cli.main import main

ROOT = Path(__file__).resolve().parent.parent


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config, sort_keys=False) if path.suffix in (".yaml", ".yml") else json.dumps(config, indent=2)
    path.write_text(text)
    return path


def cli(*args: str) -> int:
    """Run ``honed ARGS`` in this process and return the exit code."""
    import tests.plugin_passes  # noqa: F401  (registers the test passes)

    return main(list(args))


def cli_subprocess(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                   background: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run ``honed ARGS`` in a fresh interpreter (with the test passes registered)."""
    code = ("import sys, tests.plugin_passes; from honed.cli.main import main; "
            "sys.exit(main(sys.argv[1:]))")
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    cmd = [sys.executable, "-c", code, *args]
    if background:
        return subprocess.Popen(cmd, env=full_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=300)


def engine_project(folder: Path, model: Path) -> Path:
    """A one-row JSONL file and ``wf.yaml`` (CastDtype, then the test pass that copies the data) in ``folder``:
    the small workflow the engine and safety tests rerun, edit and damage."""
    (folder / "rows.jsonl").write_text('{"phrase": "a", "tone": "joy"}\n')
    write_config(folder / "wf.yaml", {
        "input_model": {"model_path": str(model)},
        "data_configs": [{"name": "rows", "load_dataset_config": {"data_files": "rows.jsonl"}}],
        "passes": {
            "cast": {"type": "CastDtype", "dtype": "bfloat16"},
            "append": {"type": "TestAppendData", "data_config": "rows", "tag": "a"},
        },
        "engine": {"cache_dir": "cache", "output_dir": "out"},
    })
    return folder


def run_pass(kind: str, model: Path | Any, out: Path, **config: Any) -> Any:
    """Run one registered pass directly on a model folder (a Hugging Face model) or a ``ModelHandle``, writing
    into ``out``; returns the output handle."""
    from honed.models.handle import ModelHandle
    from honed.passes.base import PassContext, get_pass
    from honed.util.accelerator import Accelerator

    cls = get_pass(kind)
    handle = model if isinstance(model, ModelHandle) else ModelHandle(kind="hf", path=str(model))
    ctx = PassContext(pass_name=kind, host=Accelerator(), target=Accelerator(), data_configs={},
                      work_dir=out / "work", cache_dir=out / "cache")
    (out / "model").mkdir(parents=True, exist_ok=True)
    return cls().run(handle, cls.config_class(**config), out / "model", ctx)


S3_BUCKET = "honed-shared"
"""The bucket the ``s3`` fixture (a moto S3 server, tests/conftest.py) creates."""
