"""Run a search: one concrete workflow per sampled point, each through ``run_workflow``.

The cache makes shared pass prefixes free (two trials that differ only in ModelBuilder's
precision train the LoRA adapter once) and evaluations are cached the same way.  At the end the
trials are ranked (goals met, Pareto-optimal, objectives by priority), the best ones are copied
to ``output_dir/<rank>/`` and ``output_dir/footprints.json`` records every trial.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from honed.config.load import PassStep, Workflow, problems_from
from honed.config.space import SearchSpace
from honed.engine.outputs import MANIFEST, check_output_dir, remove_output, write_output_dir
from honed.engine.progress import RunDisplay
from honed.engine.runner import RunResult, footprints_for, html_report, run_workflow
from honed.errors import ConfigError, HonedError, UserError
from honed.evaluate.config import EvaluatorConfig
from honed.passes.base import get_pass
from honed.search.pareto import Objective, pareto_front, rank
from honed.search.samplers import make_sampler
from honed.util.fs import user_path


def trial_workflow(wf: Workflow, space: SearchSpace, point: dict[str, Any]) -> Workflow:
    """``wf`` with every searched parameter set as ``point`` says (validated like the loader does)."""
    context = {"config_dir": str(wf.config_dir) if wf.config_dir else None}
    steps = []
    for name, entry in space.concrete(point).items():
        cls = get_pass(entry["type"])
        if cls is None:
            raise UserError(f"passes.{name}.type: unknown pass type '{entry['type']}'")
        params = {k: v for k, v in entry.items() if k != "type"}
        try:
            steps.append(PassStep(name, cls, cls.config_class.model_validate(params, context=context)))
        except ValidationError as e:
            raise ConfigError(problems_from(e, cls.config_class, f"passes.{name}"), str(wf.source or "")) from e
    return dataclasses.replace(wf, steps=steps, search_space=None)


def objectives_of(cfg: EvaluatorConfig) -> list[Objective]:
    """Sub metrics with a priority, by priority; else every sub metric with a goal; else all of them."""
    objs = [(k, h) for k, h, _ in cfg.objectives()]
    if objs:
        return objs
    directions = cfg.directions()
    with_goal = [(k, directions[k]) for k in cfg.goals()]
    return with_goal or list(directions.items())


def _finite(d: dict[str, Any] | None) -> dict[str, float] | None:
    if d is None:
        return None
    return {k: v for k, v in d.items() if isinstance(v, int | float) and not math.isnan(v)}


def run_search(wf: Workflow, *, output_dir: str | Path | None = None, cache_dir: str | Path | None = None,
               display: RunDisplay | None = None) -> RunResult:
    """Run trials until the space, ``max_iter`` or ``max_time`` is exhausted (or goals are met)."""
    display = display or RunDisplay(quiet=True)
    strategy = wf.config.search_strategy
    space = wf.search_space
    if strategy is None or space is None:
        raise UserError("run_search needs search_strategy and searched parameters")
    if not wf.engine.evaluator:
        raise UserError("engine.evaluator: a search needs an evaluator to rank its trials; define one")
    cfg = wf.config.evaluators[wf.engine.evaluator]
    objectives = objectives_of(cfg)
    out_dir = user_path(output_dir or wf.engine.output_dir, "engine.output_dir")
    cache_root = user_path(cache_dir or wf.engine.cache_dir, "engine.cache_dir")
    check_output_dir(out_dir, cache_root)
    sampler = make_sampler(strategy.sampler, space, objectives, strategy.seed)
    trials: list[dict[str, Any]] = []
    results: list[RunResult | None] = []
    start = time.perf_counter()
    first_error: HonedError | None = None
    while True:
        if strategy.max_iter is not None and len(trials) >= strategy.max_iter:
            break
        if strategy.max_time is not None and time.perf_counter() - start >= strategy.max_time:
            break
        point = sampler.ask()
        if point is None:
            break
        index = len(trials)
        shown = ", ".join(f"{k.removeprefix('passes.')}={v}" for k, v in space.active(point).items())
        display.line(f"[bold]trial {index}[/] {shown}")
        t0 = time.perf_counter()
        trial: dict[str, Any] = {"index": index, "point": point, "params": space.active(point)}
        try:
            res = run_workflow(trial_workflow(wf, space, point), output_dir=out_dir, cache_dir=cache_root,
                               display=display, write_output=False)
        except HonedError as e:  # a failing combination is recorded; the search goes on
            first_error = first_error or e
            trial.update(error=str(e), metrics=None, goals_met=False, wall_s=round(time.perf_counter() - t0, 3))
            display.line(f"[red]✗[/] trial {index}: {e}")
            sampler.tell(point, None)
            trials.append(trial)
            results.append(None)
            continue
        ev = res.evaluation or {}
        trial.update(
            steps=[asdict(s) for s in res.steps], metrics=ev.get("output"), input_metrics=ev.get("input"),
            goals=ev.get("goals", []), goals_met=bool(ev.get("goals_met", False)),
            model=res.model.model_dump(mode="json") if res.model else None,
            output_id=res.model.id if res.model else None, wall_s=round(time.perf_counter() - t0, 3),
        )
        sampler.tell(point, _finite(trial["metrics"]))
        trials.append(trial)
        results.append(res)
        if strategy.stop_when_goals_met and trial["goals_met"] and cfg.goals():
            break
    if not any(r is not None for r in results):
        raise first_error or UserError("the search ran no trial; check max_iter / max_time")

    points = [_finite(t.get("metrics")) for t in trials]
    front = pareto_front(points, objectives)
    order = [i for i in rank(points, objectives, [t["goals_met"] for t in trials]) if results[i] is not None]
    n_out = strategy.output_model_num or max(1, len([i for i in order if i in front]))
    for r, i in enumerate(order, 1):
        trials[i]["rank"] = r
    for t in trials:
        t["pareto"] = t["index"] in front
    best = results[order[0]]
    assert best is not None
    search = {
        "sampler": strategy.sampler, "seed": strategy.seed, "space_size": space.size,
        "dimensions": [{"key": d.key, "values": d.values} for d in space.dimensions],
        "objectives": [{"metric": k, "higher_is_better": h} for k, h in objectives],
        "trials": trials, "pareto": front, "ranking": order, "chosen": order[0],
        "output_models": {}, "wall_s": round(time.perf_counter() - start, 3),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():  # ranks an earlier search wrote: only the files honed wrote go
        if old.is_dir() and not old.is_symlink() and old.name.isdigit() and int(old.name) > n_out \
                and (old / MANIFEST).is_file():
            remove_output(old)
    for r, i in enumerate(order[:n_out], 1):
        res = results[i]
        assert res is not None and res.model is not None
        fp = footprints_for(trial_workflow(wf, space, trials[i]["point"]), res)
        write_output_dir(res.model, out_dir / str(r), fp)
        search["output_models"][str(r)] = i
    best.search = search
    best.output_dir = out_dir
    top = footprints_for(trial_workflow(wf, space, trials[order[0]]["point"]), best)
    write_output_dir(None, out_dir, top, report=html_report(out_dir))
    return best
