"""Data config schema: where rows come from and how they become token sequences.

Field names follow Olive's current schema (``load_dataset_config``,
``pre_process_data_config``) so an Olive user's data section reads the same here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from honed.config.paths import InputPath


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoadDatasetConfig(_Strict):
    """Where the rows come from."""

    data_name: str | None = Field(
        None,
        description="Loader name (json, csv, parquet, text) or a Hugging Face dataset id; "
        "inferred from the file extension when omitted.",
    )
    data_files: InputPath | list[InputPath] | None = Field(
        None, description="Local file, folder, glob or fsspec URL (s3://, gs://, https://); or a list of them."
    )
    subset: str | None = Field(None, description="Dataset configuration name of a hub dataset.")
    split: str = Field("train", description="Split to load.")
    trust_remote_code: bool = Field(False, description="Allow a hub dataset's loading script to run.")


class PreProcessDataConfig(_Strict):
    """How rows become token sequences."""

    text_template: str | None = Field(
        None, description="Python format string over columns, e.g. '### Text: {phrase}\\n### Tone: {tone}'."
    )
    text_cols: list[str] | None = Field(None, description="Columns joined with a newline when there is no template.")
    strategy: Literal["join", "join-sliding-window", "line-by-line", "packed"] = Field(
        "line-by-line", description="How rows become sequences."
    )
    max_seq_len: int = Field(1024, gt=0, description="Tokens per sequence.")
    stride: int | None = Field(None, gt=0, description="Step of join-sliding-window.")
    max_samples: int | None = Field(None, gt=0, description="Keep at most this many rows.")
    pad_to_max_len: bool = Field(False, description="Pad every sequence to max_seq_len.")
    completion_only: bool | None = Field(
        None, description="Mask prompt tokens out of the loss; default on when the template ends in a field."
    )


class DataConfig(_Strict):
    """One named data source plus its preprocessing."""

    name: str = Field(description="Name passes refer to (train_data_config, data_config).")
    type: str = Field("HuggingfaceContainer", description="Container type (Olive's name; one kind here).")
    load_dataset_config: LoadDatasetConfig = Field(default_factory=LoadDatasetConfig)
    pre_process_data_config: PreProcessDataConfig = Field(default_factory=PreProcessDataConfig)
