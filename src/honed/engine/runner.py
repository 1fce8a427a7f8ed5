"""The engine: run a workflow's passes in order through the cache, then write the output folder.

How a config value reaches a pass: ``load_workflow`` validates ``passes.<name>`` against the
pass's config model -> ``run_workflow`` hashes that config into the step's cache key -> on a
miss, the host system calls ``Pass.run(model, config, tmp_dir, ctx)`` -> the output is renamed
into the cache and its handle feeds the next pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from honed.config.load import PassStep, Workflow
from honed.data.config import DataConfig
from honed.engine.cache import MARKER, Cache, Entry, open_problem
from honed.engine.footprints import Footprints, StepRecord, describe_output, step_contents
from honed.engine.keys import pass_key
from honed.engine.outputs import check_output_dir, write_output_dir
from honed.engine.preflight import preflight
from honed.engine.progress import RunDisplay
from honed.engine.remote import execute_on_node
from honed.engine.shared_cache import SharedCache
from honed.errors import EvaluationFailed, HonedError, PassFailed, UserError
from honed.models.handle import ModelHandle
from honed.models.loaders import carry_trust
from honed.models.resolve import resolve_model
from honed.passes.base import PassContext
from honed.systems.base import PassRequest, System, get_system
from honed.systems.local import LocalSystem, LocalSystemConfig, device_problem
from honed.util.accelerator import Accelerator
from honed.util.fs import user_path
from honed.util.hashing import hash_json, hash_path, use_memo
from honed.util.monitor import PeakMemory
from honed.util.version import __version__

log = logging.getLogger("honed")


@dataclass
class PlannedStep:
    name: str
    type: str
    config: dict[str, Any]
    key: str | None
    cached: bool


@dataclass
class RunResult:
    """What ``honed.run`` returns: the final model, where outputs went, and every step's record."""

    model: ModelHandle | None
    output_dir: Path
    steps: list[StepRecord] = field(default_factory=list)
    plan: list[PlannedStep] = field(default_factory=list)
    dry_run: bool = False
    evaluation: dict[str, Any] | None = None
    """Input/output metrics and goal checks when an evaluator is set (see ``_evaluate``)."""
    search: dict[str, Any] | None = None
    """Trials, Pareto front and ranking of a search (see honed.search.runner)."""
    flows: dict[str, RunResult] = field(default_factory=dict)
    """With ``pass_flows``: each flow's own result (its output folder is ``output_dir/<flow>``)."""
    flows_summary: dict[str, Any] | None = None
    """What the top footprints.json records per flow: output folder, model, steps, evaluation."""

    @property
    def footprints_path(self) -> Path:
        return self.output_dir / "footprints.json"


def _accelerators(wf: Workflow) -> tuple[Accelerator, Accelerator]:
    systems = wf.config.systems
    host_name = wf.engine.host
    target_name = wf.engine.target or host_name
    host = systems[host_name].accelerators[0] if host_name else Accelerator()
    target = systems[target_name].accelerators[0] if target_name else host
    return host, target


def host_system(wf: Workflow, cache_root: Path, dry_run: bool = False) -> System:
    """The system passes run on (``engine.host``; this machine's LocalSystem when unset), from the registry.

    Raises UserError when the system cannot be set up (a missing interpreter, an unreachable cluster)."""
    host, _ = _accelerators(wf)
    name = wf.engine.host
    cfg = wf.config.systems.get(name) if name else None
    if cfg is None:
        return LocalSystem(LocalSystemConfig(), host, cache_root=cache_root, config_dir=wf.config_dir,
                           dry_run=dry_run)
    cls = get_system(cfg.type)
    if cls is None:  # validation admits only registered types
        raise UserError(f"systems.{name}.type: unknown system type '{cfg.type}'")
    missing = cls.missing_requirements()
    if missing:
        raise UserError(f"systems.{name}.type: {cls.name} needs {', '.join(missing)}; {cls.install or 'install it'}")
    return cls(cfg, host, cache_root=cache_root, config_dir=wf.config_dir, label=wf.host_label or f"systems.{name}",
               dry_run=dry_run)


def _input_handle(wf: Workflow, cache_root: Path, dry_run: bool) -> ModelHandle:
    im = wf.input_model
    handle = resolve_model(im.model_path, model_type=im.type, task=im.task, load_kwargs=im.load_kwargs,
                           config_dir=wf.config_dir, download=not dry_run)
    gguf = handle.attributes.get("gguf_file")
    if gguf:
        ident = "gguf:" + hash_path(Path(gguf))
        if not dry_run:
            from honed.models.gguf import gguf_to_hf

            handle = handle.model_copy(update={"path": str(gguf_to_hf(Path(gguf), cache_root))})
    elif Path(handle.path).exists():
        ident = hash_path(Path(handle.path))
    else:  # a hub id not downloaded yet (dry run): identify by id and revision
        ident = "hub:" + handle.path + "@" + str(im.load_kwargs.get("revision", "main"))
    if im.adapter_path:
        adapter = resolve_model(im.adapter_path, config_dir=wf.config_dir, download=not dry_run)
        ident = hash_json([ident, hash_path(Path(adapter.path))])
        handle = adapter.model_copy(update={"kind": "peft", "base": handle.model_copy(update={"id": ident})})
    return handle.model_copy(update={"id": hash_json([ident, im.load_kwargs])[:32]})


