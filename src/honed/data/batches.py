"""Inputs a consumer asks of a data config beyond training rows: texts and token samples for calibration, the timed
batch of latency/throughput metrics (from Olive's dummy containers, a user dataloader or rows a user tokenized).

Above ``sources`` (which loads rows through the user components in ``components``) so that neither of those
two imports the other.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.data.components import _component, _plain, has_source, is_tokenized, token_rows
from honed.data.config import DUMMY_CONTAINERS, FEEDABLE_INPUTS, DataConfig
from honed.data.formatting import Formatted, format_examples, text_pairs
from honed.data.packing import IGNORE
from honed.data.sources import load_rows, prepared
from honed.errors import DataError
from honed.util.user_script import call

log = logging.getLogger("honed")

DUMMY_TOKEN = 1
"""input_ids of Olive's DummyDataContainer (all ones)."""
_warned: set[str] = set()


def calibration_texts(cfg: DataConfig, limit: int, tokenizer: Any = None,
                      cache_dir: Path | None = None) -> list[str] | list[tuple[str, str]]:
    """Up to ``limit`` rows of ``cfg`` as the text a model reads, through the data layer like training rows:
    any source (files, URLs, the hub), col_filters and user components, then text_template, chat_template,
    formatting_func or text_cols (without any, the first text column). (text, text_pair) tuples when
    input_cols names two columns, which a classifier's tokenizer takes as a pair (as Olive does)."""
    rows = _calibration_examples(cfg, limit, tokenizer, cache_dir)
    return [r if isinstance(r, tuple) else r.text for r in rows]  # type: ignore[return-value]


def _calibration_examples(cfg: DataConfig, limit: int, tokenizer: Any = None,
                          cache_dir: Path | None = None) -> list[Formatted] | list[tuple[str, str]]:
    """``calibration_texts`` before joining: each row's prompt and answer (or a text pair)."""
    pre = cfg.pre_process_data_config
    ds = load_rows(cfg, cache_dir=cache_dir, tokenizer=tokenizer)
    ds = ds.select(range(min(limit, len(ds))))
    pairs = text_pairs(cfg, ds)
    if pairs is not None:
        return pairs
    if not (pre.text_template or pre.chat_template or pre.formatting_func or pre.text_cols or pre.input_cols
            or "text" in ds.column_names):
        first = next((c for c in ds.column_names if len(ds) and isinstance(ds[0][c], str)), None)
        if first is None:
            raise DataError(f"data config '{cfg.name}': no text column to calibrate on (columns: "
                            f"{', '.join(ds.column_names)}); set pre_process_data_config.text_template or text_cols")
        return [Formatted("", str(row[first]), i) for i, row in enumerate(ds)]
    return format_examples(cfg, ds, tokenizer)


def token_samples(cfg: DataConfig, limit: int, tokenizer: Any = None, labels: bool = False) -> list[Any] | None:
    """Token ids of up to ``limit`` rows when user functions deliver them tokenized (e.g. calibration data
    whose pre_process_data tokenizes); with ``labels``, (ids, labels) pairs (labels: the ids where the rows
    have none); None when the rows are text for honed to format and tokenize."""
    if not (cfg.user_component("load_dataset") or cfg.user_component("pre_process_data")):
        return None
    ds = load_rows(cfg, tokenizer=tokenizer)
    if not is_tokenized(cfg, ds):
        return None
    pairs = token_rows(cfg, ds.select(range(min(limit, len(ds)))))
    return pairs if labels else [ids for ids, _ in pairs]


# -- latency / throughput inputs ------------------------------------------------------------------------------

def timing_batch_size(cfg: DataConfig, default: int) -> int:
    """Rows per timed batch: dataloader_config.batch_size when set (Olive's place for it), else ``default``."""
    return cfg.dataloader_config.batch_size or default


