"""Pure metric arithmetic: classification scores, AUROC, text-match scores (exact match, relaxed
accuracy, word sort ratio, word error rate), timing statistics, perplexity.

Kept free of models so each formula is tested against hand-computed numbers.
"""

from __future__ import annotations

import math
import re
from collections import Counter
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
    """avg, p50 ... p99, p999 (the 99.9th percentile, Olive's name), min, max of a list of measurements."""
    if not values:
        return {}
    out = {"avg": sum(values) / len(values), "min": min(values), "max": max(values)}
    for q in (50, 75, 90, 95, 99):
        out[f"p{q}"] = percentile(values, q)
    out["p999"] = percentile(values, 99.9)
    return out


def perplexity(total_nll: float, n_tokens: int) -> dict[str, float]:
    """exp(mean negative log-likelihood per predicted token) and that mean ('loss')."""
    if n_tokens == 0:
        return {"perplexity": math.nan, "loss": math.nan}
    loss = total_nll / n_tokens
    return {"perplexity": math.exp(loss), "loss": loss}


def binary_auroc(positive: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative,
    ties counting one half (the Mann-Whitney U statistic / (P * N), as scikit-learn's roc_auc_score).
    NaN when the truth holds only one class."""
    n_pos = sum(bool(p) for p in positive)
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):  # average 1-based ranks over runs of tied scores
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, p in zip(ranks, positive, strict=True) if p)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc(y_true: Sequence[str], probs: Sequence[Sequence[float]], labels: Sequence[str]) -> float:
    """AUROC of per-label scores ``probs[row][k]`` (for ``labels[k]``).

    Two labels: the binary AUROC of the second label's score (torchmetrics' ``task="binary"`` on
    class 1, Olive's default).  More: the macro average of one-vs-rest AUROCs over the labels that
    both occur and do not occur in ``y_true`` (scikit-learn's ``multi_class="ovr"``).
    """
    if len(labels) == 2:
        return binary_auroc([t == labels[1] for t in y_true], [p[1] for p in probs])
    per_label = [binary_auroc([t == lab for t in y_true], [p[k] for p in probs]) for k, lab in enumerate(labels)]
    valid = [a for a in per_label if not math.isnan(a)]
    return sum(valid) / len(valid) if valid else math.nan


def _squash(text: str) -> str:
    return " ".join(text.strip().lower().split())


def _answers(ref: str) -> list[str]:
    """Olive's convention: several valid answers are separated by '|'."""
    return ref.split("|") if "|" in ref else [ref]


def _number(text: str) -> float | None:
    try:
        return float(text.strip().replace(",", "").replace("%", ""))
    except ValueError:
        return None


def _relaxed_match(pred: str, ref: str, tolerance: float) -> bool:
    p, r = _number(pred), _number(ref)
    if p is not None and r is not None:
        return p == r or (r != 0 and abs(p - r) / abs(r) <= tolerance)
    return _squash(pred) == _squash(ref)


def word_sort_ratio(pred: str, ref: str) -> float:
    """Shared words (as a multiset, case-folded) over the longer word count; 1 when both are empty."""
    pw, rw = pred.lower().split(), ref.lower().split()
    if not rw:
        return 0.0 if pw else 1.0
    return sum((Counter(pw) & Counter(rw)).values()) / max(len(pw), len(rw))


def _wer_normalize(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", str(text).lower())
    return re.sub(r"\s+", " ", text).strip()


def _word_edits(hyp: list[str], ref: list[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions)."""
    prev = list(range(len(ref) + 1))
    for i, h in enumerate(hyp, 1):
        cur = [i] + [0] * len(ref)
        for j, r in enumerate(ref, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (h != r))
        prev = cur
    return prev[-1]


def word_error_rate(y_true: Sequence[str], y_pred: Sequence[str], normalize: bool = True) -> float:
    """Corpus WER: word edits summed over rows / reference words summed (torchmetrics' WordErrorRate);
    ``normalize`` lower-cases and turns punctuation into spaces first, as Olive does."""
    edits = words = 0
    for ref, hyp in zip(y_true, y_pred, strict=True):
        if normalize:
            ref, hyp = _wer_normalize(ref), _wer_normalize(hyp)
        edits += _word_edits(hyp.split(), ref.split())
        words += len(ref.split())
    return edits / words if words else math.nan


def text_scores(y_true: Sequence[str], y_pred: Sequence[str], tolerance: float = 0.05,
                normalize_wer: bool = True) -> dict[str, float]:
    """Olive's text-match sub types over predictions and references ('|' separates valid answers).

    exact_match: case- and whitespace-insensitive equality; relaxed_accuracy: numbers within
    ``tolerance`` relative error (ChartQA's 5%), else exact match; word_sort_ratio: mean shared-word
    ratio; wer: corpus word error rate (lower is better).
    """
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred differ in length")
    n = len(y_true)
    if n == 0:
        return dict.fromkeys(("exact_match", "relaxed_accuracy", "word_sort_ratio", "wer"), math.nan)
    refs, preds = [str(t) for t in y_true], [str(p) for p in y_pred]
    return {
        "exact_match": sum(any(_squash(p) == _squash(a) for a in _answers(r))
                           for r, p in zip(refs, preds, strict=True)) / n,
        "relaxed_accuracy": sum(any(_relaxed_match(p, a, tolerance) for a in _answers(r))
                                for r, p in zip(refs, preds, strict=True)) / n,
        "word_sort_ratio": sum(word_sort_ratio(p, r) for r, p in zip(refs, preds, strict=True)) / n,
        "wer": word_error_rate(refs, preds, normalize_wer),
    }
