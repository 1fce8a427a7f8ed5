"""What a data config produces, before any training: rows, tokens, blocks, labels, duplicates."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from honed.data.build import build_datasets
from honed.data.components import is_tokenized, token_rows
from honed.data.config import DataConfig
from honed.data.formatting import answer_column, check_columns, completion_default, format_examples
from honed.data.packing import IGNORE, tokenize
from honed.data.sources import load_rows, locate_row


def preview(
    cfg: DataConfig, tokenizer: Any = None, *, n: int = 5, eval_dataset_size: float | int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """A summary of ``cfg``'s data; token and packing counts only when a tokenizer is given."""
    ds = load_rows(cfg, tokenizer=tokenizer)
    if is_tokenized(cfg, ds):
        return _preview_tokens(cfg, ds, tokenizer, n, eval_dataset_size, seed)
    check_columns(cfg, ds, lambda i: locate_row(cfg, i))
    examples = format_examples(cfg, ds, tokenizer)
    texts = Counter(e.text for e in examples)
    answers: dict[str, set[str]] = {}
    for e in examples:
        if e.prompt:
            answers.setdefault(e.prompt, set()).add(e.answer)
    out: dict[str, Any] = {
        "name": cfg.name,
        "rows": len(ds),
        "columns": list(ds.column_names),
        "duplicate_rows": sum(c - 1 for c in texts.values()),
        "distinct_rows": len(texts),
        "prompts_with_conflicting_answers": sum(1 for a in answers.values() if len(a) > 1),
        "samples": [{"prompt": e.prompt, "answer": e.answer} for e in examples[:n]],
    }
    column = answer_column(cfg)
    if column and column in ds.column_names:
        out["label_column"] = column
        out["labels"] = dict(Counter(str(v) for v in ds[column]).most_common())
    if tokenizer is None:
        return out
    pp = cfg.pre_process_data_config
    toks = tokenize(examples, tokenizer, pp, completion_only=completion_default(cfg))
    lengths = [len(t.ids) for t in toks]
    for sample, t in zip(out["samples"], toks, strict=False):
        sample["tokens"] = len(t.ids)
        sample["label_tokens"] = sum(1 for x in t.labels if x != IGNORE)
    out["tokens"] = {"total": sum(lengths), "min": min(lengths), "mean": round(statistics.fmean(lengths), 1),
                     "max": max(lengths), "over_max_seq_len": sum(1 for x in lengths if x > pp.max_seq_len)}
    safe = cfg
    if out["tokens"]["over_max_seq_len"] and pp.overflow == "error" and pp.strategy in ("line-by-line", "packed"):
        safe = cfg.model_copy(update={"pre_process_data_config": pp.model_copy(update={"overflow": "truncate"})})
        out["note"] = "rows over max_seq_len would stop training (overflow: error); counted here as truncated"
    splits = build_datasets(safe, tokenizer, eval_dataset_size=eval_dataset_size, seed=seed)
    out["packing"] = {k: v for k, v in splits.stats.items() if k not in ("cache", "seconds", "rows")}
    out["strategy"] = pp.strategy
    out["max_seq_len"] = pp.max_seq_len
    return out



def _preview_tokens(cfg: DataConfig, ds: Any, tokenizer: Any, n: int, eval_dataset_size: float | int | None,
                    seed: int) -> dict[str, Any]:
    """Summary of rows that arrived tokenized (a user's pre_process_data returned input_ids)."""
    rows = token_rows(cfg, ds)
    lengths = [len(ids) for ids, _ in rows]
    keys = Counter((tuple(ids), tuple(labels)) for ids, labels in rows)
    out: dict[str, Any] = {
        "name": cfg.name, "rows": len(ds), "columns": list(ds.column_names), "tokenized": True,
        "duplicate_rows": sum(c - 1 for c in keys.values()), "distinct_rows": len(keys),
        "samples": [{"tokens": len(ids), "label_tokens": sum(1 for x in labels if x != IGNORE),
                     **({"text": tokenizer.decode(ids)} if tokenizer is not None else {})} for ids, labels in rows[:n]],
        "tokens": {"total": sum(lengths), "min": min(lengths), "mean": round(statistics.fmean(lengths), 1),
                   "max": max(lengths)},
    }
    if tokenizer is not None:
        splits = build_datasets(cfg, tokenizer, eval_dataset_size=eval_dataset_size, seed=seed)
        out["packing"] = {k: v for k, v in splits.stats.items() if k not in ("cache", "seconds", "rows")}
    return out