def timing_batch(cfg: DataConfig, tokenizer: Any, batch_size: int, cache_dir: Path | None = None) -> list[list[int]] | None:
    """The timed batch (token ids, [batch][seq]) for dummy data, a user dataloader or rows a user's
    pre_process_data tokenized (cut to the shortest, as the evaluator does with prompts); None when the
    evaluator should build it from the data's prompts as usual."""
    size = timing_batch_size(cfg, batch_size)
    if cfg.is_dummy:
        return dummy_batch(cfg, tokenizer, size)
    if cfg.user_component("dataloader"):
        return _user_loader_batch(cfg, tokenizer, size, cache_dir)
    if cfg.user_component("pre_process_data"):
        ds = load_rows(cfg, cache_dir=cache_dir, tokenizer=tokenizer)
        if is_tokenized(cfg, ds):
            seqs = [ids for ids, _ in token_rows(cfg, ds.select(range(min(size, len(ds)))))]
            n = min(len(x) for x in seqs)
            return [x[:n] for x in seqs]
    return None


def dummy_batch(cfg: DataConfig, tokenizer: Any, batch_size: int) -> list[list[int]]:
    """Made-up token ids as Olive's dummy containers make them (olive/data/component/dataset.py).

    DummyDataContainer: input_ids of the shape in input_shapes, all ones (its batch is in the shape).
    Transformers*DummyDataContainer: ``batch_size`` rows of seq_len ids drawn (seed 0) from the model's
    vocabulary, as TransformersDummyDataset does; ``dummy_past`` gives the past_seq_len tokens the KV
    cache holds when they are timed.
    """
    lc = cfg.load_dataset_config
    _warn_unused(cfg)
    _, seq_default, _ = DUMMY_CONTAINERS[cfg.type]
    if seq_default is None:
        assert lc.input_shapes  # the config validator requires them
        names = lc.input_names or list(FEEDABLE_INPUTS[: len(lc.input_shapes)])
        shape = lc.input_shapes[names.index("input_ids")]
        rows, seq = (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])
        return [[DUMMY_TOKEN] * seq for _ in range(rows)]
    seq = lc.seq_len or seq_default
    vocab = getattr(tokenizer, "vocab_size", None) or len(tokenizer)
    rng = random.Random(0)
    return [[rng.randrange(vocab) for _ in range(seq)] for _ in range(batch_size)]


def dummy_past(cfg: DataConfig, tokenizer: Any, rows: int) -> list[list[int]] | None:
    """Token ids already in the KV cache of a Transformers*DummyDataContainer batch (past_seq_len of them per
    row, seed 1), or None when there are none (past_seq_len 0, or not such a container)."""
    if not cfg.is_dummy:
        return None
    _, _, past_default = DUMMY_CONTAINERS[cfg.type]
    past = cfg.load_dataset_config.past_seq_len
    past = past if past is not None else past_default or 0
    if not past:
        return None
    vocab = getattr(tokenizer, "vocab_size", None) or len(tokenizer)
    rng = random.Random(1)
    return [[rng.randrange(vocab) for _ in range(past)] for _ in range(rows)]


def _warn_unused(cfg: DataConfig) -> None:
    unused = sorted(cfg.load_dataset_config.params)
    if unused and cfg.name not in _warned:
        _warned.add(cfg.name)
        log.warning("data config '%s': load_dataset_config %s not used: honed builds the inputs of the model it "
                    "evaluates itself (cache names, dtypes, vocabulary)", cfg.name, ", ".join(unused))


