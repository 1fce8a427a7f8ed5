"""Samplers pick the next point of a search space: sequential (every point in order), random
(seeded, without repeats) and optuna's TPE, QMC and NSGA-II (seeded; multi-objective when there are several)."""

from __future__ import annotations

import json
import math
import random
from typing import Any

from honed.config.space import SearchSpace
from honed.errors import UserError
from honed.search.pareto import Objective


def _key(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True, default=str)


class Sampler:
    """``ask`` -> a point or None when the space is done; ``tell`` the point's results (None: failed)."""

    def __init__(self, space: SearchSpace, objectives: list[Objective], seed: int = 0) -> None:
        self.space, self.objectives, self.seed = space, objectives, seed
        self.seen: set[str] = set()

    def ask(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def tell(self, point: dict[str, Any], results: dict[str, float] | None) -> None:
        """Record a finished trial."""

    def _fresh(self, point: dict[str, Any]) -> bool:
        """True once per distinct active configuration."""
        k = _key(self.space.active(point))
        if k in self.seen:
            return False
        self.seen.add(k)
        return True


class SequentialSampler(Sampler):
    def __init__(self, space: SearchSpace, objectives: list[Objective], seed: int = 0) -> None:
        super().__init__(space, objectives, seed)
        self._it = space.points()

    def ask(self) -> dict[str, Any] | None:
        for p in self._it:
            if self._fresh(p):
                return p
        return None


class RandomSampler(Sampler):
    def __init__(self, space: SearchSpace, objectives: list[Objective], seed: int = 0) -> None:
        super().__init__(space, objectives, seed)
        points = list(space.points())
        random.Random(seed).shuffle(points)
        self._it = iter(points)

    def ask(self) -> dict[str, Any] | None:
        for p in self._it:
            if self._fresh(p):
                return p
        return None


class OptunaSampler(Sampler):
    """An optuna sampler over the dimensions as categorical choices (by index, so any value works).

    ``algorithm``: ``tpe`` (Bergstra et al. 2011), ``qmc`` (Sobol quasi-Monte Carlo) or ``nsgaII`` (Deb et al.
    2002), each optuna's implementation.
    """

    algorithm = "tpe"

    def _optuna_sampler(self, optuna: Any, seed: int) -> Any:
        if self.algorithm == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
        if self.algorithm == "nsgaII":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, min(50, self.space.size)))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, self.space.size // 2)))

    def __init__(self, space: SearchSpace, objectives: list[Objective], seed: int = 0) -> None:
        import optuna

        super().__init__(space, objectives, seed)
        if not objectives:
            raise UserError(f"search_strategy.sampler {self.algorithm} needs objectives: give sub metrics a "
                            "priority >= 1")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        directions = ["maximize" if higher else "minimize" for _, higher in objectives]
        sampler = self._optuna_sampler(optuna, seed)
        self.study = optuna.create_study(directions=directions, sampler=sampler)
        self._trials: dict[str, Any] = {}
        self._done: dict[str, list[float] | None] = {}
        self._distinct = len({_key(space.active(p)) for p in space.points()})

    def ask(self) -> dict[str, Any] | None:
        for _ in range(50 * max(self._distinct, 1)):
            if len(self._done) >= self._distinct:
                return None
            trial = self.study.ask()
            point = {d.key: d.values[trial.suggest_categorical(d.key, list(range(len(d.values))))]
                     for d in self.space.dimensions}
            k = _key(self.space.active(point))
            if k in self._done:  # already measured: tell optuna the same result and ask again
                self._finish(trial, self._done[k])
                continue
            if k in self._trials:
                self.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
                continue
            self._trials[k] = trial
            return point
        return None

    def _finish(self, trial: Any, values: list[float] | None) -> None:
        if values is None:
            self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, values if len(values) > 1 else values[0])

    def tell(self, point: dict[str, Any], results: dict[str, float] | None) -> None:
        k = _key(self.space.active(point))
        trial = self._trials.pop(k, None)
        values = None
        if results is not None:
            values = [results.get(key, math.nan) for key, _ in self.objectives]
            if any(v is None or math.isnan(v) for v in values):
                values = None
        self._done[k] = values
        if trial is not None:
            self._finish(trial, values)


class TPESampler(OptunaSampler):
    algorithm = "tpe"


class QMCSampler(OptunaSampler):
    algorithm = "qmc"


class NSGAIISampler(OptunaSampler):
    algorithm = "nsgaII"


SAMPLERS: dict[str, type[Sampler]] = {"sequential": SequentialSampler, "random": RandomSampler, "tpe": TPESampler,
                                      "qmc": QMCSampler, "nsgaII": NSGAIISampler}


def make_sampler(name: str, space: SearchSpace, objectives: list[Objective], seed: int = 0) -> Sampler:
    return SAMPLERS[name](space, objectives, seed)
