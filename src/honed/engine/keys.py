"""Pass cache keys: what a pass output depends on, through the one key function (``util.hashing.cache_key``).

The key covers the input model's identity (content hash), the pass type, its fully resolved config with the
contents of every file it names (data files, scripts), the data configs it refers to, the host and target,
the honed source files the pass is built from (its module and what it imports: the layers below it) and the
versions of the libraries it declares, read in the interpreter that runs it.  Change any of these and the
pass reruns; change nothing and it does not.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from honed.data.config import DataConfig, data_config_refs
from honed.passes.base import Pass, PassConfig
from honed.util.accelerator import Accelerator
from honed.util.hashing import cache_key, code_fingerprint, environment, library_versions, with_content_hashes


def data_refs(config: PassConfig, data_configs: dict[str, DataConfig]) -> dict[str, Any]:
    """The data configs a pass config names (fields ending in ``data_config``), and the workflow's first one when
    the pass falls back to it (``PassConfig.uses_first_data_config``), with file contents hashed."""
    refs = {key: with_content_hashes(data_configs[name].model_dump(mode="json"))
            for key, name in data_config_refs(config.model_dump()) if name in data_configs}
    if data_configs and config.uses_first_data_config():
        refs["(first data config)"] = with_content_hashes(next(iter(data_configs.values())).model_dump(mode="json"))
    return refs


def pass_key(
    input_id: str, pass_cls: type[Pass], config: PassConfig, data_configs: dict[str, DataConfig],
    host: Accelerator, target: Accelerator, system: str = "local", libraries: Mapping[str, str] | None = None,
) -> str:
    """The cache key of running ``pass_cls`` with ``config`` on the model ``input_id`` on ``system`` (its
    identity), whose interpreter reports ``libraries`` (default: this interpreter's versions of the pass's
    ``libraries``)."""
    module = inspect.getmodule(pass_cls)
    versions = library_versions(pass_cls.libraries) if libraries is None else libraries
    return cache_key(
        f"pass:{pass_cls.name}",
        inputs={"model": input_id, "data": data_refs(config, data_configs)},
        config={"pass": config.model_dump(mode="json"), "host": host.model_dump(), "target": target.model_dump()},
        code=code_fingerprint(module.__name__) if module else "",
        environment=environment(versions, system),
    )