def _user_loader_batch(cfg: DataConfig, tokenizer: Any, batch_size: int, cache_dir: Path | None) -> list[list[int]]:
    script, func, key = _component(cfg, "dataloader", "dataloader_config")
    params = dict(cfg.dataloader_config.params)
    label = f"data config '{cfg.name}': {key}"
    if cfg.dataloader_func:  # Olive's older f(data_dir, batch_size, **kwargs)
        loader = call(script, func, label, params.pop("data_dir", None), batch_size, **params)
    else:
        dataset = prepared(cfg, cache_dir=cache_dir, tokenizer=tokenizer) if has_source(cfg) else None
        loader = call(script, func, label, dataset, batch_size=batch_size, **params)
    where = f"{label} '{cfg.user_component('dataloader')}'"
    try:
        with script.running():
            batch = next(iter(loader))
    except StopIteration:
        raise DataError(f"{where} yielded no batch; return a loader over at least one row") from None
    except TypeError as e:
        raise DataError(f"{where} returned {type(loader).__name__}, which is not iterable; return a DataLoader") from e
    if isinstance(batch, list | tuple) and batch and not isinstance(batch[0], int | list):
        batch = batch[0]  # (inputs, labels)
    ids = batch.get("input_ids") if isinstance(batch, dict) else batch
    ids = _plain(ids)
    if isinstance(ids, list) and ids and isinstance(ids[0], int):
        ids = [ids]
    if (not isinstance(ids, list) or not ids or not all(isinstance(r, list) and r and len(r) == len(ids[0])
                                                         and all(isinstance(x, int) for x in r) for r in ids)):
        raise DataError(f"{where}: the first batch must hold input_ids of shape [batch, seq] (int token ids), got "
                        f"{type(ids).__name__}; return batches like {{'input_ids': tensor}}")
    return ids


@dataclass
class CalibrationRow:
    """One calibration row: ``ids`` (1, seq) token ids; ``answer`` (seq,) bool, true at the positions whose next
    token belongs to the row's answer (what completion-only loss trains on, and what a classification metric
    reads), or None when the row has no prompt/answer split."""

    ids: Any
    answer: Any | None = None


def calibration_rows(data_config: Any, tokenizer: Any, limit: int) -> list[CalibrationRow]:
    """Up to ``limit`` rows of ``data_config`` as token ids (each up to max_seq_len) with their answer positions:
    what the layer-by-layer quantizers (GPTQ, AWQ, the measured int4 sensitivity) calibrate on. Raises DataError
    when it gives none."""
    import torch

    pre = data_config.pre_process_data_config
    limit = min(limit, pre.max_samples or limit)
    rows: list[CalibrationRow] = []
    given = token_samples(data_config, limit, tokenizer, labels=True)
    if given is not None:
        for ids, labels in given:
            ids, labels = ids[: pre.max_seq_len], labels[: pre.max_seq_len]
            trained = [x != IGNORE for x in labels]
            rows.append(CalibrationRow(torch.tensor([ids], dtype=torch.long),
                                       _answer_positions(trained) if not all(trained) else None))
    else:
        fast = bool(getattr(tokenizer, "is_fast", False))
        for ex in _calibration_examples(data_config, limit, tokenizer):
            if isinstance(ex, tuple):  # a text pair: a classifier's input, no answer
                enc = tokenizer(*ex, truncation=True, max_length=pre.max_seq_len)
                rows.append(CalibrationRow(torch.tensor([enc["input_ids"][: pre.max_seq_len]], dtype=torch.long)))
                continue
            split = fast and (bool(ex.prompt) or ex.trained is not None)
            enc = tokenizer(ex.text, truncation=True, max_length=pre.max_seq_len, return_offsets_mapping=split)
            ids = enc["input_ids"][: pre.max_seq_len]
            answer = None
            if split:
                spans = ex.loss_spans()
                trained = [any(end > a and begin < b for a, b in spans) for begin, end in enc["offset_mapping"]]
                answer = _answer_positions(trained[: len(ids)])
            rows.append(CalibrationRow(torch.tensor([ids], dtype=torch.long), answer))
    rows = [r for r in rows if r.ids.shape[-1]]
    if not rows:
        raise DataError(f"data config '{data_config.name}' gave no calibration rows; point it at rows of text")
    if len(rows) < limit:
        log.warning("data config '%s' gave %d calibration rows, fewer than the %d asked for; calibrating on "
                    "those", data_config.name, len(rows), limit)
    return rows


def _answer_positions(trained: list[bool]) -> Any:
    """Positions whose next token is trained (the logits there predict the answer), as a (seq,) bool tensor."""
    import torch

    return torch.tensor([*trained[1:], False], dtype=torch.bool)


def calibration_samples(data_config: Any, tokenizer: Any, limit: int) -> list[Any]:
    """The token ids (1, seq <= max_seq_len) of ``calibration_rows``."""
    return [r.ids for r in calibration_rows(data_config, tokenizer, limit)]
