"""Data config schema: where rows come from and how they become token sequences.

Field names follow Olive's current schema (``load_dataset_config``,
``pre_process_data_config``) so an Olive user's data section reads the same here.
"""

from __future__ import annotations

import re
import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from honed.config.paths import InputPath, PythonFile

SEED_MAX = 2**32 - 1
"""Largest seed every consumer takes: numpy's legacy ``np.random.seed`` (called by transformers' set_seed)
refuses anything outside 0..2**32-1; torch and ``random`` take more."""
MAX_SEQ_LEN = 1 << 20
"""Upper bound of max_seq_len (1M tokens): larger values are typos that would allocate padding buffers
of that size."""


MAX_FIELD_WIDTH = 1000
"""Widest padding a template field may ask for ({phrase:>100000000} would build gigabytes of text)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def check_format_template(template: str) -> str:
    """``template`` when it is a Python format string over named columns; ValueError naming the fix otherwise."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"not a valid format string ({e}); write literal braces as '{{{{' and '}}}}'") from None
    for _, name, spec, conv in parts:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ValueError(f"has a positional field '{{{name}}}'; name a column instead, e.g. '{{phrase}}'")
        if conv not in (None, "r", "s", "a"):
            raise ValueError(f"field '{{{name}!{conv}}}' has an unknown conversion '!{conv}'; use !r, !s or !a")
        if not name.isidentifier():  # '.upper' or '[0]' would render Python reprs or index into values
            raise ValueError(f"field '{{{name}}}' is not a plain column name; name a column, e.g. '{{phrase}}'")
        widths = [int(w) for w in re.findall(r"\d+", spec or "")]
        if widths and max(widths) > MAX_FIELD_WIDTH:
            raise ValueError(f"field '{{{name}:{spec}}}' pads to {max(widths)} characters (at most "
                             f"{MAX_FIELD_WIDTH}); drop the format spec")
    return template


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
    trust_remote_code: StrictBool = Field(False, description="Allow a hub dataset's loading script to run.")
    revision: str | None = Field(
        None, description="Hub dataset revision (branch, tag or commit); part of the cache key."
    )
    storage_options: dict[str, Any] | None = Field(
        None,
        description="fsspec options for URLs (endpoint_url, anon, ...); credentials come from the usual "
        "environment variables (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*) when omitted.",
    )


class ChatMessage(_Strict):
    """One message of a chat built from columns."""

    role: str = Field(description="system, user or assistant.")
    content: str = Field(description="Python format string over columns, e.g. '{phrase}'.")

    @field_validator("content")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_format_template(v)


class PreProcessDataConfig(_Strict):
    """How rows become token sequences."""

    text_template: str | None = Field(
        None,
        description="Python format string over columns, e.g. '### Text: {phrase}\\n### Tone: {tone}'; "
        "write '{{' and '}}' for literal braces.",
    )
    text_cols: list[str] | None = Field(None, description="Columns joined with a newline when there is no template.")
    strategy: Literal["join", "join-sliding-window", "line-by-line", "packed"] = Field(
        "line-by-line", description="How rows become sequences."
    )
    max_seq_len: int = Field(1024, gt=0, le=MAX_SEQ_LEN, description="Tokens per sequence (1 to 2**20).")
    stride: int | None = Field(None, gt=0, description="Step of join-sliding-window.")
    max_samples: int | None = Field(None, gt=0, description="Keep at most this many rows.")
    pad_to_max_len: StrictBool = Field(False, description="Pad every sequence to max_seq_len.")
    completion_only: StrictBool | None = Field(
        None, description="Mask prompt tokens out of the loss; default on when the template ends in a field."
    )
    drop_short_sequences: StrictBool = Field(False, description="Drop sequences shorter than max_seq_len.")
    padding_side: Literal["left", "right"] = Field("right", description="Side pad_to_max_len pads on.")
    add_special_tokens: StrictBool = Field(
        True, description="Let the tokenizer add its special tokens (BOS) to each row; off for chat templates."
    )
    append_eos: StrictBool = Field(True, description="End each row with the tokenizer's EOS so the model learns to stop.")
    joiner: str = Field("", description="Text put between rows by join strategies (after each row's EOS).")
    overflow: Literal["error", "truncate", "drop"] = Field(
        "error", description="What line-by-line and packed do with a row longer than max_seq_len."
    )
    shuffle: StrictBool = Field(False, description="Shuffle rows (seeded) before max_samples and packing.")
    seed: int | None = Field(None, ge=0, le=SEED_MAX,
                             description="Seed of shuffling and of the eval split; the pass's seed if unset.")
    dedupe: StrictBool = Field(True, description="Drop exact duplicate rows before splitting, so eval never repeats train.")
    chat_template: StrictBool | str = Field(
        False,
        description="Format rows with a chat template: true uses the tokenizer's, a string is a Jinja template.",
    )
    messages_column: str = Field("messages", description="Column of role/content lists used by chat_template.")
    chat_messages: list[ChatMessage] | None = Field(
        None, description="Messages built from columns for chat_template when rows have no messages column."
    )
    user_script: PythonFile | None = Field(None, description="Python file that defines formatting_func.")
    formatting_func: str | None = Field(
        None,
        description="Name of a function in user_script: row dict -> text, or (prompt, answer) for "
        "completion-only loss.",
    )

    @field_validator("text_template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        return None if v is None else check_format_template(v)

    @field_validator("chat_template")
    @classmethod
    def _jinja(cls, v: bool | str) -> bool | str:
        if not isinstance(v, str):
            return v
        if v.strip().lower() in ("true", "false", "yes", "no", "on", "off", "0", "1", ""):
            raise ValueError("must be true, false or a Jinja chat template (a string with {{ }} / {% %} tags), "
                             f"not the string {v!r}; write true or false without quotes")
        import jinja2

        try:  # transformers renders chat templates with jinja2 and the loopcontrols extension
            jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(v)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"Jinja syntax error at line {e.lineno}: {e.message}; fix the template") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PreProcessDataConfig:
        if self.stride is not None and self.stride > self.max_seq_len:
            raise ValueError(f"stride {self.stride} is larger than max_seq_len {self.max_seq_len}; lower it")
        if self.formatting_func and not self.user_script:
            raise ValueError("formatting_func needs user_script (the Python file that defines it)")
        if self.chat_messages and not self.chat_template:
            raise ValueError("chat_messages is used only with chat_template: set chat_template: true")
        return self


class DataConfig(_Strict):
    """One named data source plus its preprocessing."""

    name: str = Field(description="Name passes refer to (train_data_config, data_config).")
    type: str = Field("HuggingfaceContainer", description="Container type (Olive's name; one kind here).")
    load_dataset_config: LoadDatasetConfig = Field(default_factory=LoadDatasetConfig)
    pre_process_data_config: PreProcessDataConfig = Field(default_factory=PreProcessDataConfig)


def data_config_refs(obj: Any, path: str = "") -> list[tuple[str, str]]:
    """(key path, data config name) for every ``*data_config`` string in a pass config dump, at any depth.

    The loader checks these names exist and the engine puts the named data into cache keys; both use
    this one walk so what is validated is what is keyed.
    """
    refs: list[tuple[str, str]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            sub = f"{path}.{k}" if path else k
            if k.endswith("data_config") and isinstance(v, str):
                refs.append((sub, v))
            else:
                refs += data_config_refs(v, sub)
    return refs
