"""From a data config and a tokenizer to train/eval datasets, split before packing, cached.

Order: load rows -> check columns -> (shuffle) -> format -> drop duplicate rows -> max_samples
-> split rows into train/eval (rows sharing a prompt stay on one side) -> tokenize -> pack.
Splitting rows before packing is what keeps eval honest: Olive splits packed blocks, so a
phrase repeated in the data lands in both halves.

The result is cached under ``cache_dir/tokenized/<key>`` where the key hashes the source
bytes, every option and the tokenizer, so a second run only memory-maps arrow files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from honed.data.components import PreTokenized, is_tokenized, pretokenized_examples
from honed.data.config import DataConfig, use_problem
from honed.data.formatting import Formatted, check_columns, format_examples, loss_rule
from honed.data.packing import Tokenized, loss_note, pack, tokenize, warn_once
from honed.data.sources import drop_raw_cache, load_rows, locate_row, quiet_datasets, source_fingerprint
from honed.errors import DataError
from honed.util.hashing import (
    cache_key,
    code_fingerprint,
    environment,
    hash_file,
    hash_json,
    library_versions,
)

log = logging.getLogger("honed")

@dataclass
class Splits:
    """Train and eval sequences plus what happened on the way (rows, duplicates, tokens ...)."""

    train: Any
    eval: Any | None
    stats: dict[str, Any] = field(default_factory=dict)


def fingerprint(cfg: DataConfig) -> str:
    """Content hash of the rows' source (file bytes, hub id+revision, URL) and every option.

    Paths and mtimes are left out: moving or touching a file keeps the key, editing it changes it.
    """
    options = cfg.model_dump(mode="json", exclude={"name": True, "load_dataset_config": {"data_files"}})
    user_script = cfg.pre_process_data_config.user_script
    script = hash_file(Path(user_script)) if user_script else None
    options["pre_process_data_config"]["user_script"] = script
    if cfg.user_script:  # the code that loads or prepares the rows, and the files its arguments name
        options["user_script"] = hash_file(Path(cfg.user_script))
        options["script_dir"] = _treehash_json(Path(cfg.script_dir), "*.py") if cfg.script_dir else None
        options["named_files"] = _named_files([cfg.load_dataset_config.params, cfg.pre_process_data_config.params])
    return hash_json({"source": source_fingerprint(cfg), "options": options})


TOKENIZED_LIBRARIES = ("datasets", "tokenizers", "transformers")
"""Libraries whose versions enter the tokenized-data key (they parse, format and tokenize the rows)."""


def tokenized_key(cfg: DataConfig, eval_config: DataConfig | None, tokenizer: Any, eval_size: float | int | None,
                  seed: int) -> str:
    """Key of the tokenized-data cache (``util.hashing.cache_key``): the rows and the tokenizer by content, the
    split settings, this module's code (and what it imports: sources, formatting, packing) and the libraries."""
    return cache_key(
        "tokenized",
        inputs={"train": fingerprint(cfg), "eval": fingerprint(eval_config) if eval_config else None,
                "tokenizer": tokenizer_fingerprint(tokenizer)},
        config={"eval_dataset_size": eval_size, "seed": seed},
        code=code_fingerprint(__name__),
        environment=environment(library_versions(TOKENIZED_LIBRARIES)),
    )


MAX_TREE_FILES = 10_000
"""Most files a folder named in a user function's arguments contributes to the key (by name, size, mtime)."""


