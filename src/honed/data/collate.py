"""Batches for a trainer: pad the unpadded rows build_datasets returns.

Line-by-line and join rows pad with ``pad_id`` (attention 0, label -100).  Packed rows carry
``position_ids``; their batch has no ``attention_mask`` because transformers builds the
block-diagonal mask from restarting positions only when no mask is given (and no KV cache is
used: call the model with ``use_cache=False``).  Padding then continues as one more segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from honed.data.packing import IGNORE


class Collator:
    """``Collator(pad_id)(rows) -> dict of LongTensors``; usable as a Trainer's data_collator."""

    def __init__(self, pad_id: int, padding_side: str = "right", pad_to_multiple_of: int | None = None) -> None:
        self.pad_id = pad_id
        self.padding_side = padding_side
        self.multiple = pad_to_multiple_of

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        packed = "position_ids" in rows[0]
        out: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
        out["position_ids" if packed else "attention_mask"] = []
        for r in rows:
            n = width - len(r["input_ids"])
            fills = {"input_ids": [self.pad_id] * n, "labels": [IGNORE] * n, "attention_mask": [0] * n,
                     "position_ids": list(range(n))}
            for key in out:
                value = list(r[key]) if key in r else [1] * len(r["input_ids"])
                out[key].append(fills[key] + value if self.padding_side == "left" else value + fills[key])
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