def run_workflow(
    wf: Workflow, *, output_dir: str | Path | None = None, cache_dir: str | Path | None = None,
    dry_run: bool = False, display: RunDisplay | None = None, write_output: bool = True,
) -> RunResult:
    """Run (or with ``dry_run``, only plan) a validated workflow's passes once.  ``write_output`` False leaves
    the output folder alone (search trials).  A workflow with searched parameters is run by ``honed.run``,
    which hands it to the search (above this layer); here it raises ValueError unless ``dry_run``."""
    display = display or RunDisplay(quiet=True)
    if wf.flows:
        return run_flows(wf, output_dir=output_dir, cache_dir=cache_dir, dry_run=dry_run, display=display,
                         write_output=write_output)
    if wf.search_space is not None and not dry_run:
        raise ValueError("a workflow with searched parameters runs through honed.run, which runs the search")
    out_dir = user_path(output_dir or wf.engine.output_dir, "engine.output_dir")
    cache_root = user_path(cache_dir or wf.engine.cache_dir, "engine.cache_dir")
    preflight(wf, out_dir, cache_root)  # all that is knowable before a pass runs (dry runs too)
    problem = open_problem(cache_root)
    if problem:
        raise UserError(f"engine.cache_dir (or --cache-dir): {problem}")
    if write_output:
        check_output_dir(out_dir, cache_root)
    if wf.engine.generate_config_only and not dry_run:
        return _write_config_only(wf, out_dir)
    host, target = _accelerators(wf)
    if not dry_run:
        for role, acc, key in (("host", host, wf.engine.host), ("target", target, wf.engine.target)):
            problem = device_problem(acc) if role == "host" else None
            if problem:
                raise UserError(f"engine.{role}: system '{key}' {problem}; set its device to cpu")
    cache = Cache(cache_root) if not dry_run else None
    shared = (SharedCache(wf.engine.shared_cache, create=not dry_run)
              if wf.engine.shared_cache else None)
    if cache:
        cache.clean_stale()
        # the local cache, else (downloaded into it) the shared tier's entry
        lookup = partial(shared.pull, cache=cache) if shared else cache.get
    elif (cache_root / MARKER).is_file():
        use_memo(cache_root)  # a dry run reads the cache's remembered hashes, and writes nothing else
    model = _input_handle(wf, cache_root, dry_run)
    input_model = model
    system = host_system(wf, cache_root, dry_run)
    result = RunResult(model=None, output_dir=out_dir, dry_run=dry_run)
    data_configs = wf.data_configs
    current_id = model.id
    stages: dict[str, ModelHandle] = {}
    for step in wf.steps:
        key = pass_key(current_id, step.pass_cls, step.config, data_configs, host, target, system.identity,
                       system.environment(step.pass_cls.libraries))
        config_json = step.config.model_dump(mode="json")
        if dry_run:
            cached = (cache_root / "entries" / key / "handle.json").exists() or bool(shared and shared.has(key))
            result.plan.append(PlannedStep(step.name, step.pass_cls.name, config_json, key, cached))
            current_id = key
            continue
        accepted = step.pass_cls.accepted_kinds(step.config)
        if model.kind not in accepted:
            raise UserError(
                f"passes.{step.name}: {step.pass_cls.name} takes {'/'.join(accepted)} models but "
                f"receives a {model.kind} model; reorder the passes"
            )
        record = StepRecord(name=step.name, type=step.pass_cls.name, config=config_json, input_id=current_id,
                            output_id=key)
        entry = lookup(key)
        if entry is None:
            with cache.lock(key), shared.lock(key) if shared else contextlib.nullcontext():
                cache.repair(key)  # a damaged entry is set aside and computed again
                entry = lookup(key)  # another run (here, or on another machine) may have finished it meanwhile
                if entry is None:
                    entry = _run_step(step, model, key, cache, system, host, target, data_configs, display, record,
                                      shared)
                    if shared:
                        shared.push(entry)
        elif shared and not shared.has(key):  # made before the shared tier was set up: share it now
            shared.push(entry)
        if record.cached is None:
            record.cached = True
            record.wall_s = 0.0
            record.metrics = entry.meta.get("metrics", {})
            display.line(f"[green]✓[/] {step.name} ({step.pass_cls.name}) [dim]cached[/]")
        # The input model's trust_remote_code reaches every later pass, whatever handle a pass returns.
        model = carry_trust(entry.handle, model).model_copy(update={"id": key})
        current_id = key
        result.steps.append(record)
        stages[step.name] = model
    if dry_run:
        return result
    result.model = model
    result.evaluation = _evaluate(wf, input_model, stages, model, cache.root, target, display)
    if write_output:
        write_output_dir(model, out_dir, footprints_for(wf, result), report=html_report(out_dir))
    return result


