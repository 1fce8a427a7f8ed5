"""Data config schema: where rows come from and how they become token sequences.

Field names follow Olive's current schema (``load_dataset_config``, ``pre_process_data_config``,
``post_process_data_config``, ``dataloader_config``, ``user_script``/``script_dir``; olive/data/config.py)
so an Olive user's data section reads the same here.  Each component's ``type`` is either one of
Olive's built-in component names that honed's own pipeline stands for, or the name of a function the
user's ``user_script`` registers (``@Registry.register_dataset()`` ...); the container ``type`` picks
honed's pipeline (``HuggingfaceContainer``) or made-up inputs for latency metrics (the dummy containers).
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from honed.util.paths import InputPath, PythonFile

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


# -- Olive's component and container names (olive/data/component/*.py, olive/data/container/*.py) ----------
COMPONENT_KEYS = {
    "load_dataset": "load_dataset_config", "pre_process_data": "pre_process_data_config",
    "post_process_data": "post_process_data_config", "dataloader": "dataloader_config",
}
"""Olive's component kind -> the data config key that configures it."""

BUILTIN_COMPONENTS: dict[str, set[str]] = {
    "load_dataset": {"huggingface_dataset", "default_load_dataset", "local_dataset", "simple_dataset"},
    "pre_process_data": {"huggingface_pre_process", "text_generation_huggingface_pre_process",
                         "tokenizer_pre_process", "pre_process", "skip_pre_process", "default_pre_process_data"},
    "post_process_data": {"post_process", "skip_post_process", "default_post_process_data",
                          "text_classification_post_process", "text_generation_post_process"},
    "dataloader": {"default_dataloader", "no_auto_batch_dataloader", "dataloader_with_ignored_batch_fields",
                   "default_calibration_dataloader"},
}
"""Olive's built-in components that honed's own loading, text preparation, scoring and batching stand for."""

UNSUPPORTED_COMPONENTS = {
    "raw_dataset": "raw binary input files", "image_folder_dataset": "image folders",
    "ner_huggingface_preprocess": "token classification", "audio_classification_pre_process": "audio",
    "speech_transcription_pre_process": "audio", "vision_vqa_pre_process": "images",
    "image_lora_preprocess": "images", "ner_post_process": "token classification",
    "vision_vqa_dataloader": "images",
}
"""Olive built-ins for data honed does not handle: naming one is an error, never a silent substitute."""

CONTAINERS = ("HuggingfaceContainer", "DataContainer", "DummyDataContainer", "TransformersDummyDataContainer",
              "TransformersPromptDummyDataContainer", "TransformersTokenDummyDataContainer")
DUMMY_CONTAINERS: dict[str, tuple[str, int | None, int | None]] = {
    "DummyDataContainer": ("dummy_dataset", None, None),
    "TransformersDummyDataContainer": ("transformers_dummy_dataset", 128, 128),
    "TransformersPromptDummyDataContainer": ("transformers_prompt_dummy_dataset", 8, 0),
    "TransformersTokenDummyDataContainer": ("transformers_token_dummy_dataset", 1, 8),
}
"""Dummy container -> (its load component, default seq_len, default past_seq_len), as in Olive."""
DUMMY_FIELDS = ("input_shapes", "input_names", "input_types", "seq_len", "past_seq_len", "max_samples")
FEEDABLE_INPUTS = ("input_ids", "attention_mask", "position_ids", "token_type_ids")
"""Model inputs honed's evaluation backends build from token ids (all of shape [batch, seq])."""
TIMING_USES = ("latency", "throughput")


