"""Small real passes registered the way a third-party plugin would, for engine tests.

Each appends its name to ``$HONED_TEST_LOG`` when it does work, so tests can count exactly
which passes ran and which came from the cache.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pydantic import Field

from honed.data.config import DataConfig
from honed.models.handle import ModelHandle
from honed.passes.base import Pass, PassConfig, PassContext, get_pass, register_pass


def _log(name: str) -> None:
    path = os.environ.get("HONED_TEST_LOG")
    if path:
        with open(path, "a") as f:
            f.write(name + "\n")


class AppendDataConfig(PassConfig):
    data_config: str = Field(description="Data config whose files are copied next to the model.")
    tag: str = Field("a", description="Written into tag.txt.")


class AppendData(Pass):
    """Copies the input model and the data file(s) into the output: output depends on both."""

    name = "TestAppendData"
    description = "Test pass: copy the model and its data files."
    config_class = AppendDataConfig
    accepts = ("hf",)

    def run(self, model: ModelHandle, config: AppendDataConfig, output_dir: Path, ctx: PassContext) -> ModelHandle:
        _log(ctx.pass_name)
        shutil.copytree(model.path, output_dir, dirs_exist_ok=True)
        dc: DataConfig = ctx.data_configs[config.data_config]
        files = dc.load_dataset_config.data_files
        for f in [files] if isinstance(files, str) else files or []:
            shutil.copy(f, output_dir / ("data-" + Path(f).name))
        (output_dir / "tag.txt").write_text(config.tag)
        return ModelHandle(kind="hf", path=str(output_dir), task=model.task)


class SlowCopyConfig(PassConfig):
    fail: bool = Field(False, description="Raise instead of finishing.")


class SlowCopy(Pass):
    """Writes part of its output, then waits on a file; lets tests kill a run mid-pass."""

    name = "TestSlowCopy"
    description = "Test pass: copy the model slowly."
    config_class = SlowCopyConfig
    accepts = ("hf",)

    def run(self, model: ModelHandle, config: SlowCopyConfig, output_dir: Path, ctx: PassContext) -> ModelHandle:
        _log(ctx.pass_name)
        (output_dir / "partial").write_text("half written")
        started = os.environ.get("HONED_TEST_STARTED")
        if started:
            Path(started).write_text(str(os.getpid()))
        deadline = time.time() + float(os.environ.get("HONED_TEST_SLEEP", "0"))
        while time.time() < deadline:
            time.sleep(0.05)
        if config.fail:
            raise RuntimeError("boom")
        shutil.copytree(model.path, output_dir, dirs_exist_ok=True)
        (output_dir / "partial").unlink()
        return ModelHandle(kind="hf", path=str(output_dir), task=model.task)


for cls in (AppendData, SlowCopy):
    if get_pass(cls.name) is None:
        register_pass(cls)
