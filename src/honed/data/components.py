"""Olive's data components in honed: user_script functions, col_filters and the dummy containers.

What each user component receives and must return (Olive's DataContainer calls them the same way,
olive/data/container/data_container.py):

* ``load_dataset(**kwargs)``: kwargs are ``load_dataset_config.params`` plus each other key set in
  ``load_dataset_config`` (data_files, split, ...) that its signature names or that differs from honed's
  default (one it cannot take is an error, not a dropped setting); ``col_filters`` only when its
  signature names it, since honed applies them anyway.
  Returns a ``datasets.Dataset``, a list of row dicts, a pandas DataFrame or a map-style torch
  Dataset whose items are dicts.
* ``pre_process_data(dataset, **kwargs)``: ``dataset`` is what ``load_dataset`` returned (a
  ``datasets.Dataset`` once col_filters applied, or when honed loaded the rows); kwargs are
  ``pre_process_data_config.params`` plus the keys set there that it takes (the rest, such as
  max_seq_len, honed applies itself), and ``model_name`` / ``tokenizer`` when its signature names them
  and the config does not (Olive fills in ``model_name`` from the input model the same way).
  Returns rows of the same kinds: text columns that honed formats with text_template / text_cols /
  chat_template, or tokenized rows (``input_ids``, optional ``labels`` and ``attention_mask``) that
  honed packs as they are.
* ``dataloader(dataset, batch_size=..., **params)``: only latency/throughput metrics call it; its
  first batch's ``input_ids`` ([batch, seq]) is the timed input (a batch may be ``(inputs, label)``).
  ``dataset`` is None when the config names no rows, as Olive's ``simple_dataset`` gives.  Olive's older
  ``dataloader_func`` is called as ``f(data_dir, batch_size, **params)``, data_dir taken from params.
* ``post_process_data``: never called (honed's accuracy has no raw outputs to post-process);
  ``config.use_problem`` makes it an error where Olive would call it.

col_filters keep the rows whose column equals the value (Olive's huggingface_dataset filter),
after loading and before pre-processing, templates, max_samples and splits.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.data.config import DUMMY_CONTAINERS, FEEDABLE_INPUTS, DataConfig
from honed.data.formatting import Formatted
from honed.data.user_script import Script, accepts, call, find_function, load_script
from honed.errors import DataError

log = logging.getLogger("honed")

DUMMY_TOKEN = 1
"""Token id of DummyDataContainer inputs: Olive's DummyDataset fills them with ones."""
_warned: set[str] = set()


def script_of(cfg: DataConfig) -> Script:
    """The data config's user_script, imported once."""
    if not cfg.user_script:
        raise DataError(f"data config '{cfg.name}' names user functions but no user_script; set user_script")
    return load_script(cfg.user_script, cfg.script_dir, why=f"data config '{cfg.name}'")


def _component(cfg: DataConfig, kind: str, key: str) -> tuple[Script, Any, str]:
    name = cfg.user_component(kind)
    assert name is not None  # callers ask only for configured user components
    script = script_of(cfg)
    key = cfg.dataloader_key() if kind == "dataloader" else f"{key}.type"
    return script, find_function(script, kind, name, f"data config '{cfg.name}': {key}"), key


def _kwargs(section: Any, func: Any, skip: tuple[str, ...] = (), *, strict: bool) -> dict[str, Any]:
    """Keyword arguments for a user function from its config section: ``params``, plus each key set there
    that its signature names, or that differs from honed's default.  ``strict`` (load functions): such a
    key the function cannot take is passed anyway, so the call fails naming it instead of the setting
    being dropped; otherwise (pre-processing, whose keys honed applies itself) it is left to honed."""
    out: dict[str, Any] = {}
    fields = type(section).model_fields
    for k in sorted(section.model_fields_set):
        if k in ("type", "params", *skip):
            continue
        value = getattr(section, k)
        field = fields[k]
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        if _names(func, k) or (value != default and (strict or accepts(func, k))):
            out[k] = value
    return {**out, **section.params}


def is_user_loaded(cfg: DataConfig) -> bool:
    """True when a user_script function (not honed) produces the rows."""
    return bool(cfg.user_component("load_dataset"))


def has_source(cfg: DataConfig) -> bool:
    """True when the config names where rows come from (files, a hub dataset, a user load function)."""
    lc = cfg.load_dataset_config
    return bool(is_user_loaded(cfg) or lc.data_files or lc.data_name)