def _treehash_json(folder: Path, pattern: str = "*") -> str:
    """Hash of the names, sizes and mtimes of ``folder``'s files (contents for .py files): a folder of data
    a user function reads would take too long to hash by content on every run.  Hidden entries,
    ``__pycache__`` and honed cache folders inside it (``.honed-cache`` marker) are left out."""
    h = hashlib.sha256()
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__"
                         and not (Path(root) / d / ".honed-cache").exists())
        files += [Path(root) / n for n in names if not n.startswith(".") and Path(n).match(pattern)]
        if len(files) >= MAX_TREE_FILES:
            break
    for f in sorted(files)[:MAX_TREE_FILES]:
        st = f.stat()
        h.update(f"{f.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        if f.suffix == ".py":
            h.update(f.read_bytes())
    return h.hexdigest()


def _named_files(obj: Any) -> dict[str, str]:
    """Path -> content hash (file) or tree digest (folder) of every local path in a user function's arguments."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for v in obj.values():
            out |= _named_files(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            out |= _named_files(v)
    elif isinstance(obj, str) and 0 < len(obj) < 4096 and "\0" not in obj and "://" not in obj:
        p = Path(obj).expanduser()
        with contextlib.suppress(OSError):
            if p.is_file():
                out[obj] = hash_file(p)
            elif p.is_dir() and p.resolve() != Path(p.resolve().anchor):
                out[obj] = _treehash_json(p)
    return out


_BODY_HASHES: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()


def _body_hash(tokenizer: Any) -> str:
    """Hash of the vocabulary/merges/normalizer; remembered per tokenizer object (serializing a 49k
    vocabulary takes ~50 ms) and recomputed when tokens were added."""
    size = len(tokenizer)
    try:
        known = _BODY_HASHES.get(tokenizer)
    except TypeError:  # not weak-referenceable
        known = None
    if known and known[0] == size:
        return known[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    # a slow tokenizer has no backend; its vocabulary is what we can see
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    digest = hashlib.sha256(body.encode()).hexdigest()
    with contextlib.suppress(TypeError):
        _BODY_HASHES[tokenizer] = (size, digest)
    return digest


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of what decides the tokens: vocabulary/merges/normalizer, special tokens, chat template."""
    extra = {
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
        "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id,
    }
    return hash_json({"body": _body_hash(tokenizer), "extra": extra})


def _prepare_rows(cfg: DataConfig, tokenizer: Any, cache_dir: Path | None, seed: int) -> tuple[list[Formatted], dict]:
    """Formatted, de-duplicated rows of one config and counts about them."""
    ds = load_rows(cfg, cache_dir=cache_dir, tokenizer=tokenizer)
    pretokenized = is_tokenized(cfg, ds)  # a user's pre_process_data (or the file) gave token ids
    try:
        if not pretokenized:
            check_columns(cfg, ds, lambda i: locate_row(cfg, i))
    except DataError:
        drop_raw_cache(ds, cache_dir)
        raise
    pp = cfg.pre_process_data_config
    stats: dict[str, Any] = {"rows": len(ds)}
    examples = pretokenized_examples(cfg, ds, tokenizer) if pretokenized else format_examples(cfg, ds, tokenizer)
    if pp.shuffle:  # shuffled after formatting so each row keeps its index (errors name its line)
        random.Random(pp.seed if pp.seed is not None else seed).shuffle(examples)
    if pp.dedupe:
        seen: set[str] = set()
        unique = []
        for e in examples:
            if e.text not in seen:
                seen.add(e.text)
                unique.append(e)
        stats["duplicates_dropped"] = len(examples) - len(unique)
        examples = unique
    else:
        stats["duplicates_dropped"] = 0
    if pp.max_samples is not None:
        examples = examples[: pp.max_samples]
    return examples, stats


def _split(examples: list[Formatted], size: float | int, seed: int) -> tuple[list[Formatted], list[Formatted]]:
    """Seeded split by prompt groups: rows that share a prompt never straddle train and eval."""
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(e.prompt or e.text, []).append(i)
    n = len(examples)
    if isinstance(size, float):
        if not 0 < size < 1:
            raise DataError(f"eval_dataset_size {size} must be a fraction between 0 and 1, or a row count")
        target = max(1, round(size * n))
    else:
        target = size
    if target < 1 or target >= n:
        raise DataError(f"eval_dataset_size {size} leaves no rows for train or eval ({n} rows); lower it")
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    eval_idx: set[int] = set()
    for k in keys:
        if len(eval_idx) >= target:
            break
        eval_idx.update(groups[k])
    train = [e for i, e in enumerate(examples) if i not in eval_idx]
    evals = [e for i, e in enumerate(examples) if i in eval_idx]
    return train, evals


def _to_dataset(rows: list[dict[str, list[int]]]) -> Any:
    import datasets

    names = ["input_ids", "attention_mask", "labels", "position_ids"]
    present = [k for k in names if rows and k in rows[0]] or names[:3]
    features = datasets.Features({k: datasets.Sequence(datasets.Value("int32")) for k in present})
    return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in present}, features=features)


def _sequences(cfg: DataConfig, examples: list[Formatted], tokenizer: Any, prefix: str) -> tuple[Any, dict]:
    pp = cfg.pre_process_data_config
    if examples and isinstance(examples[0], PreTokenized):
        rule = None
        toks = [Tokenized(list(e.ids), list(e.labels)) for e in examples if isinstance(e, PreTokenized)]
    else:
        rule = loss_rule(cfg)
        toks = tokenize(examples, tokenizer, pp, rule.completion)
    joiner = tokenizer(pp.joiner, add_special_tokens=False)["input_ids"] if pp.joiner else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    packed = pack(toks, pp, pad_id=pad, joiner_ids=joiner, where=lambda i: locate_row(cfg, examples[i].index))
    lengths = [len(t.ids) for t in toks]
    stats = {
        f"{prefix}_rows": len(examples),
        f"{prefix}_sequences": len(packed.rows),
        f"{prefix}_tokens": sum(len(r["input_ids"]) for r in packed.rows),
        f"{prefix}_label_tokens": sum(sum(1 for x in r["labels"] if x != -100) for r in packed.rows),
        f"{prefix}_longest_row_tokens": max(lengths, default=0),
    } | {f"{prefix}_{k}": v for k, v in packed.stats.items() if v}
    note = loss_note(cfg.name, rule, examples, toks) if prefix == "train" and rule is not None else None
    if note:  # kept in stats so a cache hit repeats it
        stats["loss_warning"] = note
        warn_once(note)
    if not packed.rows:
        raise DataError(f"data config '{cfg.name}': packing left no {prefix} sequences (max_seq_len "
                        f"{pp.max_seq_len}, drop_short_sequences {pp.drop_short_sequences}); lower max_seq_len")
    return _to_dataset(packed.rows), stats


