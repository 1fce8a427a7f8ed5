"""Goals: turn each sub metric's goal into a bound and check a model's results against it.

Relative goals compare with the input model's value (the baseline): with higher-is-better,
``max-degradation 0.01`` accepts anything >= baseline - 0.01 and ``min-improvement 0.01`` needs
>= baseline + 0.01; lower-is-better flips the signs.  Percent goals scale by |baseline| / 100.
"""

from __future__ import annotations

from dataclasses import dataclass

from honed.errors import UserError
from honed.evaluate.config import EvaluatorConfig, GoalConfig


@dataclass(frozen=True)
class GoalCheck:
    key: str
    bound: float
    higher_is_better: bool
    value: float | None

    @property
    def met(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.bound if self.higher_is_better else self.value <= self.bound

    def __str__(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        shown = "missing" if self.value is None else f"{self.value:.4g}"
        return f"{self.key} {shown} {op} {self.bound:.4g}: {'met' if self.met else 'missed'}"


def goal_bound(goal: GoalConfig, higher_is_better: bool, baseline: float | None, key: str = "") -> float:
    """The value a result must reach (>= when higher is better, else <=)."""
    if goal.type == "threshold":
        return goal.value
    if baseline is None:
        raise UserError(f"goal on {key}: a {goal.type} goal needs the input model's value; set "
                        "engine.evaluate_input_model to true or use a threshold goal")
    delta = goal.value * abs(baseline) / 100 if goal.type.startswith("percent-") else goal.value
    improve = goal.type.endswith("min-improvement")
    sign = 1 if higher_is_better == improve else -1
    return baseline + sign * delta


def check_goals(cfg: EvaluatorConfig, results: dict[str, float],
                baseline: dict[str, float] | None = None) -> list[GoalCheck]:
    """One check per goal in ``cfg``; a result missing from ``results`` fails its goal."""
    directions = cfg.directions()
    out = []
    for key, goal in cfg.goals().items():
        base = (baseline or {}).get(key)
        bound = goal_bound(goal, directions[key], base, key)
        out.append(GoalCheck(key, bound, directions[key], results.get(key)))
    return out


def goals_met(cfg: EvaluatorConfig, results: dict[str, float], baseline: dict[str, float] | None = None) -> bool:
    return all(c.met for c in check_goals(cfg, results, baseline))
