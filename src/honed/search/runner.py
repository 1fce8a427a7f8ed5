"""Run a search: one concrete workflow per sampled point, each through ``run_workflow``.

The cache makes shared pass prefixes free (two trials that differ only in ModelBuilder's
precision train the LoRA adapter once) and evaluations are cached the same way.  The sampler's
optuna study lives in ``<cache>/studies/<key>.journal``: another ``honed run`` of the same search on
the same cache joins it and the two split the trials.  With ``max_concurrent_trials`` > 1 the trials
run at once in the host system's trial executor (spawned processes, or Ray tasks); a trial whose
worker dies is retried once in a fresh one.  At the end the trials are ranked (goals met,
Pareto-optimal, objectives by priority), the best ones are copied to ``output_dir/<rank>/`` and
``output_dir/footprints.json`` records every trial of the study.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import time
from concurrent.futures import BrokenExecutor, Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from honed.config.load import PassStep, Workflow, problems_from
from honed.config.space import SearchSpace
from honed.engine.cache import Cache
from honed.engine.outputs import MANIFEST, check_output_dir, remove_output, write_output_dir
from honed.engine.progress import RunDisplay
from honed.engine.runner import RunResult, footprints_for, host_system, html_report, run_workflow
from honed.errors import ConfigError, HonedError, UserError
from honed.evaluate.config import EvaluatorConfig
from honed.passes.base import get_pass
from honed.search.pareto import Objective, pareto_front, rank
from honed.search.samplers import Claim, Sampler, make_sampler
from honed.search.trials import execute, result_of, run_trial, where
from honed.util.fs import user_path
from honed.util.hashing import cache_key, code_fingerprint
from honed.util.version import __version__


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


def study_journal(wf: Workflow, space: SearchSpace, objectives: list[Objective], cache_root: Path) -> Path:
    """``<cache>/studies/<key>.journal``: the key hashes what defines the search (space, objectives, sampler,
    seed, and the input model, data, evaluators and systems by content), not how long it runs or where its
    output goes, so every run of the same search on this cache joins the same study.

    It also holds the cache keys of the first trial's passes (a dry run: the input model's and the data's
    content, the passes' code, the library versions of the interpreter that runs them) and the scoring code's
    fingerprint, so a study whose recorded results a changed input, pass, library or metric would change is
    never joined: the search starts a new one and runs its trials again."""
    strategy = wf.config.search_strategy
    assert strategy is not None
    first = trial_workflow(wf, space, next(iter(space.points())))
    plan = run_workflow(first, cache_dir=cache_root, dry_run=True, write_output=False).plan
    config = {
        "first_trial": [s.key for s in plan], "scoring": code_fingerprint("honed.evaluate.evaluator"),
        "dimensions": [[d.key, d.values] for d in space.dimensions], "passes": space.raw_passes,
        "objectives": [[k, h] for k, h in objectives], "sampler": strategy.sampler, "seed": strategy.seed,
        "workflow": wf.config.model_dump(mode="json", exclude={"passes", "search_strategy", "engine"}),
        "engine": wf.engine.model_dump(mode="json", exclude={"output_dir", "cache_dir"}),
    }
    key = cache_key("search", inputs=[], config=config, code=__version__, environment={})
    return cache_root / "studies" / f"{key}.journal"


def _cores() -> int:
    """CPUs this process may use (affinity capped by the cgroup quota: ``honed.util.cpus``)."""
    from honed.util.cpus import usable_cpus

    return usable_cpus()


@dataclass
class _Running:
    """A trial submitted to an executor."""

    claim: Claim
    wf: Workflow
    executor: Executor
    attempts: int = 1
    t0: float = dataclasses.field(default_factory=time.perf_counter)


class _Executors:
    """The host system's trial executors: one of ``workers`` for new trials, and one fresh single-worker
    executor per retry, so a second death is that trial's own (a process pool breaks as a whole: every
    trial in it fails when one worker dies)."""

    def __init__(self, wf: Workflow, cache_root: Path, workers: int) -> None:
        self.wf, self.cache_root, self.workers = wf, cache_root, workers
        self.system: Any = None
        self.main: Executor | None = None
        self.all: list[Executor] = []

    def _new(self, workers: int) -> Executor:
        if self.system is None:
            self.system = host_system(self.wf, self.cache_root, dry_run=False)
        ex = self.system.trial_executor(workers)
        self.all.append(ex)
        return ex

    def for_new_trial(self) -> Executor:
        if self.main is None:
            self.main = self._new(self.workers)
        return self.main

    def fresh(self) -> Executor:
        return self._new(1)

    def drop(self, ex: Executor) -> None:
        """Shut down an executor that broke, or a retry's once its trial is done."""
        if ex is self.main:
            self.main = None
        ex.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        for ex in self.all:
            ex.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.system, "close", None)
        if close is not None:
            close()


