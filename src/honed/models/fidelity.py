"""Fidelity of a candidate model to a reference model: their next-token distributions compared, teacher-forced,
on the same token sequences.

Accuracy on a few hundred held-out rows moves in steps of 1/rows and cannot tell two quantized builds 0.5 points
apart; the KL divergence of the next-token distributions at every position of those rows can.  The statistics
are those of llama.cpp's ``llama-perplexity --kl-divergence`` (tools/perplexity/perplexity.cpp: mean KLD, its
99th percentile, "Same top p" and the perplexities of both models), computed here from any two runtimes of
``honed.models.runtime`` (HF/PEFT in torch, ONNX, onnxruntime-genai).

Per sequence ``ids`` (n tokens), both models read ``ids[:-1]``; row ``i`` of their logits (vocab,) predicts
``ids[i + 1]``, so a sequence scores n - 1 positions.  At each position, in float64 with max-subtraction:

* ``KL(ref || cand) = sum_v p_ref(v) * (log p_ref(v) - log p_cand(v))`` (nats);
* top-1 agreement: ``argmax ref == argmax cand``;
* negative log-likelihood of ``ids[i + 1]`` under each model, whose mean over all positions gives
  ``perplexity = exp(mean NLL)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.runtime import Runtime, log_softmax, open_runtime

if TYPE_CHECKING:
    from honed.util.accelerator import Accelerator
    from honed.util.context import ProgressTask

log = logging.getLogger("honed")


@dataclass(frozen=True)
class Fidelity:
    """How closely a candidate's next-token distributions follow a reference's, over ``positions`` scored
    positions of ``sequences`` sequences."""

    kl_mean: float
    """Mean of KL(reference || candidate) over positions, in nats (0: the same distributions)."""
    kl_p99: float
    """99th percentile (linear interpolation, numpy's default) of the per-position KL, in nats."""
    top1_agreement: float
    """Share (0-1) of positions where both models' most likely next token is the same."""
    perplexity: float
    """exp(mean negative log-likelihood per position) of the candidate on the sequences' own next tokens."""
    reference_perplexity: float
    """The same for the reference."""
    positions: int
    sequences: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PositionScores:
    """Per-position numbers of one sequence (each array of shape (positions,))."""

    kl: np.ndarray
    agree: np.ndarray
    nll: np.ndarray
    reference_nll: np.ndarray


def compare_logits(reference: np.ndarray, candidate: np.ndarray, targets: Sequence[int]) -> PositionScores:
    """Scores of logits ``reference`` and ``candidate`` (positions, vocab; any float dtype) whose row ``i`` predicts
    ``targets[i]``: KL(reference || candidate) in nats, argmax agreement, and each model's NLL of the target."""
    if reference.shape != candidate.shape:
        raise UserError(f"the reference gives logits of shape {reference.shape} and the candidate {candidate.shape}; "
                        "compare models with the same vocabulary (the same tokenizer)")
    if len(targets) != reference.shape[0]:
        raise ValueError(f"{len(targets)} targets for {reference.shape[0]} positions")
    lp_ref, lp_cand = log_softmax(reference), log_softmax(candidate)
    kl = (np.exp(lp_ref) * (lp_ref - lp_cand)).sum(axis=-1)
    rows = np.arange(len(targets))
    t = np.asarray(targets, dtype=np.int64)
    return PositionScores(kl=kl, agree=reference.argmax(-1) == candidate.argmax(-1),
                          nll=-lp_cand[rows, t], reference_nll=-lp_ref[rows, t])


def summarize(scores: Iterable[PositionScores]) -> Fidelity:
    """The ``Fidelity`` of per-sequence scores (every position weighs the same)."""
    parts = list(scores)
    if not parts or not sum(len(p.kl) for p in parts):
        raise UserError("no position to compare: give sequences of at least two tokens")
    kl = np.concatenate([p.kl for p in parts])
    return Fidelity(
        kl_mean=float(kl.mean()), kl_p99=float(np.quantile(kl, 0.99)),
        top1_agreement=float(np.concatenate([p.agree for p in parts]).mean()),
        perplexity=math.exp(float(np.concatenate([p.nll for p in parts]).mean())),
        reference_perplexity=math.exp(float(np.concatenate([p.reference_nll for p in parts]).mean())),
        positions=len(kl), sequences=len(parts),
    )


def _logits(runtime: Runtime, ids: list[int]) -> np.ndarray:
    """Logits (len(ids), vocab) through ``Runtime.forward`` itself: an evaluator backend overrides ``forward``
    with the timed call that returns nothing."""
    return Runtime.forward(runtime, [ids])[0]


def compare_runtimes(reference: Runtime, candidate: Runtime, sequences: Iterable[Sequence[int]],
                     bar: ProgressTask | None = None) -> Fidelity:
    """``Fidelity`` of ``candidate`` to ``reference`` on token-id ``sequences`` (teacher-forced, one sequence per
    forward call, no padding).  A sequence longer than either model's context is cut to it (+1, the last token
    is only predicted); one of fewer than two tokens scores nothing and is skipped.  ``bar`` advances by one per
    sequence (skipped ones included)."""
    limits = [c + 1 for c in (reference.context_length, candidate.context_length) if c]
    longest = min(limits) if limits else None
    scores = []
    for seq in sequences:
        ids = [int(t) for t in seq][:longest]
        if len(ids) >= 2:
            scores.append(compare_logits(_logits(reference, ids[:-1]), _logits(candidate, ids[:-1]), ids[1:]))
        if bar is not None:
            bar.advance(1)
    return summarize(scores)


def compare_models(reference: ModelHandle | Runtime, candidate: ModelHandle | Runtime,
                   sequences: Iterable[Sequence[int]], target: Accelerator | None = None,
                   bar: ProgressTask | None = None) -> Fidelity:
    """``compare_runtimes`` for model handles or runtimes; a handle is opened (``open_runtime``: an HF/PEFT model in
    its stored dtype, a PEFT adapter applied) on ``target`` and closed afterwards; a runtime is used as is."""
    opened: list[Runtime] = []

    def _open(model: ModelHandle | Runtime) -> Runtime:
        if isinstance(model, Runtime):
            return model
        rt = open_runtime(model, target)
        opened.append(rt)
        return rt

    try:
        return compare_runtimes(_open(reference), _open(candidate), list(sequences), bar)
    finally:
        for rt in opened:
            rt.close()

