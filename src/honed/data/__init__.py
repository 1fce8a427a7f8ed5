"""honed's data layer: sources, formatting, packing, splits and caching on Hugging Face datasets.

Public entry points::

    load_rows(cfg) -> datasets.Dataset                     # rows: loaded, col_filters, user components
    build_datasets(cfg, tokenizer, ...) -> Splits          # train/eval token sequences
    fingerprint(cfg) -> str                                # content hash for cache keys
    split_template(template) -> (prompt, answer field | None)
    format_rows(cfg, dataset, tokenizer=None) -> list[str]
"""

from honed.data.build import Splits, build_datasets, fingerprint, tokenizer_fingerprint
from honed.data.collate import Collator
from honed.data.config import DataConfig, LoadDatasetConfig, PreProcessDataConfig
from honed.data.formatting import (
    Formatted,
    answer_column,
    answer_split,
    format_examples,
    format_rows,
    split_template,
    template_fields,
)
from honed.data.packing import IGNORE
from honed.data.sources import load_rows

__all__ = [
    "IGNORE",
    "Collator",
    "DataConfig",
    "Formatted",
    "LoadDatasetConfig",
    "PreProcessDataConfig",
    "Splits",
    "answer_column",
    "answer_split",
    "build_datasets",
    "fingerprint",
    "format_examples",
    "format_rows",
    "load_rows",
    "split_template",
    "template_fields",
    "tokenizer_fingerprint",
]
