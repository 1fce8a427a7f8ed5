"""Samplers pick the next point of a search space: sequential (every point in order), random
(seeded, without repeats) and optuna's TPE, QMC and NSGA-II (seeded; multi-objective when there are several).

Every sampler drives one optuna study by ask/tell.  In memory by default; ``open_study`` puts it in a
journal file on the shared cache, so a second ``honed run`` of the same search (or a worker on another
node) joins it.  A point (an active configuration) that the study holds as running (by a live run),
complete or failed is never run again: ``claim`` picks the next point and registers it as running under a
file lock, so two runs never pick the same one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.config.space import SearchSpace
from honed.errors import UserError
from honed.search.pareto import Objective


def _key(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True, default=str)


HEARTBEAT_S = 30.0
"""A run that joined a study on disk touches ``<journal>.runs/<node>-<pid>`` this often while it lives."""
STALE_S = 180.0
"""A run on another node whose heartbeat file is older than this (or absent) is gone: its running trials are
claimed again (generous: the clocks of two machines may differ)."""


def _alive(owner: dict[str, Any] | None, beats: Path | None = None) -> bool:
    """Whether the run that registered a trial may still finish it: a process on this node by its pid, one on
    another node by its heartbeat file under ``beats`` (without a folder of heartbeats, assumed alive)."""
    if not isinstance(owner, dict):
        return True
    if owner.get("node") != socket.gethostname():
        if beats is None:
            return True
        try:
            return time.time() - (beats / f"{owner.get('node')}-{owner.get('pid')}").stat().st_mtime < STALE_S
        except OSError:
            return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _beat(path: Path) -> None:
    """Touch this run's heartbeat file until the process ends (a daemon thread)."""
    while True:
        time.sleep(HEARTBEAT_S)
        with contextlib.suppress(OSError):
            path.touch()


@dataclass
class Claim:
    """A point this process registered as running in the study: finish it with ``Sampler.finish``."""

    number: int
    """The optuna trial number."""
    index: int
    """The trial's place in the search (0, 1, ...): distinct trials in the order they were claimed."""
    point: dict[str, Any]
    trial: Any
    """The optuna ``Trial`` (lives in this process only)."""