def _write_config_only(wf: Workflow, out_dir: Path) -> RunResult:
    """``engine.generate_config_only``: the resolved workflow as ``out_dir/workflow.json`` (and footprints saying
    nothing ran); run it with ``honed run --config out_dir/workflow.json``."""
    import json

    from honed.config.load import honed_dict
    from honed.engine.outputs import rewrite_owned

    result = RunResult(model=None, output_dir=out_dir)
    write_output_dir(None, out_dir, footprints_for(wf, result))
    config = honed_dict(wf)
    config["engine"].pop("generate_config_only", None)
    rewrite_owned(out_dir, "workflow.json", json.dumps(config, indent=2) + "\n")
    log.info("generate_config_only: wrote %s; nothing ran", out_dir / "workflow.json")
    return result


def run_flows(wf: Workflow, *, output_dir: str | Path | None, cache_dir: str | Path | None, dry_run: bool,
              display: RunDisplay, write_output: bool, run_one: Callable[..., RunResult] | None = None) -> RunResult:
    """Run each of Olive's ``pass_flows`` as its own branch over the shared cache (a pass prefix two flows share
    runs once) into ``output_dir/<flow>/``; ``output_dir`` then holds the footprints and report comparing them.
    ``run_one`` runs one flow (``honed.run`` passes itself, so a flow may search); default ``run_workflow``."""
    run_one = run_one or run_workflow
    out_dir = user_path(output_dir or wf.engine.output_dir, "engine.output_dir")
    if write_output and not dry_run:
        check_output_dir(out_dir, user_path(cache_dir or wf.engine.cache_dir, "engine.cache_dir"))
    result = RunResult(model=None, output_dir=out_dir, dry_run=dry_run)
    runs: dict[str, RunResult] = {}
    for name, flow in wf.flows:
        display.line(f"[bold]flow {name}[/]")
        runs[name] = run_one(flow, output_dir=out_dir / name, cache_dir=cache_dir, dry_run=dry_run,
                             display=display, write_output=write_output)
        result.plan += [dataclasses.replace(s, name=f"{name}/{s.name}") for s in runs[name].plan]
    result.flows = runs
    if dry_run or not write_output:
        return result
    result.flows_summary = {
        name: {"output_dir": name, "model": r.model.model_dump(mode="json") if r.model else None,
               "steps": [dataclasses.asdict(s) for s in r.steps], "evaluation": r.evaluation,
               "search": r.search is not None}
        for name, r in runs.items()
    }
    top = Footprints(source=str(wf.source) if wf.source else None, generation=wf.generation,
                     honed_version=__version__, input_model=_input_summary(wf), steps=[], output_model={},
                     flows=result.flows_summary)
    write_output_dir(None, out_dir, top, report=html_report(out_dir))
    return result


def footprints_for(wf: Workflow, result: RunResult) -> Footprints:
    """The footprints of a finished run."""
    return Footprints(
        source=str(wf.source) if wf.source else None, generation=wf.generation, honed_version=__version__,
        input_model=_input_summary(wf), steps=result.steps,
        output_model=describe_output(result.model),
        evaluation=result.evaluation, search=result.search,
    )


def html_report(out_dir: Path) -> Callable[[dict[str, Any]], str]:
    """Renders footprints into the output folder's report.html (the CLI prints the plain-text summary)."""
    def render(footprints: dict[str, Any]) -> str:
        from honed.report.html import build_html

        return build_html(footprints, f"honed report - {out_dir.name}")
    return render


