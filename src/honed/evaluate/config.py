"""Evaluator schema, in Olive's spelling: ``evaluators.<name>.metrics[*].sub_types[*].goal``.

A metric is one measurement family (accuracy, latency, ...) over one data config; its sub
types are the numbers it reports (``accuracy_score``, ``p90``) and each may carry a goal and a
priority.  Results are keyed ``<metric name>-<sub type>`` as Olive does.

Metric types and their sub types (names, directions, units, defaults, Olive's spellings) come from the
one metric registry (``honed.evaluate.metrics``); this module validates names against it.  Every metric
type and sub type Olive's evaluator defines (olive/evaluator/metric.py: ``MetricType``,
``AccuracySubType``, ``LatencySubType``, ``ThroughputSubType``, ``SizeOnDiskSubType``) is registered and
computed by honed, except ``rtfx`` (speech), which is refused with the alternative.  An evaluator
with ``type: LMEvaluator`` runs lm-evaluation-harness tasks instead of (or besides) metrics
(``honed.evaluate.lmeval``), with Olive's LMEvaluator keys.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    field_validator,
    model_serializer,
    model_validator,
)

from honed.data.config import MAX_SEQ_LEN
from honed.evaluate.metrics import all_metrics, get_metric, unknown_metric_type
from honed.util.accelerator import execution_provider_problem
from honed.util.paths import InputPath, LocalPath, PythonFile

log = logging.getLogger("honed")

OLIVE_ONLY_USER_CONFIG = {"data_dir", "io_bind", "inference_settings", "shared_kv_buffer", "input_names",
                          "input_shapes", "input_types", "run_kwargs", "func_kwargs", "dataloader_func"}
"""Olive user_config keys about its own data loaders and sessions; honed measures without them."""

GoalType = Literal["threshold", "min-improvement", "max-degradation", "percent-min-improvement",
                   "percent-max-degradation"]

METRICS_EVALUATORS = ("OnnxEvaluator", "PyTorchEvaluator")
"""Olive evaluator types whose work honed's metrics evaluator does (honed picks the runtime from the
model kind, so an Olive ONNX or PyTorch evaluator is the same thing here)."""

UNSUPPORTED_EVALUATORS: dict[str, str] = {
    "OpenVINOEvaluator": "honed has no OpenVINO runtime; evaluate the ONNX or genai model with metrics",
    "QNNEvaluator": "honed has no QNN SDK runtime; evaluate the ONNX model on QNNExecutionProvider with metrics",
    "MTEBEvaluator": "honed does not run MTEB embedding benchmarks; use a custom metric (user_script) instead",
}

LM_KEYS = ("tasks", "include_path", "limit", "batch_size", "max_length", "max_gen_toks", "num_fewshot",
           "bootstrap_iters", "model_class", "device", "execution_provider", "provider_options", "model_args",
           "apply_chat_template", "system_instruction", "fewshot_as_multiturn", "sample_log_num", "sample_log_dir",
           "sub_types")
"""Keys of an LMEvaluator (Olive's type_args plus honed's include_path and sub_types)."""

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class GoalConfig(_Strict):
    """What a candidate must reach on one sub metric to be accepted."""

    type: GoalType = Field(
        description="threshold: an absolute bound; min-improvement / max-degradation: a bound relative to "
        "the input model's value; percent-*: the same in percent of the input model's value."
    )
    value: float = Field(ge=0, description="The bound, or the allowed change (absolute or percent).")


class SubMetricConfig(_Strict):
    """One number a metric reports."""

    name: str = Field(description="Sub type: one of its metric type's (see Metrics: each with its unit and "
                      "direction), e.g. accuracy_score, p90 (ms), tokens_per_s; in an LMEvaluator, a result key "
                      "'<task>-<metric>' such as 'arc_easy-acc'.")
    priority: int = Field(-1, description="Rank of this number among the search objectives (1 first; -1: "
                          "reported only, not an objective); default: the sub type's (-1 for built-ins).")
    goal: GoalConfig | None = Field(None, description="Bound a model must meet on this number.")
    higher_is_better: StrictBool | None = Field(
        None, description="Direction; set by the metric type for built-ins, required for custom metrics."
    )
    metric_config: dict[str, Any] | None = Field(
        None, description="Olive's per-sub-type options: relaxed_accuracy 'tolerance' (default 0.05) and wer "
        "'normalize' (default true) apply; 'average' must be 'macro' (honed's averages); torchmetrics options "
        "such as task or num_classes are not needed and are named in a warning."
    )


class MetricUserConfig(_Strict):
    """Knobs of how a metric is measured (Olive's ``user_config``)."""

    batch_size: int = Field(1, gt=0, description="Rows per forward call (latency/throughput: batch of inputs).")
    max_samples: int | None = Field(None, gt=0, description="Score at most this many rows.")
    warmup_num: int = Field(2, ge=0, le=100_000, description="Latency/throughput: untimed runs first.")
    repeat_test_num: int = Field(10, gt=0, le=1_000_000, description="Latency/throughput: timed runs.")
    sleep_num: float = Field(0, ge=0, le=3600, description="Latency: seconds to sleep between timed runs.")
    max_new_tokens: int = Field(16, gt=0, le=MAX_SEQ_LEN,
                                description="Generation length (greedy accuracy, tokens_per_s).")
    labels: list[str] | None = Field(None, description="Accuracy: the candidate labels; default: the distinct "
                                     "values of the label column in the data.")
    label_col: str | None = Field(None, description="Accuracy: the column holding the label; default: the data's "
                                  "label_col / label_cols, else label with input_cols (Olive's default), else the "
                                  "last field of the text template.")
    scoring: Literal["loglikelihood", "generate"] = Field(
        "loglikelihood", description="Accuracy with a generative model: pick the label with the highest "
        "log-likelihood after the prompt, or greedy-generate and compare the text."
    )
    score_eos: StrictBool = Field(True, description="Include the EOS after the label in its log-likelihood (tells "
                            "'joy' from 'joyful'); matches training with append_eos.")
    user_script: PythonFile | None = Field(None, description="custom: the Python file defining evaluate_func.")
    evaluate_func: str | None = Field(None, description="custom: function (model: ModelHandle, rows: list[dict] "
                                      "| None, **evaluate_func_kwargs) -> float | dict[str, float].")
    evaluate_func_kwargs: dict[str, Any] | None = Field(
        None, description="custom: keyword arguments for evaluate_func (Olive's key)."
    )
    prompt: str = Field("The quick brown fox jumps over the lazy dog", description="Latency/throughput input "
                        "when the metric has no data_config.")
    reference_model: str | None = Field(
        None, description="fidelity: the model the candidate is compared with (a folder, hub id, .gguf, pkg:// file, "
        "ONNX or genai folder). Default: in a workflow, the input of the pass that made the candidate (the "
        "input model for itself); for honed evaluate, required."
    )


def _metric_json_schema(schema: dict[str, Any]) -> None:
    """JSON Schema of a metric from the registry: ``type`` is one of the registered metric types, and each
    type's sub type names (with unit and direction) are what its ``sub_types`` may name."""
    metrics = all_metrics()
    schema["properties"]["type"]["enum"] = list(metrics)
    rules = []
    for d in metrics.values():
        if d.open_sub_types:
            continue
        names = [{"const": n, "description": f"{s.description} ({s.unit}, {s.direction})".replace("( ", "(")}
                 for s in d.sub_types for n in (s.name, *s.aliases)]
        rules.append({"if": {"properties": {"type": {"const": d.name}}, "required": ["type"]},
                      "then": {"properties": {"sub_types": {"items": {"properties": {"name": {"oneOf": names}}}}}}})
    if rules:
        schema["allOf"] = rules


class MetricConfig(_Strict):
    """One measurement family over one data config."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra=_metric_json_schema)

    name: str = Field(description="Name of this metric; results are keyed '<name>-<sub type>'.")
    type: str = Field(description="Metric type: a registered metric (see Metrics): accuracy, perplexity, latency, "
                      "throughput, size_on_disk, memory, custom, or one a plugin registers.")
    data_config: str | None = Field(None, description="Name of the data config to measure on (one of data_configs).")
    sub_types: list[SubMetricConfig] = Field(default_factory=list, description="Numbers to report; default per type.")
    user_config: MetricUserConfig = Field(default_factory=MetricUserConfig)
    backend: str | None = Field(None, description="Accepted for Olive compatibility; honed computes metrics itself.")

    @model_validator(mode="before")
    @classmethod
    def _olive_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("user_config"), dict):
            if data["user_config"].get("metric_func"):
                raise ValueError("user_config.metric_func scores the outputs of Olive's own inference loop, which "
                                 "honed does not run; write an evaluate_func(model, rows, **evaluate_func_kwargs) "
                                 "that runs the model and returns the number(s)")
            if data["user_config"].get("dataloader_func"):  # a user function: never dropped silently
                raise ValueError("user_config.dataloader_func is Olive's older metric dataloader; put it in a data "
                                 "config (user_script, dataloader_func, dataloader_config: {data_dir, batch_size}) "
                                 "and set this metric's data_config (latency/throughput time its first batch)")
            uc = {k: v for k, v in data["user_config"].items() if k not in OLIVE_ONLY_USER_CONFIG}
            data = {**data, "user_config": uc}
        return data

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if get_metric(v) is None:
            raise ValueError(unknown_metric_type(v))
        return v

    @model_validator(mode="after")
    def _sub_types(self) -> MetricConfig:
        defn = get_metric(self.type)
        assert defn is not None  # the type validator ran
        if not self.sub_types:
            if defn.open_sub_types:
                raise ValueError(f"metric '{self.name}': a {self.type} metric needs sub_types naming its results, "
                                 "each with higher_is_better")
            self.sub_types = [SubMetricConfig(name=n) for n in defn.defaults()]
        for s in self.sub_types:
            if s.name in defn.refused:
                raise ValueError(f"metric '{self.name}': {defn.refused[s.name]}")
            sub = defn.sub_type(s.name)
            if sub is None and not defn.open_sub_types:
                hint = (" (honed computes every metric itself, whatever the backend says; for another score use "
                        "a custom metric)" if self.backend == "huggingface_metrics" else "")
                raise ValueError(f"metric '{self.name}': {defn.unknown_sub_type(s.name)}{hint}")
            if s.higher_is_better is None:
                if sub is None:
                    raise ValueError(f"metric '{self.name}': sub type '{s.name}' needs higher_is_better")
                s.higher_is_better = sub.higher_is_better
            if sub is not None and "priority" not in s.model_fields_set:
                s.priority = sub.priority
            if s.metric_config:
                self._check_metric_config(s, dict(sub.options) if sub else {})
        if defn.needs_data and not self.data_config:
            raise ValueError(f"metric '{self.name}': {self.type} needs a data_config to score")
        if defn.check is not None:
            defn.check(self)
        return self

    def _check_metric_config(self, s: SubMetricConfig, applied: dict[str, type | tuple[type, ...]]) -> None:
        for key, value in (s.metric_config or {}).items():
            if key in applied:
                if isinstance(value, bool) is not (applied[key] is bool) or not isinstance(value, applied[key]):
                    raise ValueError(f"metric '{self.name}': {s.name} metric_config.{key} must be "
                                     f"{'a boolean' if applied[key] is bool else 'a number'}")
            elif key == "average":
                if value not in ("macro", None):
                    raise ValueError(f"metric '{self.name}': {s.name} metric_config.average '{value}' is not what "
                                     "honed computes (macro averages over labels); remove it or set 'macro'")
            else:
                _warn_once(f"metric '{self.name}': {s.name} metric_config.{key} is not applied (honed computes "
                           f"{s.name} itself, without torchmetrics options)")


class EvaluatorConfig(_Strict):
    """A named set of metrics (``evaluators.<name>``), or lm-evaluation-harness tasks (``type: LMEvaluator``)."""

    type: str | None = Field(
        None, description="Evaluator kind: unset (or Olive's OnnxEvaluator / PyTorchEvaluator): the metrics; "
        "LMEvaluator: lm-evaluation-harness tasks (and the metrics, if any)."
    )
    name: str | None = Field(None, description="Accepted for Olive compatibility; the key under evaluators names it.")
    metrics: list[MetricConfig] = Field(default_factory=list, description="Metrics to measure, in order.")

    tasks: list[str] | None = Field(
        None, description="LMEvaluator: lm-eval task, group or tag names (e.g. arc_easy, or a task of include_path); "
        "'size_on_disk' adds the result size_on_disk-bytes as Olive does. Results are keyed '<task>-<metric>' "
        "(lm-eval's filter is dropped, or kept as '<task>-<metric>,<filter>' when a metric has several)."
    )
    include_path: InputPath | list[InputPath] | None = Field(
        None, description="LMEvaluator: folder(s) of lm-eval task YAML files (lm-eval's TaskManager include_path), "
        "e.g. a task with 'dataset_path: json' and 'dataset_kwargs.data_files' naming local files, which runs "
        "offline. Relative data_files resolve against the working directory, as in lm-eval. A YAML's '!function' "
        "runs the Python file beside it."
    )
    limit: int | float | None = Field(
        None, gt=0, description="LMEvaluator: rows per task; below 1.0 a fraction of each task's rows (lm-eval's limit)."
    )
    batch_size: int = Field(1, gt=0, le=4096, description="LMEvaluator: sequences per forward call.")
    max_length: int | None = Field(
        None, gt=0, description="LMEvaluator: longest sequence the model sees (left-truncated beyond it); default: "
        "the model's context length."
    )
    max_gen_toks: int | None = Field(
        None, gt=0, description="LMEvaluator: new tokens of a generation task that sets none itself (Olive 0.7's "
        "key; default 256, lm-eval's)."
    )
    num_fewshot: int | None = Field(None, ge=0, description="LMEvaluator: in-context examples (default: each "
                                    "task's own, 0 for most).")
    bootstrap_iters: int = Field(100_000, ge=0, description="LMEvaluator: bootstrap resamples for the standard "
                                 "errors of non-mean metrics (lm-eval's; 0 skips them).")
    model_class: Literal["hf", "ort", "ortgenai"] | None = Field(
        None, description="LMEvaluator: runtime, in Olive's names: hf (transformers), ort (onnxruntime; a genai "
        "folder's model.onnx too), ortgenai (onnxruntime-genai). Default: the model's kind. A model of another "
        "kind (e.g. the input HF model) is scored with its own runtime, with a warning."
    )
    device: Literal["cpu", "gpu", "cuda", "npu"] | None = Field(
        None, description="LMEvaluator: device to run on (default: the workflow's target); cuda means gpu."
    )
    execution_provider: str | None = Field(
        None, description="LMEvaluator: onnxruntime execution provider for ort models (default: the device's)."
    )
    provider_options: dict[str, Any] | None = Field(
        None, description="LMEvaluator: accepted for Olive compatibility; not applied (set provider options in the "
        "model's inference settings), named in a warning."
    )
    model_args: dict[str, Any] = Field(
        default_factory=dict, description="LMEvaluator: Olive's extra arguments for the lm-eval model; batch_size and "
        "max_length apply, others are named in a warning (honed's runtimes take no lm-eval model arguments)."
    )
    apply_chat_template: StrictBool | str = Field(
        False, description="LMEvaluator: wrap requests in the tokenizer's chat template (a name picks one of several)."
    )
    system_instruction: str | None = Field(None, description="LMEvaluator: system prompt for every request.")
    fewshot_as_multiturn: StrictBool = Field(
        False, description="LMEvaluator: few-shot examples as separate chat turns (needs apply_chat_template)."
    )
    sample_log_num: int = Field(0, ge=0, description="LMEvaluator: write the first N samples of each task "
                                "(prompt, target, response, metrics) to <sample_log_dir>/<task>.jsonl.")
    sample_log_dir: LocalPath | None = Field(None, description="LMEvaluator: folder of the sample logs (default: "
                                             "./sample_logs).")
    sub_types: list[SubMetricConfig] = Field(
        default_factory=list, description="LMEvaluator (honed): priority, goal and direction of results, each named "
        "by its key '<task>-<metric>'; higher is better unless the metric is a perplexity or bits_per_byte."
    )

    @model_validator(mode="before")
    @classmethod
    def _type_args(cls, data: Any) -> Any:
        """Olive nests an evaluator's own arguments under ``type_args``; they are the same keys flattened."""
        if isinstance(data, dict) and isinstance(data.get("type_args"), dict):
            inner = data["type_args"]
            clash = sorted(k for k in inner if k in data and data[k] != inner[k])
            if clash:
                raise ValueError(f"{', '.join(clash)} set both in type_args and beside it with different values")
            data = {**{k: v for k, v in data.items() if k != "type_args"}, **inner}
        return data

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str | None) -> str | None:
        if v is None or v == "LMEvaluator" or v in METRICS_EVALUATORS:
            return v
        if v in UNSUPPORTED_EVALUATORS:
            raise ValueError(f"evaluator type {v}: {UNSUPPORTED_EVALUATORS[v]}")
        raise ValueError(f"unknown evaluator type '{v}'; use LMEvaluator, or leave type unset for metrics")

    @field_validator("execution_provider")
    @classmethod
    def _provider(cls, v: str | None) -> str | None:
        problem = execution_provider_problem(v) if v is not None else None
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _check(self) -> EvaluatorConfig:
        names = [m.name for m in self.metrics]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"metric names must be unique; repeated: {', '.join(dup)}")
        if self.type != "LMEvaluator":
            fields = type(self).model_fields  # a default written out (honed config migrate) is no setting
            set_lm = [k for k in LM_KEYS if getattr(self, k) != fields[k].get_default(call_default_factory=True)]
            if set_lm:
                raise ValueError(f"{', '.join(set_lm)} only apply with type: LMEvaluator")
            if not self.metrics:
                raise ValueError("an evaluator needs metrics (or type: LMEvaluator with tasks)")
            return self
        if not self.tasks:
            raise ValueError("an LMEvaluator needs tasks: lm-eval task names (e.g. arc_easy, or a task of "
                             "include_path)")
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise ValueError("fewshot_as_multiturn needs apply_chat_template")
        for key in ("batch_size", "max_length"):
            value = self.model_args.get(key)
            if key in self.model_args and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"model_args.{key} must be a positive integer")
        keys = [s.name for s in self.sub_types]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"sub_types repeat {', '.join(dup)}")
        for s in self.sub_types:
            if "-" not in s.name:
                raise ValueError(f"sub_types: '{s.name}' is not a result key; name it '<task>-<metric>', e.g. "
                                 f"'{self.tasks[0]}-acc'")
            if s.higher_is_better is None:
                metric = s.name.split(",")[0]
                s.higher_is_better = not metric.endswith(("perplexity", "bits_per_byte"))
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A metrics evaluator is written without the LMEvaluator keys, and without its type (OnnxEvaluator and
        PyTorchEvaluator are the same evaluator here) and name (honed config migrate, cache keys)."""
        data = handler(self)
        data.pop("name", None)
        if not self.is_lm:
            for k in (*LM_KEYS, "type"):
                data.pop(k, None)
        return data

    @property
    def is_lm(self) -> bool:
        return self.type == "LMEvaluator"

    def _subs(self) -> list[tuple[str, SubMetricConfig]]:
        out = [(f"{m.name}-{s.name}", s) for m in self.metrics for s in m.sub_types]
        return out + [(s.name, s) for s in self.sub_types]

    def objectives(self) -> list[tuple[str, bool, int]]:
        """(result key, higher is better, priority) of every sub metric with a priority > 0, by priority."""
        out = [(k, bool(s.higher_is_better), s.priority) for k, s in self._subs() if s.priority > 0]
        return sorted(out, key=lambda o: o[2])

    def directions(self) -> dict[str, bool]:
        """Every configured result key -> higher is better."""
        return {k: bool(s.higher_is_better) for k, s in self._subs()}

    def goals(self) -> dict[str, GoalConfig]:
        return {k: s.goal for k, s in self._subs() if s.goal is not None}