class Sampler:
    """``claim`` -> the next point registered as running, or None when the space is done; ``finish`` it with
    its record.  ``ask``/``tell`` are the same for callers that keep no records."""

    algorithm = "sequential"

    def __init__(self, space: SearchSpace, objectives: list[Objective], seed: int = 0, *, storage: Any = None,
                 study_name: str = "honed", lock_path: Path | None = None) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.space, self.objectives, self.seed = space, objectives, seed
        self._lock_path = lock_path
        self._beats = lock_path.parent / (lock_path.name.split(".")[0] + ".runs") if lock_path else None
        if self._beats is not None:
            self._beats.mkdir(parents=True, exist_ok=True)
            me = self._beats / f"{socket.gethostname()}-{os.getpid()}"
            me.touch()
            threading.Thread(target=_beat, args=(me,), daemon=True).start()
        self._distinct = len({_key(space.active(p)) for p in space.points()})
        self._mine: dict[str, Claim] = {}
        directions = ["maximize" if higher else "minimize" for _, higher in objectives] or ["minimize"]
        with self._locked():
            self.study = optuna.create_study(storage=storage or optuna.storages.InMemoryStorage(),
                                             study_name=study_name, directions=directions,
                                             sampler=self._optuna_sampler(seed), load_if_exists=True)

    def _optuna_sampler(self, seed: int) -> Any:
        """The study's sampler (sequential/random choose points themselves; their trials are enqueued)."""
        return self.optuna.samplers.RandomSampler(seed=seed)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_path is None:
            yield
            return
        from filelock import FileLock

        with FileLock(str(self._lock_path)):
            yield

    # -- what the study holds ------------------------------------------------------------------------------

    def _distinct_trials(self) -> list[Any]:
        """The study's trials that claimed a point (not duplicates an optuna sampler proposed), by number."""
        return [t for t in self.study.get_trials(deepcopy=False)
                if "key" in t.user_attrs and "duplicate_of" not in t.user_attrs]

    def _abandoned(self, t: Any) -> bool:
        """A trial its run left unfinished (killed, interrupted): failed without a record, or running in a
        process of this node that is gone.  Its point may be run again."""
        state = self.optuna.trial.TrialState
        if t.state == state.RUNNING:
            return not _alive(t.user_attrs.get("owner"), self._beats)
        return t.state == state.FAIL and "record" not in t.user_attrs

    def taken(self) -> dict[str, Any]:
        """Active-configuration key -> the trial that holds it (running, complete or failed)."""
        return {t.user_attrs["key"]: t for t in self._distinct_trials() if not self._abandoned(t)}

    def records(self) -> list[dict[str, Any]]:
        """Every trial of the study this process can see, as records (by claim order): finished ones with
        their results, the ones running elsewhere with ``state: running``."""
        out = []
        for t in self._distinct_trials():
            if self._abandoned(t):
                continue
            rec = t.user_attrs.get("record")
            if rec is None:
                point, owner = t.user_attrs.get("point") or {}, t.user_attrs.get("owner") or {}
                rec = {"index": t.user_attrs.get("index", t.number), "point": point, "params": self.space.active(point),
                       "state": "running", "run": f"{owner.get('node')}:{owner.get('pid')}", "node": None,
                       "pid": None, "metrics": None, "goals_met": False}
            out.append(dict(rec))
        return out

    # -- claiming --------------------------------------------------------------------------------------------

    def claim(self, max_trials: int | None = None, stop_when_goals_met: bool = False) -> Claim | None:
        """Pick the next point and register it as running, atomically across processes; None when the space
        is done, the study holds ``max_trials`` trials, or (``stop_when_goals_met``) a trial met every goal."""
        with self._locked():
            trials = self._distinct_trials()
            taken = self.taken()
            if (max_trials is not None and len(taken) >= max_trials) or len(taken) >= self._distinct:
                return None
            if stop_when_goals_met and any((t.user_attrs.get("record") or {}).get("goals_met") for t in trials):
                return None
            found = self._next(taken)
            if found is None:
                return None
            trial, point = found
            key = _key(self.space.active(point))
            index = len(trials)
            trial.set_user_attr("key", key)
            trial.set_user_attr("index", index)
            trial.set_user_attr("point", point)
            trial.set_user_attr("owner", {"node": socket.gethostname(), "pid": os.getpid()})
            claim = Claim(trial.number, index, point, trial)
            self._mine[key] = claim
            return claim

    def _indices(self, point: dict[str, Any]) -> dict[str, int]:
        return {d.key: d.values.index(point[d.key]) for d in self.space.dimensions}

    def _point_of(self, trial: Any) -> dict[str, Any]:
        return {d.key: d.values[trial.suggest_categorical(d.key, list(range(len(d.values))))]
                for d in self.space.dimensions}

    def _order(self) -> Iterator[dict[str, Any]]:
        return self.space.points()

    def _next(self, taken: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        """The first point of this sampler's order not taken, as a new running trial of the study."""
        for p in self._order():
            if _key(self.space.active(p)) not in taken:
                return self._register(p), p
        return None

    def _register(self, point: dict[str, Any]) -> Any:
        """A running trial with ``point``'s parameters (enqueued, then asked: the lock makes it ours)."""
        want = self._indices(point)
        while True:
            self.study.enqueue_trial(want)
            trial = self.study.ask()
            got = {d.key: trial.suggest_categorical(d.key, list(range(len(d.values)))) for d in self.space.dimensions}
            if got == want:
                return trial
            # a trial another process enqueued and then died before asking: drop it
            self.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)

    # -- finishing ---------------------------------------------------------------------------------------------

    def values(self, results: dict[str, float] | None) -> list[float] | None:
        """The objective values of a trial's metrics; None when it failed or lacks one of them."""
        if results is None or not self.objectives:
            return None
        values = [results.get(key, math.nan) for key, _ in self.objectives]
        if any(v is None or not isinstance(v, int | float) or math.isnan(v) for v in values):
            return None
        return [float(v) for v in values]

    def _tell(self, trial: Any, values: list[float] | None) -> None:
        if values is None:
            self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, values if len(values) > 1 else values[0])

    def finish(self, claim: Claim, record: dict[str, Any], results: dict[str, float] | None) -> None:
        """Store a finished trial's record (JSON) in the study and tell optuna its values (None: failed)."""
        self._mine.pop(_key(self.space.active(claim.point)), None)
        claim.trial.set_user_attr("record", record)
        self._tell(claim.trial, self.values(results))

    def abandon(self, claim: Claim) -> None:
        """Give a claimed point back (this run stops before finishing it): a later run may run it."""
        self._mine.pop(_key(self.space.active(claim.point)), None)
        self.study.tell(claim.trial, state=self.optuna.trial.TrialState.FAIL, skip_if_finished=True)

    # -- the simple interface ----------------------------------------------------------------------------------

    def ask(self) -> dict[str, Any] | None:
        claim = self.claim()
        return None if claim is None else claim.point

    def tell(self, point: dict[str, Any], results: dict[str, float] | None) -> None:
        """Record a finished trial."""
        claim = self._mine.get(_key(self.space.active(point)))
        if claim is not None:
            self.finish(claim, {"index": claim.index, "point": point, "metrics": results}, results)