def reads_files(cfg: DataConfig) -> bool:
    """True when honed itself reads the rows from data_files or a hub dataset (so the preflight can peek):
    not for dummy data, a user load function, or a user dataloader that makes its own data (Olive's
    older ``dataloader_func(data_dir, batch_size)``)."""
    return not cfg.is_dummy and not is_user_loaded(cfg) and (has_source(cfg) or not cfg.user_component("dataloader"))


def user_load(cfg: DataConfig) -> Any:
    """What the user's load_dataset function returns."""
    script, func, key = _component(cfg, "load_dataset", "load_dataset_config")
    kwargs = _kwargs(cfg.load_dataset_config, func, ("col_filters",), strict=True)
    filters = cfg.load_dataset_config.col_filters
    if filters is not None and accepts(func, "col_filters"):
        kwargs["col_filters"] = filters
    out = call(script, func, f"data config '{cfg.name}': {key}", **kwargs)
    if out is None:
        raise DataError(f"data config '{cfg.name}': {key} '{cfg.load_dataset_config.type}' returned None; return "
                        "a datasets.Dataset, a list of row dicts or a torch Dataset")
    return out


def user_pre_process(cfg: DataConfig, dataset: Any, tokenizer: Any = None) -> Any:
    """What the user's pre_process_data function returns for ``dataset``."""
    script, func, key = _component(cfg, "pre_process_data", "pre_process_data_config")
    kwargs = _kwargs(cfg.pre_process_data_config, func, strict=False)
    if tokenizer is not None:
        if "model_name" not in kwargs and accepts(func, "model_name") and getattr(tokenizer, "name_or_path", None):
            kwargs["model_name"] = tokenizer.name_or_path
        if "tokenizer" not in kwargs and _names(func, "tokenizer"):
            kwargs["tokenizer"] = tokenizer
    out = call(script, func, f"data config '{cfg.name}': {key}", dataset, **kwargs)
    if out is None:
        raise DataError(f"data config '{cfg.name}': {key} '{cfg.pre_process_data_config.type}' returned None; "
                        "return the processed dataset")
    return out