def _evaluate(wf: Workflow, input_model: ModelHandle, stages: dict[str, ModelHandle], model: ModelHandle,
              cache_root: Path, target: Accelerator, display: RunDisplay) -> dict[str, Any] | None:
    """Score the final model (and the input model, for before -> after; and the passes named in
    ``engine.evaluate_passes``) with the engine's evaluator."""
    name = wf.engine.evaluator
    if not name:
        return None
    from honed.evaluate.evaluator import evaluate_cached
    from honed.evaluate.goals import check_goals

    cfg = wf.config.evaluators[name]
    evaluation: dict[str, Any] = {"evaluator": name, "input": None, "output": None, "passes": {}, "cached": {}}
    wanted = wf.engine.evaluate_passes
    last = wf.steps[-1].name if wf.steps else None
    todo = [("input", input_model)] if wf.engine.evaluate_input_model is not False else []
    todo += [(n, h) for n, h in stages.items() if n != last and (wanted is True or (wanted and n in wanted))]
    todo.append(("output", model))
    chain = [input_model, *stages.values()]  # a fidelity metric compares a model with the input of its pass
    parent = {id(h): chain[max(i - 1, 0)] for i, h in enumerate(chain)}
    for role, handle in todo:
        start = time.perf_counter()
        what = f"the {role} model" if role in ("input", "output") else f"the output of {role}"
        try:
            results, cached = evaluate_cached(
                handle, cfg, wf.data_configs, target, cache_root, reference=parent.get(id(handle), input_model),
                progress=lambda desc, total, what=what: display.bar(f"evaluating {what}: {desc}", total))
        except (HonedError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # a runtime that fails on this model: one line naming it (a search goes on)
            raise EvaluationFailed(f"{what} ({name})", e) from e
        if role in ("input", "output"):
            evaluation[role] = results
        else:
            evaluation["passes"][role] = results
        evaluation["cached"][role] = cached
        note = "[dim]cached[/]" if cached else f"{time.perf_counter() - start:.1f}s"
        what = f"{role} model" if role in ("input", "output") else f"output of {role}"
        display.line(f"[green]✓[/] evaluate {what} ({name}) {note}")
    checks = check_goals(cfg, evaluation["output"], evaluation["input"])
    evaluation["goals"] = [{"metric": c.key, "value": c.value, "bound": c.bound,
                            "higher_is_better": c.higher_is_better, "met": c.met} for c in checks]
    evaluation["goals_met"] = all(c.met for c in checks)
    evaluation["directions"] = cfg.directions()
    evaluation["objectives"] = [k for k, _, _ in cfg.objectives()]
    return evaluation


def _input_summary(wf: Workflow) -> dict[str, Any]:
    return wf.input_model.model_dump(mode="json")


def _run_step(
    step: PassStep, model: ModelHandle, key: str, cache: Cache, system: System,
    host: Accelerator, target: Accelerator, data_configs: dict[str, DataConfig], display: RunDisplay,
    record: StepRecord, shared: SharedCache | None = None,
) -> Entry:
    """Run one pass into a temp folder and commit it; failures propagate and nothing is cached."""
    label = f"{step.name} ({step.pass_cls.name})"
    work = cache.work_dir(key)
    work.mkdir(parents=True, exist_ok=True)
    ctx = PassContext(pass_name=step.name, host=host, target=target, data_configs=data_configs,
                      work_dir=work, cache_dir=cache.root, progress=display.task)
    display.start_pass(label)
    start = time.perf_counter()
    with cache.writing(key) as tmp, PeakMemory() as mem:
        out = tmp / "model"
        out.mkdir()
        request = PassRequest.build(step.pass_cls.name, model, step.config, out, ctx)
        request.key, request.shared_cache, request.runner = key, shared.url if shared else None, execute_on_node
        request.meta = {"pass": step.name, "type": step.pass_cls.name, "config": record.config, "input_id": model.id,
                        "honed_version": __version__}
        try:
            answer = system.run_pass(request)
        except UserError:
            display.end_pass(f"[red]✗[/] {label}")
            raise
        except (KeyboardInterrupt, SystemExit):
            display.end_pass(f"[red]✗[/] {label} interrupted")
            raise
        except Exception as e:  # a bug or a library failure inside the pass: report it as the pass's
            display.end_pass(f"[red]✗[/] {label}")
            raise PassFailed(step.name, e) from e
        pulled = shared.pull(key, cache) if answer.committed and shared else None
        if answer.committed and pulled is None:
            raise OSError(f"the node that ran {step.name} committed {key} to {shared and shared.url}, but it cannot "
                          "be read back; check the bucket")
        handle = pulled.handle if pulled else ModelHandle.model_validate(answer.handle)
        ctx.metrics.update(answer.metrics)
        if system.identity != "local":  # where it ran: another interpreter, a cluster node; and any retry
            ctx.metrics.update(python=answer.python, node=answer.node)
        if answer.attempt > 1:
            ctx.metrics["attempts"] = answer.attempt
        wall = time.perf_counter() - start
        record.cached, record.wall_s, record.peak_rss_mb = False, round(wall, 3), mem.peak_mb
        record.metrics = {**ctx.metrics, **step_contents(handle)}
        meta = {**request.meta, "created": time.time(), "wall_s": record.wall_s, "peak_rss_mb": mem.peak_mb,
                "metrics": record.metrics, "pid": os.getpid()}
        entry = pulled or cache.commit(key, tmp, handle, meta)
    display.end_pass(f"[green]✓[/] {label} {wall:.1f}s  peak {mem.peak_mb:.0f} MB")
    return entry