def run_search(wf: Workflow, *, output_dir: str | Path | None = None, cache_dir: str | Path | None = None,
               display: RunDisplay | None = None) -> RunResult:
    """Run trials until the space, ``max_iter`` or ``max_time`` is exhausted (or goals are met); up to
    ``max_concurrent_trials`` at once.  ``max_iter`` counts every trial of the study (a joined run runs the
    rest), ``max_time`` this run's seconds."""
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
    Cache(cache_root)  # a honed cache (refused if foreign) before the study goes into it
    journal = study_journal(wf, space, objectives, cache_root)
    sampler = make_sampler(strategy.sampler, space, objectives, strategy.seed, journal=journal)
    known = len(sampler.records())
    if known:
        display.line(f"joining search {journal}: {known} trials there already")
    start = time.perf_counter()
    first_error = _drive(wf, space, sampler, out_dir, cache_root, display, start)
    return _finish_search(wf, space, sampler, objectives, out_dir, cache_root, display, start, journal, first_error)


def _drive(wf: Workflow, space: SearchSpace, sampler: Sampler, out_dir: Path, cache_root: Path,
           display: RunDisplay, start: float) -> HonedError | None:
    """Claim and run trials (in this process when one at a time, else in the trial executor) until done;
    return the first error an in-process trial raised."""
    strategy = wf.config.search_strategy
    assert strategy is not None
    cfg = wf.config.evaluators[wf.engine.evaluator or ""]
    stop_on_goals = strategy.stop_when_goals_met and bool(cfg.goals())
    workers = strategy.max_concurrent_trials
    threads = max(1, _cores() // workers)
    first_error: HonedError | None = None
    executors = _Executors(wf, cache_root, workers)
    running: dict[Future[dict[str, Any]], _Running] = {}
    here: Claim | None = None  # the trial running in this process, if any
    stopping = False

    def submit(run: _Running) -> None:
        running[run.executor.submit(run_trial, run.wf, str(out_dir), str(cache_root), threads)] = run

    def record(claim: Claim, data: dict[str, Any], attempts: int) -> bool:
        """Store a finished trial in the study; True when it met every goal."""
        trial = _record(claim, space, data, attempts)
        if trial.get("error"):
            display.line(f"[red]✗[/] trial {claim.index}: {trial['error']}")
        elif workers > 1:
            display.line(f"[green]✓[/] trial {claim.index} {trial['wall_s']:.1f}s ({trial['node']} pid "
                         f"{trial['pid']}{', attempt 2' if attempts > 1 else ''})")
        sampler.finish(claim, trial, _finite(trial["metrics"]))
        return bool(trial["goals_met"])

    try:
        while True:
            while not stopping and len(running) < workers:
                if strategy.max_time is not None and time.perf_counter() - start >= strategy.max_time:
                    stopping = True
                    break
                claim = sampler.claim(strategy.max_iter, stop_on_goals)
                if claim is None:
                    stopping = True
                    break
                shown = ", ".join(f"{k.removeprefix('passes.')}={v}" for k, v in space.active(claim.point).items())
                display.line(f"[bold]trial {claim.index}[/] {shown}")
                t0 = time.perf_counter()
                try:
                    twf = trial_workflow(wf, space, claim.point)
                    if workers > 1:
                        try:
                            submit(_Running(claim, twf, executors.for_new_trial()))
                        except BrokenExecutor:  # a worker died and its pool is not replaced yet
                            executors.drop(executors.for_new_trial())
                            submit(_Running(claim, twf, executors.for_new_trial()))
                        continue
                    here = claim
                    data = execute(twf, out_dir, cache_root, display)
                except HonedError as e:  # a failing combination is recorded; the search goes on
                    first_error = first_error or e
                    data = {"error": str(e), "user_error": isinstance(e, UserError), **where(),
                            "wall_s": round(time.perf_counter() - t0, 3)}
                here = None
                stopping = record(claim, data, 1) and stop_on_goals
            if not running:
                break
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in done:
                run = running[fut]  # left there if it raised a bug: the finally gives its point back
                try:
                    data = fut.result()
                except BrokenExecutor as e:  # the worker process died (killed, out of memory, node lost)
                    del running[fut]
                    executors.drop(run.executor)
                    if run.attempts < 2:
                        display.line(f"[yellow]![/] trial {run.claim.index}: its worker died; retrying in a "
                                     "fresh worker")
                        run.attempts, run.executor = 2, executors.fresh()
                        submit(run)
                        continue
                    data = {"error": f"the worker running the trial died twice ({type(e).__name__}: {e})",
                            "node": None, "pid": None, "wall_s": round(time.perf_counter() - run.t0, 3)}
                else:
                    del running[fut]
                    if run.executor is not executors.main:
                        executors.drop(run.executor)
                stopping = (record(run.claim, data, run.attempts) and stop_on_goals) or stopping
    finally:
        for claim in [r.claim for r in running.values()] + ([here] if here else []):
            sampler.abandon(claim)  # interrupted: give the points back so a later run runs them
        executors.close()
    return first_error


def _record(claim: Claim, space: SearchSpace, data: dict[str, Any], attempts: int) -> dict[str, Any]:
    """The study's (and footprints') record of a finished trial: JSON only."""
    trial: dict[str, Any] = {"index": claim.index, "point": claim.point, "params": space.active(claim.point)}
    if "error" in data:
        trial.update(error=data["error"], user_error=data.get("user_error", False), metrics=None, goals_met=False)
    else:
        ev = data.get("evaluation") or {}
        model = data.get("model") or {}
        trial.update(
            steps=data.get("steps", []), metrics=ev.get("output"), input_metrics=ev.get("input"),
            goals=ev.get("goals", []), goals_met=bool(ev.get("goals_met", False)), model=data.get("model"),
            output_id=model.get("id"), evaluation=ev,
        )
    owner = where()
    trial.update(wall_s=data.get("wall_s"), node=data.get("node"), pid=data.get("pid"), attempts=attempts,
                 run=f"{owner['node']}:{owner['pid']}")
    return json.loads(json.dumps(trial, default=str))


def _finish_search(wf: Workflow, space: SearchSpace, sampler: Sampler, objectives: list[Objective], out_dir: Path,
                   cache_root: Path, display: RunDisplay, start: float, journal: Path,
                   first_error: HonedError | None) -> RunResult:
    """Rank every finished trial of the study, copy the best models and write the footprints."""
    strategy = wf.config.search_strategy
    assert strategy is not None
    records = sampler.records()
    trials = [t for t in records if t.get("state") != "running"]
    elsewhere = [t for t in records if t.get("state") == "running"]
    ok = [i for i, t in enumerate(trials) if not t.get("error") and t.get("model")]
    if not ok:
        if first_error is not None:
            raise first_error
        failed = next((t for t in trials if t.get("error")), None)
        if failed is not None:
            raise (UserError if failed.get("user_error") else HonedError)(failed["error"])
        if elsewhere:
            raise UserError(f"no trial of the search finished yet; {len(elsewhere)} are running in other runs "
                            f"(study {journal})")
        raise UserError("the search ran no trial; check max_iter / max_time")
    points = [_finite(t.get("metrics")) for t in trials]
    front = pareto_front(points, objectives)
    order = [i for i in rank(points, objectives, [t["goals_met"] for t in trials]) if i in ok]
    n_out = strategy.output_model_num or max(1, len([i for i in order if i in front]))
    for r, i in enumerate(order, 1):
        trials[i]["rank"] = r
    for i, t in enumerate(trials):
        t["pareto"] = i in front
    index = [t["index"] for t in trials]
    search = {
        "sampler": strategy.sampler, "seed": strategy.seed, "space_size": space.size,
        "dimensions": [{"key": d.key, "values": d.values} for d in space.dimensions],
        "objectives": [{"metric": k, "higher_is_better": h} for k, h in objectives],
        "trials": [{k: v for k, v in t.items() if k != "evaluation"} for t in trials + elsewhere],
        "pareto": [index[i] for i in front], "ranking": [index[i] for i in order], "chosen": index[order[0]],
        "output_models": {}, "wall_s": round(time.perf_counter() - start, 3),
        "study": str(journal), "max_concurrent_trials": strategy.max_concurrent_trials,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():  # ranks an earlier search wrote: only the files honed wrote go
        if old.is_dir() and not old.is_symlink() and old.name.isdigit() and int(old.name) > n_out \
                and (old / MANIFEST).is_file():
            remove_output(old)
    best: RunResult | None = None
    for r, i in enumerate(order[:n_out], 1):
        res = _result(wf, space, trials[i], out_dir, cache_root, display)
        assert res.model is not None
        best = best or res
        write_output_dir(res.model, out_dir / str(r), footprints_for(trial_workflow(wf, space, trials[i]["point"]), res))
        search["output_models"][str(r)] = index[i]
    assert best is not None
    best.search = search
    best.output_dir = out_dir
    top = footprints_for(trial_workflow(wf, space, trials[order[0]]["point"]), best)
    write_output_dir(None, out_dir, top, report=html_report(out_dir))
    return best


def _result(wf: Workflow, space: SearchSpace, trial: dict[str, Any], out_dir: Path, cache_root: Path,
            display: RunDisplay) -> RunResult:
    """A finished trial's ``RunResult``; run again through the cache if its model left the cache since."""
    res = result_of(trial, out_dir)
    if res.model is None or not Path(res.model.path).exists():
        res = result_of(execute(trial_workflow(wf, space, trial["point"]), out_dir, cache_root, display), out_dir)
    return res
