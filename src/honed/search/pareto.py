"""Pareto front and ranking of trials over several objectives."""

from __future__ import annotations

import math
from collections.abc import Sequence

Objective = tuple[str, bool]
"""(result key, higher is better)."""


def _signed(point: dict[str, float], objectives: Sequence[Objective]) -> tuple[float, ...] | None:
    out = []
    for key, higher in objectives:
        v = point.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        out.append(v if higher else -v)
    return tuple(out)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and better somewhere (both signed: higher is better)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def pareto_front(points: Sequence[dict[str, float] | None], objectives: Sequence[Objective]) -> list[int]:
    """Indices of the points no other point dominates (points lacking an objective are left out);
    equal points are all kept."""
    signed = [_signed(p, objectives) if p is not None else None for p in points]
    front = []
    for i, a in enumerate(signed):
        if a is None:
            continue
        if not any(b is not None and dominates(b, a) for j, b in enumerate(signed) if j != i):
            front.append(i)
    return front


def rank(points: Sequence[dict[str, float] | None], objectives: Sequence[Objective],
         goals_met: Sequence[bool] | None = None) -> list[int]:
    """Indices best first: goals met before missed, Pareto-optimal before dominated, then the
    objectives in priority order (lexicographic)."""
    front = set(pareto_front(points, objectives))
    met = goals_met or [True] * len(points)

    def key(i: int) -> tuple:
        s = _signed(points[i], objectives) if points[i] is not None else None
        return (s is None, not met[i], i not in front, tuple(-x for x in s) if s else (), i)

    return sorted(range(len(points)), key=key)
