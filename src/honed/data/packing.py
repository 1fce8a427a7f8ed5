"""Formatted rows to token sequences: tokenizing with labels, then the packing strategies.

Labels follow transformers' convention: same length as ``input_ids`` (the model shifts
them), -100 where no loss is taken (prompt tokens under completion-only loss, padding,
the first token of each row inside a packed block).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from honed.data.config import PreProcessDataConfig
from honed.data.formatting import Formatted, LossRule
from honed.errors import DataError

log = logging.getLogger("honed")

IGNORE = -100
_CHUNK = 4096


@dataclass
class Tokenized:
    """One row's tokens and labels."""

    ids: list[int]
    labels: list[int]


@dataclass
class Packed:
    """Sequences ready for a trainer plus what happened on the way."""

    rows: list[dict[str, list[int]]]
    stats: dict[str, int] = field(default_factory=dict)


def tokenize(
    examples: Sequence[Formatted], tokenizer: Any, pp: PreProcessDataConfig, completion_only: bool
) -> list[Tokenized]:
    """Tokenize rows in batches; under completion-only loss label only tokens that reach into a trained span.

    A trained span is the answer, or each span of ``Formatted.loss_spans`` (every assistant turn of a
    chat).  A token is trained when its character span overlaps one, so a token that merges the
    prompt's last characters with the answer's first is still learned (the answer is never cut).
    The appended EOS is trained when the row's last token is (a row that trains on nothing stays so).
    Slow tokenizers (no offsets) count the tokens of each span boundary's text prefix instead.
    """
    add_special = pp.add_special_tokens and not pp.chat_template
    eos = tokenizer.eos_token_id if pp.append_eos else None
    fast = bool(getattr(tokenizer, "is_fast", False))
    out: list[Tokenized] = []
    for start in range(0, len(examples), _CHUNK):
        chunk = examples[start:start + _CHUNK]
        texts = [e.text for e in chunk]
        masked = [completion_only and (bool(e.prompt) or e.trained is not None) for e in chunk]
        enc = tokenizer(texts, add_special_tokens=add_special, return_attention_mask=False,
                        return_offsets_mapping=fast and any(masked), verbose=False)
        counts: dict[tuple[int, int], int] = {}
        if not fast and any(masked):  # tokens before each boundary: tokenize the text up to it
            wanted = sorted({(j, c) for j, e in enumerate(chunk) if masked[j]
                             for span in e.loss_spans() for c in span if c < len(texts[j])})
            penc = tokenizer([texts[j][:c] for j, c in wanted], add_special_tokens=add_special,
                             return_attention_mask=False)["input_ids"] if wanted else []
            counts = {w: len(ids) for w, ids in zip(wanted, penc, strict=True)}
        for j, ex in enumerate(chunk):
            ids = list(enc["input_ids"][j])
            if not masked[j]:
                labels = list(ids)
            elif fast:
                spans = ex.loss_spans()
                offsets = enc["offset_mapping"][j]
                if len(spans) == 1:  # the common case, kept to one comparison per token
                    (a, b), = spans
                    labels = [t if end > a and begin < b else IGNORE for t, (begin, end) in zip(ids, offsets, strict=True)]
                else:
                    labels = [t if any(end > a and begin < b for a, b in spans) else IGNORE
                              for t, (begin, end) in zip(ids, offsets, strict=True)]
            else:
                labels = [IGNORE] * len(ids)
                for a, b in ex.loss_spans():
                    lo = counts.get((j, a), len(ids))
                    hi = counts.get((j, b), len(ids))
                    labels[lo:hi] = ids[lo:hi]
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
                labels.append(eos if not labels or labels[-1] != IGNORE else IGNORE)
            out.append(Tokenized(ids, labels))
    return out


SMALL_SHARE = 0.10
"""Share of a data set's tokens under the loss below which honed warns that the answer may be cut wrong."""
_WARNED: set[str] = set()


def loss_note(cfg_name: str, rule: LossRule, examples: Sequence[Formatted], rows: Sequence[Tokenized]) -> str | None:
    """A warning when the loss may not cover what the user meant, with the figures; None when all is well.

    Fires when honed chose the answer boundary and under ``SMALL_SHARE`` of the tokens are trained,
    when the boundary is a guess or a setting cannot apply (``rule.caveat``), or when rows train on
    nothing (no ``response_template`` in them).  Counts are over the rows' tokens before packing
    (no padding), EOS included.
    """
    if not rows:
        return None
    total = sum(len(r.ids) for r in rows)
    trained = sum(1 for r in rows for x in r.labels if x != IGNORE)
    empty = sum(1 for e, r in zip(examples, rows, strict=True) if rule.completion and all(x == IGNORE for x in r.labels))
    small = rule.completion and not rule.explicit and trained < SMALL_SHARE * total
    if not (small or rule.caveat or empty):
        return None
    n = len(rows)
    figures = (f"the loss covers {trained} of {total} tokens ({100 * trained / max(total, 1):.1f}%; "
               f"{trained / n:.1f} of {total / n:.1f} per row): {rule.rule}")
    notes = []
    if rule.caveat:
        notes.append(rule.caveat)
    if empty:
        first = next(e for e, r in zip(examples, rows, strict=True) if all(x == IGNORE for x in r.labels))
        notes.append(f"{empty} of {n} rows train on nothing (e.g. row {first.index}: "
                     f"{first.text[:80]!r}); check response_template")
    fix = ("To train on the whole answer, set pre_process_data_config.response_template to the text that ends "
           "the prompt (e.g. '<|assistant|>\\n'), or completion_only: false to train on every token")
    return f"data config '{cfg_name}': {figures}" + "".join(f"; {x}" for x in notes) + f". {fix}"