def _gather_params(d: dict[str, Any], model: type[BaseModel], gather: bool) -> dict[str, Any]:
    """Olive's nested ``params`` (olive.common.config_utils.NestedConfig) in honed's flat layout.

    ``gather``: the component is a user function, so keys honed does not know are its keyword arguments
    and go to ``params``; otherwise ``params`` is merged into the flat keys (flat keys win).
    """
    d = dict(d)
    params = d.pop("params", None)
    if params is not None and not isinstance(params, dict):
        d["params"] = params  # pydantic names the wrong shape
        return d
    params = dict(params or {})
    if gather:
        for k in [k for k in d if k not in model.model_fields]:
            params[k] = d.pop(k)
        d["params"] = params
    else:
        d = {**params, **d}
    return d


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
    """Where the rows come from (or, for a dummy container, the made-up inputs' shapes)."""

    type: str | None = Field(
        None,
        description="Olive component name: omitted or huggingface_dataset for honed's loader; the name of a "
        "function user_script registers with @Registry.register_dataset() (or defines) to load rows with your "
        "code: it is called with params plus the keys set here and returns a datasets.Dataset, a list of row "
        "dicts, a pandas DataFrame or a map-style torch Dataset of dicts.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the user_script function named by type; with such a type, keys "
        "honed does not know are gathered here (Olive's flat spelling).",
    )
    col_filters: dict[str, StrictBool | int | float | str] | None = Field(
        None,
        description="Keep only the rows whose column equals the value, e.g. {lang: en} (Olive's col_filters); "
        "applied after loading, before templates, max_samples and splits.",
    )
    input_shapes: list[list[int]] | None = Field(
        None, description="DummyDataContainer: shape of each input, e.g. [[1, 128], [1, 128]] ([batch, seq])."
    )
    input_names: list[str] | None = Field(
        None, description=f"DummyDataContainer: name of each input ({', '.join(FEEDABLE_INPUTS)}); "
        "default: the first shape is input_ids."
    )
    input_types: list[str] | None = Field(
        None, description="DummyDataContainer: dtype of each input (int64 or int32 for input_ids)."
    )
    seq_len: int | None = Field(
        None, gt=0, le=MAX_SEQ_LEN,
        description="Transformers*DummyDataContainer: tokens per made-up prompt (default 128 / 8 / 1 for "
        "the plain / Prompt / Token container).",
    )
    past_seq_len: int | None = Field(
        None, ge=0, le=MAX_SEQ_LEN,
        description="Transformers*DummyDataContainer: tokens already in the KV cache when the seq_len new ones "
        "are timed (default 128 / 0 / 8); the cache is filled once, untimed, and rewound after every timed call.",
    )
    max_samples: int | None = Field(
        None, gt=0, description="Dummy containers: accepted for Olive compatibility (every made-up sample is "
        "the same batch, so the count does not change a latency)."
    )

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

    type: str | None = Field(
        None,
        description="Olive component name: omitted or an Olive text pre-processing built-in "
        "(text_generation_huggingface_pre_process, huggingface_pre_process) for honed's own; or the name of a "
        "function user_script registers with @Registry.register_pre_process(): called as f(dataset, **params) "
        "(plus the keys set here and model_name / tokenizer when its signature names them), it returns rows "
        "that honed then formats with text_template/text_cols, or tokenized rows (input_ids, optional labels "
        "and attention_mask) that honed packs as they are.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the user_script function named by type; with such a type, keys "
        "honed does not know are gathered here (Olive's flat spelling).",
    )

    text_template: str | None = Field(
        None,
        description="Python format string over columns, e.g. '### Text: {phrase}\\n### Tone: {tone}'; "
        "write '{{' and '}}' for literal braces.",
    )
    text_cols: list[str] | None = Field(None, description="Columns joined with a newline when there is no template.")
    input_cols: list[str] | None = Field(
        None, min_length=1,
        description="Olive's name (huggingface_pre_process): one column is the text; two are a text pair, "
        "tokenized as the tokenizer's text and text_pair (for BERT: [CLS] a [SEP] b [SEP] with token_type_ids), "
        "which only a sequence classifier reads (accuracy, latency, throughput, calibration). For a causal LM one "
        "column acts as text_cols and two are an error: write text_template, e.g. '{sentence1}\\n{sentence2}'.",
    )
    label_cols: list[str] | None = Field(
        None, min_length=1,
        description="Olive's older name: the one column holding a classifier's label, for accuracy (default: "
        "label when input_cols is set, as in Olive; a metric's user_config.label_col wins).",
    )
    label_col: str | None = Field(
        None, min_length=1, description="Olive's current name of label_cols: the label column, for accuracy."
    )
    strategy: Literal["join", "join-sliding-window", "line-by-line", "packed"] = Field(
        "line-by-line", description="How rows become sequences."
    )
    max_seq_len: int = Field(1024, gt=0, le=MAX_SEQ_LEN, description="Tokens per sequence (1 to 2**20).")
    stride: int | None = Field(None, gt=0, description="Step of join-sliding-window.")
    max_samples: int | None = Field(None, gt=0, description="Keep at most this many rows.")
    pad_to_max_len: StrictBool = Field(False, description="Pad every sequence to max_seq_len.")
    completion_only: StrictBool | None = Field(
        None,
        description="Train only on the answer (everything after the prompt; TRL's completion-only loss): "
        "true masks the prompt out of the loss, false trains on every token. Default: on for chat_template "
        "(the assistant turns), formatting_func pairs, response_template, and a text_template whose answer "
        "follows a field. The prompt of a text_template ends at the first field after its last assistant "
        "marker (`<|assistant|>`, `<|im_start|>assistant`, `[/INST]`, `### Response:`, `<start_of_turn>model`, "
        "`Assistant:`, ...), else at its last field.",
    )
    response_template: str | None = Field(
        None,
        min_length=1,
        description="Text that ends the prompt (TRL's DataCollatorForCompletionOnlyLM name, e.g. "
        "`### Response:\\n`): the loss covers what follows its last occurrence. In a text_template it is "
        "looked up in the template's literal text; otherwise in each row's text (rows without it train on "
        "nothing). Implies completion_only.",
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
        if self.input_cols is not None:
            if len(self.input_cols) > 2:
                raise ValueError(f"input_cols names {len(self.input_cols)} columns; honed tokenizes one (the text) "
                                 "or two (a text pair); combine more with text_template")
            rivals = [k for k in ("text_template", "text_cols", "chat_template", "formatting_func")
                      if getattr(self, k)]
            if rivals:
                raise ValueError(f"input_cols and {rivals[0]} both say how rows become text; choose one "
                                 "(input_cols: the text or a text pair as Olive tokenizes it)")
        if self.label_cols is not None and len(self.label_cols) > 1:
            raise ValueError(f"label_cols names {len(self.label_cols)} columns; honed scores one label column, "
                             "name it alone")
        if self.label_col is not None and self.label_cols is not None and [self.label_col] != self.label_cols:
            raise ValueError(f"label_col {self.label_col!r} and label_cols {self.label_cols} name different "
                             "columns; keep one")
        if self.chat_messages and not self.chat_template:
            raise ValueError("chat_messages is used only with chat_template: set chat_template: true")
        if self.response_template is not None and self.completion_only is False:
            raise ValueError("response_template marks where the trained answer starts, but completion_only: false "
                             "trains on every token; drop one of them")
        if self.response_template is not None and self.text_template is not None:
            # fields become NUL so the marker must lie in the template's own text, not in a column value
            literal = "".join(t + ("\0" if f is not None else "") for t, f, _, _ in string.Formatter().parse(
                self.text_template))
            if self.response_template not in literal:
                raise ValueError(f"response_template {self.response_template!r} does not occur in the literal "
                                 f"text of text_template {self.text_template!r}; copy it from the template")
        return self


class _Component(_Strict):
    """An Olive component honed does not run itself: a name and its keyword arguments."""

    type: str | None = Field(None, description="Olive component name, or a function user_script registers.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the function; unknown keys are gathered here."
    )

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        return _gather_params(data, cls, gather=True) if isinstance(data, dict) else data


class PostProcessDataConfig(_Component):
    """Olive's post-processing of model outputs before accuracy is computed."""

    type: str | None = Field(
        None,
        description="Olive component name: omitted or a built-in (text_classification_post_process, "
        "text_generation_post_process) for honed's own scoring; a function user_script registers with "
        "@Registry.register_post_process() is an error for accuracy metrics (honed scores label "
        "log-likelihoods, not raw outputs; use a custom metric) and unused elsewhere, as in Olive.",
    )


class DataLoaderConfig(_Component):
    """Olive's batching of the prepared data."""

    type: str | None = Field(
        None,
        description="Olive component name: omitted or a built-in (default_dataloader) for honed's own "
        "batching; a function user_script registers with @Registry.register_dataloader() is called as "
        "f(dataset, batch_size=..., **params) only by latency/throughput metrics, which time the first "
        "batch's input_ids ([batch, seq]); dataset is None when the config names no rows (Olive's "
        "simple_dataset). For training, calibration and accuracy it is an error (honed batches those itself).",
    )
    batch_size: int | None = Field(
        None, gt=0, le=1_000_000,
        description="Rows per batch of latency/throughput metrics on this data (over their "
        "user_config.batch_size) and of a user dataloader; training uses the pass's batch size, as in Olive.",
    )


def _lower(name: str | None) -> str | None:
    return name.lower() if isinstance(name, str) else None


class DataConfig(_Strict):
    """One named data source plus its preprocessing."""

    name: str = Field(description="Name passes refer to (train_data_config, data_config).")
    type: str = Field(
        "HuggingfaceContainer",
        description=f"Container type (Olive's name, any case): {', '.join(CONTAINERS[:2])} run honed's "
        f"pipeline; {', '.join(DUMMY_CONTAINERS)} make up inputs for latency/throughput metrics only.",
    )
    user_script: PythonFile | None = Field(
        None,
        description="Python file defining the functions the components' type keys name (Olive's user_script); "
        "honed imports it once per run, logs that it does, and calls those functions. Files that do "
        "`from olive.data.registry import Registry` work without Olive installed.",
    )
    script_dir: InputPath | None = Field(
        None, description="Folder put on sys.path while user_script is imported and its functions run."
    )
    load_dataset_config: LoadDatasetConfig = Field(default_factory=LoadDatasetConfig)
    pre_process_data_config: PreProcessDataConfig = Field(default_factory=PreProcessDataConfig)
    post_process_data_config: PostProcessDataConfig = Field(default_factory=PostProcessDataConfig)
    dataloader_config: DataLoaderConfig = Field(default_factory=DataLoaderConfig)
    dataloader_func: str | None = Field(
        None,
        description="Olive's older dataloader (metric user_config.dataloader_func): a user_script function "
        "called as f(data_dir, batch_size, **params) with data_dir and params from dataloader_config; "
        "latency/throughput metrics time its first batch's input_ids, any other use is an error.",
    )

    @model_validator(mode="before")
    @classmethod
    def _olive_layout(cls, data: Any) -> Any:
        """Container names in any case; Olive's ``params`` and flat user-function arguments sorted out."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        kind = data.get("type")
        if isinstance(kind, str):
            data["type"] = next((c for c in CONTAINERS if c.lower() == kind.lower()), kind)
        dummy = isinstance(kind, str) and data["type"] in DUMMY_CONTAINERS  # a list/dict type is unhashable
        sections: tuple[tuple[str, str, type[BaseModel]], ...] = (
            ("load_dataset", "load_dataset_config", LoadDatasetConfig),
            ("pre_process_data", "pre_process_data_config", PreProcessDataConfig))
        for kind_name, key, model in sections:
            sub = data.get(key)
            if isinstance(sub, dict):
                gather = _is_user(kind_name, sub.get("type")) or (dummy and kind_name == "load_dataset")
                data[key] = _gather_params(sub, model, gather=gather)
        return data

    @model_validator(mode="after")
    def _components(self) -> DataConfig:
        if self.type not in CONTAINERS:
            raise ValueError(f"type '{self.type}' is not a data container honed has; use HuggingfaceContainer "
                             f"(files, hub datasets, user_script components) or one of {', '.join(DUMMY_CONTAINERS)}")
        for kind, key in COMPONENT_KEYS.items():
            name = getattr(self, key).type
            low = _lower(name)
            if low in UNSUPPORTED_COMPONENTS:
                raise ValueError(f"{key}.type '{name}' is Olive's component for {UNSUPPORTED_COMPONENTS[low]}, "
                                 "which honed does not handle; write a function in user_script and name it here")
            if _is_user(kind, name) and not self.user_script:
                raise ValueError(f"{key}.type '{name}' is not one of honed's built-in components; set user_script "
                                 "to the Python file that registers (or defines) that function")
        if self.dataloader_func and not self.user_script:
            raise ValueError(f"dataloader_func '{self.dataloader_func}' needs user_script, the Python file that "
                             "defines it")
        if self.dataloader_func and self.dataloader_config.type:
            raise ValueError("set either dataloader_func (Olive's older f(data_dir, batch_size)) or "
                             "dataloader_config.type (f(dataset, batch_size)), not both")
        if self.script_dir and not self.user_script:
            raise ValueError("script_dir is used only while importing user_script; set user_script or remove "
                             "script_dir")
        if self.script_dir and not Path(self.script_dir).is_dir():
            raise ValueError(f"script_dir {self.script_dir} is not a folder; give the folder user_script imports from")
        lc = self.load_dataset_config
        own = _lower(lc.type)
        if self.type in DUMMY_CONTAINERS:
            self._check_dummy()
        elif own in {c[0] for c in DUMMY_CONTAINERS.values()}:
            owner = next(k for k, v in DUMMY_CONTAINERS.items() if v[0] == own)
            raise ValueError(f"load_dataset_config.type '{lc.type}' makes up inputs; set type: {owner} instead")
        else:
            given = [f for f in DUMMY_FIELDS if getattr(lc, f) is not None and not _is_user("load_dataset", lc.type)]
            if given == ["max_samples"]:
                raise ValueError("load_dataset_config.max_samples is for the dummy containers; limit real rows "
                                 "with pre_process_data_config.max_samples")
            if given:
                raise ValueError(f"load_dataset_config.{given[0]} is for the dummy containers; set type: "
                                 "DummyDataContainer (input_shapes ...) or TransformersDummyDataContainer "
                                 "(seq_len ...), or remove it")
        return self

    def _check_dummy(self) -> None:
        lc = self.load_dataset_config
        load, seq_default, past_default = DUMMY_CONTAINERS[self.type]
        if lc.type is not None and lc.type.lower() != load:
            raise ValueError(f"load_dataset_config.type '{lc.type}' does not fit type {self.type}; remove it "
                             f"(the container loads with {load})")
        real = [f for f in ("data_name", "data_files", "subset", "revision", "col_filters", "storage_options")
                if getattr(lc, f)]
        set_pre = _changed(self.pre_process_data_config)
        user = [f"{key}.type" for kind, key in COMPONENT_KEYS.items()
                if kind in ("pre_process_data", "post_process_data") and self.user_component(kind)]
        if real or set_pre or user:
            what = f"load_dataset_config.{real[0]}" if real else user[0] if user else f"pre_process_data_config.{set_pre[0]}"
            raise ValueError(f"{what} does not apply to {self.type}, which makes up inputs; remove it, or use "
                             "type: HuggingfaceContainer for real data")
        if seq_default is None:  # DummyDataContainer
            for f in ("seq_len", "past_seq_len"):
                if getattr(lc, f) is not None:
                    raise ValueError(f"load_dataset_config.{f} is for TransformersDummyDataContainer; "
                                     "DummyDataContainer takes input_shapes")
            self._check_shapes()
            return
        for f in ("input_shapes", "input_names", "input_types"):
            if getattr(lc, f) is not None:
                raise ValueError(f"load_dataset_config.{f} is for DummyDataContainer; {self.type} takes seq_len")
        seq = lc.seq_len or seq_default
        past = lc.past_seq_len if lc.past_seq_len is not None else (past_default or 0)
        if seq + past > MAX_SEQ_LEN:
            raise ValueError(f"load_dataset_config: seq_len {seq} + past_seq_len {past} is over 2**20 tokens; lower them")

    def _check_shapes(self) -> None:
        lc = self.load_dataset_config
        shapes = lc.input_shapes
        if not shapes:
            raise ValueError("DummyDataContainer needs load_dataset_config.input_shapes, e.g. [[1, 128]] for "
                             "input_ids of batch 1 and 128 tokens")
        for what, given in (("input_names", lc.input_names), ("input_types", lc.input_types)):
            if given is not None and len(given) != len(shapes):
                raise ValueError(f"load_dataset_config.{what} has {len(given)} entries for {len(shapes)} "
                                 "input_shapes; give one per input")
        names = lc.input_names or ["input_ids", *FEEDABLE_INPUTS[1:]][: len(shapes)]
        if len(shapes) > len(FEEDABLE_INPUTS) and not lc.input_names:
            raise ValueError(f"load_dataset_config.input_shapes has {len(shapes)} inputs; name them with "
                             f"input_names ({', '.join(FEEDABLE_INPUTS)})")
        odd = [n for n in names if n not in FEEDABLE_INPUTS]
        if odd or "input_ids" not in names:
            raise ValueError(f"load_dataset_config.input_names: honed feeds {', '.join(FEEDABLE_INPUTS)} built "
                             f"from token ids, not {odd[0] if odd else 'inputs without input_ids'}; time such a "
                             "model with a custom metric")
        for name, shape in zip(names, shapes, strict=True):
            if not 1 <= len(shape) <= 2 or min(shape) < 1 or max(shape) > MAX_SEQ_LEN:
                raise ValueError(f"load_dataset_config.input_shapes: {name} has shape {shape}; give [batch, seq] "
                                 "or [seq] with sizes from 1 to 2**20")
        ids_shape = shapes[names.index("input_ids")]
        if any(_as_2d(s) != _as_2d(ids_shape) for s in shapes):
            raise ValueError(f"load_dataset_config.input_shapes {shapes}: every input needs input_ids' shape "
                             f"{ids_shape}")
        if lc.input_types:
            kind = lc.input_types[names.index("input_ids")]
            if kind.lower().removeprefix("torch.") not in ("int64", "int32", "long", "int"):
                raise ValueError(f"load_dataset_config.input_types: input_ids is '{kind}'; token ids are int64 "
                                 "(or int32)")

    @property
    def is_dummy(self) -> bool:
        """True for the containers that make up inputs (latency/throughput only)."""
        return self.type in DUMMY_CONTAINERS

    def user_component(self, kind: str) -> str | None:
        """Name of the user_script function configured for component ``kind`` (load_dataset,
        pre_process_data, post_process_data, dataloader), or None when honed's own stands in."""
        name = getattr(self, COMPONENT_KEYS[kind]).type
        if kind == "dataloader" and self.dataloader_func:
            return self.dataloader_func
        return name if _is_user(kind, name) else None

    def dataloader_key(self) -> str:
        """Where the user dataloader is set, for messages."""
        return "dataloader_func" if self.dataloader_func else "dataloader_config.type"


def _is_user(kind: str, name: Any) -> bool:
    """Whether component ``name`` of ``kind`` is a user function (not a built-in honed stands for)."""
    if not isinstance(name, str) or not name:
        return False
    low = name.lower()
    dummy_loads = {c[0] for c in DUMMY_CONTAINERS.values()}
    return low not in BUILTIN_COMPONENTS[kind] and low not in UNSUPPORTED_COMPONENTS and not (
        kind == "load_dataset" and low in dummy_loads)


def _changed(section: BaseModel) -> list[str]:
    """Keys of ``section`` whose value differs from the default (a dump with defaults filled changes none)."""
    out = []
    for name, f in type(section).model_fields.items():
        default = f.default_factory() if f.default_factory else f.default  # type: ignore[call-arg]
        if getattr(section, name) != default:
            out.append(name)
    return out


def _as_2d(shape: list[int]) -> list[int]:
    return shape if len(shape) == 2 else [1, *shape]


def use_problem(cfg: DataConfig, use: str) -> str | None:
    """Why ``cfg`` cannot serve ``use`` (``pass`` for training and calibration, or a metric type; a pass
    that times its data, such as OrtSessionParamsTuning, declares ``data_use = "latency"``), else None.

    Dummy data has no rows; a user dataloader batches data whose batching honed controls; a user
    post-processing function works on raw model outputs, which honed's accuracy never produces.
    """
    if cfg.is_dummy and use not in TIMING_USES:
        what = ("a pass that trains or calibrates" if use == "pass"
                else f"{'an' if use[0] in 'aeiou' else 'a'} {use} metric")
        return (f"data config '{cfg.name}' is {cfg.type}, made-up inputs for latency/throughput metrics with no "
                f"rows for {what}; point it at a data config with real data (data_files or data_name)")
    loader = cfg.user_component("dataloader")
    if loader and use not in TIMING_USES:
        return (f"data config '{cfg.name}': {cfg.dataloader_key()} '{loader}' would batch data that honed batches "
                "itself for " + ("passes (set the pass's batch size)" if use == "pass" else
                                 f"{use} metrics (set user_config.batch_size)")
                + f"; remove {cfg.dataloader_key()} (latency/throughput metrics can use it)")
    post = cfg.user_component("post_process_data")
    if post and use == "accuracy":
        return (f"data config '{cfg.name}': post_process_data_config.type '{post}' post-processes raw model "
                "outputs, but honed scores accuracy from label log-likelihoods or generated text; use a custom "
                "metric (user_config.user_script + evaluate_func) or remove post_process_data_config.type")
    return None


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
