"""Dropout that draws one random number per *dropped* element instead of one per element.

Why: on a CPU, ``torch.nn.Dropout`` spends most of its time in the random number generator
(one Bernoulli draw per element, single-threaded).  LoRA applies dropout to the input of every
adapted layer, so for SmolLM2 with LoRA on all seven projections it took 16-19% of a training
step.  For the small rates LoRA uses (0.05-0.1) it is far cheaper to sample *where* the dropped
elements are: the gaps between the successes of independent Bernoulli(p) trials are independent
Geometric(p) variables, so ``n * p`` draws place them.  The result has exactly the distribution
of ``nn.Dropout`` (each element zeroed independently with probability ``p``, the rest scaled by
``1 / (1 - p)``), only the random stream differs.
"""

from __future__ import annotations

import math
from typing import Any

import torch

SPARSE_MAX_P = 0.25
"""Above this rate per-element draws are as cheap, and ``nn.Dropout`` itself runs."""


def dropped_positions(n: int, p: float, device: Any = None) -> torch.Tensor:
    """Flat indices in ``[0, n)`` of the elements an iid Bernoulli(p) mask drops (sorted, int64)."""
    log_keep = math.log1p(-p)
    mean = n * p
    found: list[torch.Tensor] = []
    last = -1  # position of the latest success so far
    while last < n:
        draws = int(mean + 6 * math.sqrt(mean) + 16)  # a second round is needed about once in 10^9
        u = torch.rand(draws, dtype=torch.float64, device=device)
        # P(floor(log(1-u) / log(1-p)) >= k) = (1-p)^k: the number of kept elements before a drop.
        gaps = torch.floor(torch.log1p(-u) / log_keep).to(torch.int64) + 1
        pos = torch.cumsum(gaps, 0) + last
        found.append(pos)
        last = int(pos[-1])
        mean = max(n - last, 0) * p
    pos = torch.cat(found) if len(found) > 1 else found[0]
    return pos[: int(torch.searchsorted(pos, n))]  # sorted: the ones below n are a prefix


def sparse_dropout(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` dropped at rate ``p`` (a new tensor, kept elements scaled by ``1 / (1 - p)``) and the
    flat positions it dropped, which a hand-written backward needs to zero the same gradient elements.

    For code autograd does not track (an ``autograd.Function``): under autograd the in-place zeroing
    of a view makes the backward pass about 2x slower than :class:`SparseDropout`'s mask multiply.
    """
    dropped = dropped_positions(x.numel(), p, x.device)
    out = x * (1.0 / (1.0 - p))
    out.view(-1).index_fill_(0, dropped, 0)
    return out, dropped


class SparseDropout(torch.nn.Dropout):
    """``nn.Dropout`` with the same distribution, sampled sparsely on CPU for small ``p``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.p > SPARSE_MAX_P or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        mask = torch.full((x.numel(),), 1.0 / (1.0 - self.p), dtype=x.dtype, device=x.device)
        mask.index_fill_(0, dropped_positions(x.numel(), self.p, x.device), 0)
        return x * mask.view(x.shape)


def use_sparse_dropout(model: Any) -> int:
    """Swap the ``nn.Dropout`` layers of peft's LoRA modules for :class:`SparseDropout`; return how many."""
    swapped = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, d in list(drops.items()):
            if type(d) is torch.nn.Dropout:
                drops[name] = SparseDropout(d.p)
                swapped += 1
    return swapped
