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
from dataclasses import dataclass
from typing import Any

from honed.data.config import DataConfig
from honed.data.formatting import Formatted
from honed.errors import DataError
from honed.util.user_script import Script, accepts, call, find_function, load_script

log = logging.getLogger("honed")

"""Token id of DummyDataContainer inputs: Olive's DummyDataset fills them with ones."""


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
