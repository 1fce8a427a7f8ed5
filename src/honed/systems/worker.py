"""Entry point of a PythonEnvironment worker: ``python -m honed.systems.worker REQUEST RESPONSE``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from honed.data.config import DataConfig
from honed.models.handle import ModelHandle
from honed.passes.base import PassContext, get_pass
from honed.util.accelerator import Accelerator


def main(request_path: str, response_path: str) -> int:
    req = json.loads(Path(request_path).read_text())
    cls = get_pass(req["pass"])
    if cls is None:
        print(f"pass '{req['pass']}' is not registered in this environment", file=sys.stderr)
        return 2
    c = req["context"]
    ctx = PassContext(
        pass_name=c["pass_name"], host=Accelerator(**c["host"]), target=Accelerator(**c["target"]),
        data_configs={k: DataConfig.model_validate(v) for k, v in c["data_configs"].items()},
        work_dir=Path(c["work_dir"]), cache_dir=Path(c["cache_dir"]),
    )
    config = cls.config_class.model_validate(req["config"])
    handle = cls().run(ModelHandle.model_validate(req["model"]), config, Path(req["output_dir"]), ctx)
    out = Path(response_path)
    out.write_text(json.dumps({"handle": handle.model_dump(mode="json"), "metrics": ctx.metrics,
                               "python": sys.executable}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
