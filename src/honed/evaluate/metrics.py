"""The one metric registry, and pure metric arithmetic: classification scores, AUROC, text-match scores
(exact match, relaxed accuracy, word sort ratio, word error rate), timing statistics, perplexity.

A metric is one ``MetricDef`` (its sub types, each with direction, unit, default priority and Olive's
spellings, and the function that computes it from the evaluator's session), registered once with
``register_metric``; the built-in ones at the bottom of ``honed.evaluate.evaluator``, next to their
functions.  The evaluator schema (``honed.evaluate.config``), its JSON Schema, ``honed evaluate`` and
docs/config-reference.md are made from this registry, so a new metric is one new definition.  The
registry refuses a second metric under a name already taken.

Kept free of models so each formula is tested against hand-computed numbers.
"""

from __future__ import annotations

import difflib
import importlib
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


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


# ---- the metric registry ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SubType:
    """One number a metric reports."""

    name: str
    """What configs write in ``sub_types[*].name``; results are keyed '<metric name>-<sub type>'."""
    higher_is_better: bool
    unit: str
    """Unit of the number as measured: ms, samples/s, tokens/s, MiB, bytes, fraction (0-1), ..."""
    description: str = ""
    default: bool = False
    """Reported when a metric config lists no sub_types."""
    priority: int = -1
    """Default rank among the search objectives (-1: reported only)."""
    aliases: tuple[str, ...] = ()
    """Other (older Olive) spellings computed as this sub type; the result keeps the name the config uses."""
    hf_names: tuple[str, ...] = ()
    """Names Olive's ``huggingface_metrics`` backend uses for it (translated to ``name`` when a config loads)."""
    options: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    """``metric_config`` keys applied to it (Olive's names), with their types."""

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


@dataclass(frozen=True)
class MetricDef:
    """A metric type: its sub types and how to compute them."""

    name: str
    """The ``type`` configs write (accuracy, latency, ...)."""
    description: str
    compute: Callable[[Any, Any], dict[str, float]]
    """(evaluator session, MetricConfig) -> {sub type: value} (``honed.evaluate.evaluator``)."""
    sub_types: tuple[SubType, ...] = ()
    open_sub_types: bool = False
    """The user names the results and gives each its direction (custom); ``sub_types`` is then empty."""
    needs_data: bool = False
    """Needs a data_config to score."""
    refused: Mapping[str, str] = field(default_factory=dict)
    """Olive sub types honed cannot compute -> why, and what to use instead."""
    check: Callable[[Any], None] | None = None
    """Further validation of a MetricConfig of this type; raises ValueError with the fix."""
    whole_run: bool = False
    """Measured over the whole evaluation (memory): sampled while the other metrics run, computed last."""
    cli: tuple[str, ...] = ()
    """Sub types ``honed evaluate --metrics <name>`` reports (default: the default ones)."""

    def sub_type(self, name: str) -> SubType | None:
        """The sub type called ``name`` (or one of its aliases), or None."""
        return next((s for s in self.sub_types if name == s.name or name in s.aliases), None)

    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sub_types)

    def defaults(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sub_types if s.default)

    def unknown_sub_type(self, name: str) -> str:
        """The error for a sub type this metric does not have: a 'did you mean' for a close name, and the
        valid ones."""
        spellings = [n for s in self.sub_types for n in (s.name, *s.aliases)]
        close = difflib.get_close_matches(name, spellings, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown {self.name} sub type '{name}'; {hint}use one of {', '.join(self.names())}"


_METRICS: dict[str, MetricDef] = {}
_LOADED = False
BUILTIN_MODULE = "honed.evaluate.evaluator"
"""Where the built-in metrics are defined (next to the functions computing them)."""


def register_metric(defn: MetricDef) -> MetricDef:
    """Add a metric to the registry. A name may be registered once."""
    taken = _METRICS.get(defn.name)
    if taken is not None and taken is not defn:
        raise ValueError(f"a metric named '{defn.name}' is already registered by {taken.compute.__module__}")
    if not defn.name or not defn.name.isidentifier():
        raise ValueError(f"metric name {defn.name!r} must be an identifier (it is the type configs write)")
    if defn.open_sub_types == bool(defn.sub_types):
        raise ValueError(f"metric '{defn.name}': give sub_types, or open_sub_types=True (the user names them), "
                         "not both")
    spellings = [n for s in defn.sub_types for n in (s.name, *s.aliases)]
    repeated = sorted({n for n in spellings if spellings.count(n) > 1})
    if repeated:
        raise ValueError(f"metric '{defn.name}': sub type names repeat: {', '.join(repeated)}")
    if defn.sub_types and not defn.defaults():
        raise ValueError(f"metric '{defn.name}': mark at least one sub type default=True")
    blank = [s.name for s in defn.sub_types if not s.unit.strip()]
    if blank:
        raise ValueError(f"metric '{defn.name}': sub types {', '.join(blank)} need a unit")
    unknown = [n for n in defn.cli if n not in defn.names()]
    if unknown:
        raise ValueError(f"metric '{defn.name}': cli names unknown sub types {', '.join(unknown)}")
    _METRICS[defn.name] = defn
    return defn


def unregister_metric(name: str) -> None:
    """Remove a metric (tests, plugins replacing one of their own)."""
    _METRICS.pop(name, None)


def _load_builtins() -> None:
    """Import the module defining the built-in metrics, once (as ``honed.passes.base`` imports the passes)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    try:
        importlib.import_module(BUILTIN_MODULE)
    except BaseException:
        _LOADED = False
        raise


def get_metric(name: str) -> MetricDef | None:
    """The metric registered under ``name``, or None."""
    _load_builtins()
    return _METRICS.get(name)


def all_metrics() -> dict[str, MetricDef]:
    """Every registered metric, by name, in registration order."""
    _load_builtins()
    return dict(_METRICS)


def unknown_metric_type(name: str) -> str:
    """The error for a metric type nobody registered, with a 'did you mean' for a close name."""
    known = list(all_metrics())
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown metric type '{name}'; {hint}use one of {', '.join(known)}"


def unit_of(metric_type: str, sub_type: str) -> str | None:
    """The unit of a built-in or registered sub type's number, or None (custom results, lm-eval keys)."""
    defn = get_metric(metric_type)
    sub = defn.sub_type(sub_type) if defn else None
    return sub.unit if sub else None


def hf_metric_names() -> dict[str, str]:
    """Olive's ``huggingface_metrics`` sub type names -> honed's (accuracy -> accuracy_score, f1 -> f1_score)."""
    return {hf: s.name for d in all_metrics().values() for s in d.sub_types for hf in s.hf_names}