def _names(func: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def to_dataset(obj: Any, what: str) -> Any:
    """``obj`` (a datasets.Dataset, list of dicts, DataFrame or map-style torch Dataset of dicts) as a
    ``datasets.Dataset``; DataError naming ``what`` for anything else."""
    import datasets

    if isinstance(obj, datasets.Dataset):
        return obj
    if isinstance(obj, datasets.DatasetDict):
        raise DataError(f"{what} returned a DatasetDict ({', '.join(obj)}); return one split, e.g. dataset['train']")
    if isinstance(obj, datasets.IterableDataset):
        raise DataError(f"{what} returned an IterableDataset (streaming); return a map-style datasets.Dataset")
    if type(obj).__name__ == "DataFrame" and hasattr(obj, "to_dict"):
        return datasets.Dataset.from_pandas(obj, preserve_index=False)
    if isinstance(obj, list | tuple):
        rows = list(obj)
    elif hasattr(obj, "__len__") and hasattr(obj, "__getitem__"):
        rows = [obj[i] for i in range(len(obj))]
    else:
        raise DataError(f"{what} returned {type(obj).__name__}; return a datasets.Dataset, a list of row dicts or "
                        "a map-style torch Dataset of dicts")
    if not rows:
        raise DataError(f"{what} returned no rows; return at least one")
    if not all(isinstance(r, dict) for r in rows):
        bad = next(r for r in rows if not isinstance(r, dict))
        raise DataError(f"{what} returned rows of type {type(bad).__name__}; each row must be a dict of column -> "
                        "value (e.g. {'input_ids': [...]} or {'text': ...})")
    return datasets.Dataset.from_list([{k: _plain(v) for k, v in r.items()} for r in rows])


def _plain(value: Any) -> Any:
    """Tensors and arrays as lists so arrow can store them."""
    return value.tolist() if hasattr(value, "tolist") else value


def filter_rows(cfg: DataConfig, ds: Any) -> Any:
    """Rows of ``ds`` whose columns equal every col_filters value; DataError naming the key for a column
    the data lacks, or when no row is left."""
    filters = cfg.load_dataset_config.col_filters
    if not filters:
        return ds
    columns = list(ds.column_names)
    for col in filters:
        if col not in columns:
            raise DataError(f"data config '{cfg.name}': load_dataset_config.col_filters.{col}: the data has no column "
                            f"'{col}'; its columns are {columns}; fix col_filters")
    values = {c: ds[c] for c in filters}
    keep = [i for i in range(len(ds)) if all(values[c][i] == v for c, v in filters.items())]
    if not keep:
        shown = {c: sorted({str(x) for x in values[c]})[:5] for c in filters}
        raise DataError(f"data config '{cfg.name}': load_dataset_config.col_filters {dict(filters)} keeps none of "
                        f"{len(ds)} rows (values seen: {shown}); fix col_filters")
    log.debug("data config '%s': col_filters kept %d of %d rows", cfg.name, len(keep), len(ds))
    return ds.select(keep) if len(keep) < len(ds) else ds


def is_tokenized(cfg: DataConfig, ds: Any) -> bool:
    """True when rows already hold token ids and no text formatting is configured: they are used as given."""
    pp = cfg.pre_process_data_config
    formats = pp.text_template or pp.text_cols or pp.input_cols or pp.chat_template or pp.formatting_func
    return "input_ids" in ds.column_names and not formats


def token_rows(cfg: DataConfig, ds: Any) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of each tokenized row: labels from a labels column, else the ids; padding at
    either end (attention_mask 0) removed so honed's own padding and packing apply."""
    ids_col = ds["input_ids"]
    labels_col = ds["labels"] if "labels" in ds.column_names else None
    mask_col = ds["attention_mask"] if "attention_mask" in ds.column_names else None
    out = []
    for i, raw in enumerate(ids_col):
        ids = _flat_ids(raw, f"data config '{cfg.name}', row {i}: input_ids")
        labels = _flat_ids(labels_col[i], f"data config '{cfg.name}', row {i}: labels") if labels_col else list(ids)
        if len(labels) != len(ids):
            raise DataError(f"data config '{cfg.name}', row {i}: {len(labels)} labels for {len(ids)} input_ids; "
                            "return one label per token (-100 where no loss is taken)")
        if mask_col is not None:
            mask = _flat_ids(mask_col[i], f"data config '{cfg.name}', row {i}: attention_mask")
            on = [j for j, m in enumerate(mask) if m]
            if len(mask) != len(ids) or not on or len(on) != on[-1] - on[0] + 1:
                raise DataError(f"data config '{cfg.name}', row {i}: attention_mask must be 1 over one run of tokens "
                                "(padding only at the ends) and as long as input_ids; return unpadded rows and let "
                                "pad_to_max_len pad")
            ids, labels = ids[on[0]:on[-1] + 1], labels[on[0]:on[-1] + 1]
        if not ids:
            raise DataError(f"data config '{cfg.name}', row {i}: input_ids is empty; drop empty rows")
        out.append((ids, labels))
    return out


@dataclass(frozen=True)
class PreTokenized(Formatted):
    """A row that arrived as token ids: ``answer`` is only a key for de-duplication and splitting."""

    ids: tuple[int, ...] = ()
    labels: tuple[int, ...] = ()


def pretokenized_examples(cfg: DataConfig, ds: Any, tokenizer: Any) -> list[Formatted]:
    """Tokenized rows as examples the build can shuffle, de-duplicate, split and pack.

    The ids are used as given: append_eos and add_special_tokens are for text honed tokenizes, so no
    EOS or BOS is added to the user's tokens (add it in the function when the model should learn to stop).
    """
    out: list[Formatted] = []
    for i, (ids, labels) in enumerate(token_rows(cfg, ds)):
        key = f"{','.join(map(str, ids))}|{','.join(map(str, labels))}"
        out.append(PreTokenized("", key, i, ids=tuple(ids), labels=tuple(labels)))
    return out


def _flat_ids(value: Any, what: str) -> list[int]:
    value = _plain(value)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]  # [1, seq] from return_tensors
    if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise DataError(f"{what} must be a list of int token ids, got {type(value).__name__}")
    return value


def token_samples(cfg: DataConfig, limit: int, tokenizer: Any = None) -> list[list[int]] | None:
    """Token ids of up to ``limit`` rows when user functions deliver them tokenized (e.g. calibration data
    whose pre_process_data tokenizes); None when the rows are text for honed to format and tokenize."""
    if not (cfg.user_component("load_dataset") or cfg.user_component("pre_process_data")):
        return None
    from honed.data.sources import load_rows

    ds = load_rows(cfg, tokenizer=tokenizer)
    if not is_tokenized(cfg, ds):
        return None
    return [ids for ids, _ in token_rows(cfg, ds.select(range(min(limit, len(ds)))))]


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
        from honed.data.sources import load_rows

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
    from honed.data.sources import prepared

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
