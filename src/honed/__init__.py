"""honed: fine-tune, compress and compile language models, and prove the result with measurements."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from honed.util.offline import block_hub_kernels, disable_telemetry
from honed.util.version import __version__ as __version__

disable_telemetry()  # honed sends no telemetry; see honed.util.offline
block_hub_kernels()  # no compiled kernels downloaded from the hub at import (bitsandbytes on AVX512-BF16)

if TYPE_CHECKING:
    from honed.config.load import Workflow
    from honed.engine.runner import RunResult


def run(config: str | Path | dict[str, Any] | Workflow, *, output_dir: str | Path | None = None,
        cache_dir: str | Path | None = None, dry_run: bool = False, display: Any = None,
        write_output: bool = True, ray_address: str | None = None,
        shared_cache: str | None = None) -> RunResult:
    """Run a workflow (a file path, a dict in any supported schema, or a validated ``Workflow``): the one entry
    point; ``honed run`` and the one-line commands call it.

    A workflow with searched parameters runs one trial per point (``honed.search.runner``), Olive's
    ``pass_flows`` one branch per flow, anything else its passes once (``honed.engine.run_workflow``).
    ``output_dir``/``cache_dir`` override the workflow's engine settings; ``dry_run`` only plans;
    ``write_output`` False leaves the output folder alone; ``ray_address`` runs the passes on that Ray cluster
    (``honed.config.load.on_ray``); ``shared_cache`` overrides ``engine.shared_cache``. Raises ConfigError for an invalid config and
    UserError for what the user can fix.
    """
    from honed.config.load import Workflow, load_workflow, on_ray, validate, with_shared_cache
    from honed.engine.runner import run_flows, run_workflow

    if isinstance(config, Workflow):
        wf = config
    else:
        wf = validate(config) if isinstance(config, dict) else load_workflow(config)
    if ray_address:
        wf = on_ray(wf, ray_address)
    if shared_cache:
        wf = with_shared_cache(wf, shared_cache)
    options = {"output_dir": output_dir, "cache_dir": cache_dir, "dry_run": dry_run, "display": display,
               "write_output": write_output}
    if wf.flows:
        from honed.engine.progress import RunDisplay

        return run_flows(wf, **{**options, "display": display or RunDisplay(quiet=True)}, run_one=run)
    if wf.search_space is not None and not dry_run:
        from honed.search.runner import run_search

        return run_search(wf, output_dir=output_dir, cache_dir=cache_dir, display=display)
    return run_workflow(wf, **options)