def warn_once(message: str | None) -> None:
    """Log ``message`` as a warning the first time this process sees it."""
    if message and message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def _row(ids: list[int], labels: list[int], positions: list[int] | None = None) -> dict[str, list[int]]:
    row = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
    if positions is not None:
        row["position_ids"] = positions
    return row


def pack(
    rows: Sequence[Tokenized], pp: PreProcessDataConfig, *, pad_id: int | None, joiner_ids: Sequence[int] = (),
    where: Callable[[int], str] | None = None,
) -> Packed:
    """Turn tokenized rows into sequences with ``pp.strategy``; see PreProcessDataConfig for options."""
    n = pp.max_seq_len
    stats = {"truncated_rows": 0, "dropped_rows": 0, "dropped_short": 0}
    if pp.strategy in ("join", "join-sliding-window"):
        ids: list[int] = []
        labels: list[int] = []
        for k, r in enumerate(rows):
            if k and joiner_ids:
                ids.extend(joiner_ids)
                labels.extend([IGNORE] * len(joiner_ids))
            ids.extend(r.ids)
            labels.extend(r.labels)
        step = n if pp.strategy == "join" else (pp.stride or max(1, n // 2))
        seqs = []
        for s in range(0, max(len(ids) - (n - step), 1), step):
            block_ids = ids[s:s + n]
            block_labels = labels[s:s + n]
            if s and step < n:  # tokens the previous window already trained on carry no loss here
                overlap = n - step
                block_labels = [IGNORE] * min(overlap, len(block_labels)) + block_labels[overlap:]
            seqs.append(_row(block_ids, block_labels))
    else:
        kept: list[Tokenized] = []
        for i, r in enumerate(rows):
            if len(r.ids) <= n:
                kept.append(r)
            elif pp.overflow == "truncate":
                stats["truncated_rows"] += 1
                kept.append(Tokenized(r.ids[:n], r.labels[:n]))
            elif pp.overflow == "drop":
                stats["dropped_rows"] += 1
            else:
                at = where(i) if where else f"row {i}"
                raise DataError(f"{at}: {len(r.ids)} tokens, longer than max_seq_len {n}; raise max_seq_len or set "
                                "pre_process_data_config.overflow to truncate or drop")
        if pp.strategy == "line-by-line":
            seqs = [_row(list(r.ids), list(r.labels)) for r in kept]
        else:
            seqs = _pack_whole(kept, n)
    if pp.drop_short_sequences:
        before = len(seqs)
        seqs = [s for s in seqs if len(s["input_ids"]) >= n]
        stats["dropped_short"] = before - len(seqs)
    if pp.pad_to_max_len:
        if pad_id is None:
            raise DataError("pad_to_max_len needs a tokenizer with a pad or EOS token; set one or turn it off")
        seqs = [_pad(s, n, pad_id, pp.padding_side) for s in seqs]
    return Packed(seqs, stats)


def _pack_whole(rows: Sequence[Tokenized], n: int) -> list[dict[str, list[int]]]:
    """Fill blocks with whole rows in order; positions restart at 0 for every row.

    transformers reads restarting ``position_ids`` (with no attention_mask) as packed sequences and
    builds a block-diagonal mask, so rows in a block do not attend to each other.  The first token
    of each later row gets no label: it would be predicted from the previous row.
    """
    blocks: list[dict[str, list[int]]] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for r in rows:
        if ids and len(ids) + len(r.ids) > n:
            blocks.append(_row(ids, labels, positions))
            ids, labels, positions = [], [], []
        first = len(ids)
        ids.extend(r.ids)
        labels.extend(r.labels)
        if first:
            labels[first] = IGNORE
        positions.extend(range(len(r.ids)))
    if ids:
        blocks.append(_row(ids, labels, positions))
    return blocks


def _pad(row: dict[str, list[int]], n: int, pad_id: int, side: str) -> dict[str, list[int]]:
    missing = n - len(row["input_ids"])
    if missing <= 0:
        return row
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE, "position_ids": 0}
    if side == "left":
        return {k: [fill[k]] * missing + v for k, v in row.items()}
    if "position_ids" in row:  # padding continues as one more "row" so it stays a separate segment
        out = {k: v + [fill[k]] * missing for k, v in row.items() if k != "position_ids"}
        out["position_ids"] = row["position_ids"] + list(range(missing))
        return out
    return {k: v + [fill[k]] * missing for k, v in row.items()}