class SequentialSampler(Sampler):
    algorithm = "sequential"


class RandomSampler(Sampler):
    algorithm = "random"

    def _order(self) -> Iterator[dict[str, Any]]:
        points = list(self.space.points())
        random.Random(self.seed).shuffle(points)  # the same order in every process joining the study
        return iter(points)


class OptunaSampler(Sampler):
    """An optuna sampler over the dimensions as categorical choices (by index, so any value works).

    ``algorithm``: ``tpe`` (Bergstra et al. 2011; ``constant_liar`` so trials running at once spread out),
    ``qmc`` (Sobol quasi-Monte Carlo) or ``nsgaII`` (Deb et al. 2002), each optuna's implementation.
    """

    algorithm = "tpe"

    def __init__(self, space: SearchSpace, objectives: list[Objective], seed: int = 0, **study: Any) -> None:
        if not objectives:
            raise UserError(f"search_strategy.sampler {self.algorithm} needs objectives: give sub metrics a "
                            "priority >= 1")
        super().__init__(space, objectives, seed, **study)

    def _optuna_sampler(self, seed: int) -> Any:
        optuna = self.optuna
        if self.algorithm == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
        if self.algorithm == "nsgaII":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, min(50, self.space.size)))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, self.space.size // 2)),
                                          constant_liar=True)

    def _next(self, taken: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        state = self.optuna.trial.TrialState
        for _ in range(50 * max(self._distinct, 1)):
            trial = self.study.ask()
            point = self._point_of(trial)
            held = taken.get(_key(self.space.active(point)))
            if held is None:
                return trial, point
            # already measured (or running): tell optuna the same result (or that it is pending) and ask again
            trial.set_user_attr("duplicate_of", held.number)
            if held.state == state.RUNNING:
                self.study.tell(trial, state=state.PRUNED)
            else:
                self._tell(trial, list(held.values) if held.state == state.COMPLETE else None)
        return None


class TPESampler(OptunaSampler):
    algorithm = "tpe"


class QMCSampler(OptunaSampler):
    algorithm = "qmc"


class NSGAIISampler(OptunaSampler):
    algorithm = "nsgaII"


SAMPLERS: dict[str, type[Sampler]] = {"sequential": SequentialSampler, "random": RandomSampler, "tpe": TPESampler,
                                      "qmc": QMCSampler, "nsgaII": NSGAIISampler}


def make_sampler(name: str, space: SearchSpace, objectives: list[Objective], seed: int = 0, *,
                 journal: Path | None = None) -> Sampler:
    """A sampler over an in-memory study, or (``journal``) over the study stored in that journal file,
    created or joined (``load_if_exists``); ``<journal>.claim.lock`` serializes claims across processes
    (``<journal>.lock`` is optuna's own lock around each journal write)."""
    if journal is None:
        return SAMPLERS[name](space, objectives, seed)
    import optuna

    journal.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return SAMPLERS[name](space, objectives, seed, storage=storage, study_name=journal.stem,
                          lock_path=journal.with_name(journal.name + ".claim.lock"))
