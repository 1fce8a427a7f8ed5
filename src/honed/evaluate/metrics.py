"""Pure metric arithmetic: classification scores, timing statistics, perplexity.

Kept free of models so each formula is tested against hand-computed numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def classification_scores(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None
                          ) -> dict[str, float]:
    """accuracy_score and macro-averaged f1_score / precision / recall (scikit-learn's definitions,
    with 0 for a label never predicted or never true), plus exact_match (= accuracy on strings)."""
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred differ in length")
    n = len(y_true)
    if n == 0:
        return {"accuracy_score": math.nan, "f1_score": math.nan, "precision": math.nan, "recall": math.nan,
                "exact_match": math.nan}
    classes = list(labels) if labels else sorted(set(y_true) | set(y_pred))
    correct = sum(t == p for t, p in zip(y_true, y_pred, strict=True))
    precisions, recalls, f1s = [], [], []
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred, strict=True))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred, strict=True))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred, strict=True))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        precisions.append(prec)
        recalls.append(rec)
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    k = len(classes)
    return {
        "accuracy_score": correct / n,
        "f1_score": sum(f1s) / k,
        "precision": sum(precisions) / k,
        "recall": sum(recalls) / k,
        "exact_match": correct / n,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def timing_stats(values: Sequence[float]) -> dict[str, float]:
    """avg, p50 ... p99, min, max of a list of measurements."""
    if not values:
        return {}
    out = {"avg": sum(values) / len(values), "min": min(values), "max": max(values)}
    for q in (50, 75, 90, 95, 99):
        out[f"p{q}"] = percentile(values, q)
    return out


def perplexity(total_nll: float, n_tokens: int) -> dict[str, float]:
    """exp(mean negative log-likelihood per predicted token) and that mean ('loss')."""
    if n_tokens == 0:
        return {"perplexity": math.nan, "loss": math.nan}
    loss = total_nll / n_tokens
    return {"perplexity": math.exp(loss), "loss": loss}