def build_datasets(
    cfg: DataConfig,
    tokenizer: Any,
    *,
    cache_dir: Path | None = None,
    eval_dataset_size: float | int | None = None,
    eval_config: DataConfig | None = None,
    seed: int = 0,
) -> Splits:
    """Train (and eval) sequences for ``cfg``: rows split before packing, deduplicated, cached.

    ``eval_dataset_size`` (a fraction or a row count) carves eval rows out of ``cfg``'s rows;
    ``eval_config`` loads eval rows from another source instead, and train rows whose prompt
    also appears in eval are dropped.  Each row of the datasets has ``input_ids``,
    ``attention_mask``, ``labels`` (and ``position_ids`` for the packed strategy).
    """
    import datasets

    for used in (cfg, eval_config):  # dummy data or a user dataloader cannot feed a pass
        problem = use_problem(used, "pass") if used is not None else None
        if problem:
            raise DataError(problem)
    if eval_dataset_size is not None and eval_config is not None:
        raise DataError("set either eval_dataset_size or an eval data config, not both")
    if not eval_dataset_size:  # Olive treats 0 as "no eval split"
        eval_dataset_size = None
    if isinstance(eval_dataset_size, float) and eval_dataset_size.is_integer() and eval_dataset_size >= 1:
        eval_dataset_size = int(eval_dataset_size)
    start = time.perf_counter()
    key = None
    if cache_dir is not None:
        key = tokenized_key(cfg, eval_config, tokenizer, eval_dataset_size, seed)
        entry = Path(cache_dir) / "tokenized" / key
        if (entry / "stats.json").is_file():
            try:
                stats = json.loads((entry / "stats.json").read_text())
                train = datasets.load_from_disk(str(entry / "train"))
                evals = datasets.load_from_disk(str(entry / "eval")) if (entry / "eval").is_dir() else None
            except (OSError, ValueError) as e:  # damaged (pyarrow's errors are ValueErrors): tokenize again
                log.warning("tokenized data %s is damaged (%s); tokenizing again", entry, type(e).__name__)
                trash = entry.with_name(f".tmp-damaged-{key}-{os.getpid()}")
                with contextlib.suppress(OSError):
                    os.replace(entry, trash)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                stats |= {"cache": "hit", "seconds": round(time.perf_counter() - start, 3), "cache_key": key}
                warn_once(stats.get("loss_warning"))
                return Splits(train, evals, stats)

    examples, stats = _prepare_rows(cfg, tokenizer, cache_dir, seed)
    eval_examples: list[Formatted] | None = None
    if eval_config is not None:
        eval_examples, estats = _prepare_rows(eval_config, tokenizer, cache_dir, seed)
        stats |= {f"eval_source_{k}": v for k, v in estats.items()}
        eval_keys = {e.prompt or e.text for e in eval_examples}
        kept = [e for e in examples if (e.prompt or e.text) not in eval_keys]
        stats["train_rows_in_eval_dropped"] = len(examples) - len(kept)
        examples = kept
        if not examples:
            raise DataError(f"every train row of '{cfg.name}' also appears in eval data '{eval_config.name}'")
    elif eval_dataset_size is not None:
        split_seed = cfg.pre_process_data_config.seed
        examples, eval_examples = _split(examples, eval_dataset_size, seed if split_seed is None else split_seed)

    train, tstats = _sequences(cfg, examples, tokenizer, "train")
    stats |= tstats
    evals = None
    if eval_examples is not None:
        evals, estats = _sequences(eval_config or cfg, eval_examples, tokenizer, "eval")
        stats |= estats
    stats |= {"cache": "miss" if key else "off", "seconds": round(time.perf_counter() - start, 3)}
    if key is not None:
        stats["cache_key"] = key
        _store(Path(cache_dir) / "tokenized", key, train, evals, stats)  # type: ignore[arg-type]
    return Splits(train, evals, stats)


def _store(root: Path, key: str, train: Any, evals: Any | None, stats: dict[str, Any]) -> None:
    """Write the entry in a temp folder then rename it, so a killed run leaves no half entry."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        with quiet_datasets():
            train.save_to_disk(str(tmp / "train"))
            if evals is not None:
                evals.save_to_disk(str(tmp / "eval"))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1, default=str))
        with contextlib.suppress(OSError):  # another process stored the same entry first
            os.replace(tmp, root / key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

