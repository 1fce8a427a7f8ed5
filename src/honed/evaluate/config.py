"""Evaluator schema, in Olive's spelling: ``evaluators.<name>.metrics[*].sub_types[*].goal``.

A metric is one measurement family (accuracy, latency, ...) over one data config; its sub
types are the numbers it reports (``accuracy_score``, ``p90``) and each may carry a goal and a
priority.  Results are keyed ``<metric name>-<sub type>`` as Olive does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from honed.config.paths import PythonFile
from honed.data.config import MAX_SEQ_LEN

MetricType = Literal["accuracy", "perplexity", "latency", "throughput", "size_on_disk", "memory", "custom"]

SUB_TYPES: dict[str, tuple[str, ...]] = {
    "accuracy": ("accuracy_score", "f1_score", "precision", "recall", "exact_match"),
    "perplexity": ("perplexity", "loss"),
    "latency": ("avg", "p50", "p75", "p90", "p95", "p99", "min", "max"),
    "throughput": ("avg", "p50", "p90", "min", "max", "tokens_per_s"),
    "size_on_disk": ("mb",),
    "memory": ("peak_rss_mb", "delta_rss_mb"),
}
"""Sub types each built-in metric reports; ``custom`` reports whatever the user's function returns."""

DEFAULT_SUB_TYPES: dict[str, tuple[str, ...]] = {
    "accuracy": ("accuracy_score",), "perplexity": ("perplexity",), "latency": ("avg",),
    "throughput": ("avg",), "size_on_disk": ("mb",), "memory": ("peak_rss_mb",),
}

OLIVE_ONLY_USER_CONFIG = {"data_dir", "io_bind", "inference_settings", "shared_kv_buffer", "input_names",
                          "input_shapes", "input_types", "run_kwargs", "func_kwargs", "dataloader_func"}
"""Olive user_config keys about its own data loaders and sessions; honed measures without them."""

LOWER_IS_BETTER = {"perplexity", "latency", "size_on_disk", "memory"}

GoalType = Literal["threshold", "min-improvement", "max-degradation", "percent-min-improvement",
                   "percent-max-degradation"]


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

    name: str = Field(description="Sub type: accuracy_score, f1_score, p90, tokens_per_s, ... (see SUB_TYPES).")
    priority: int = Field(-1, description="Rank of this number among the search objectives (1 first; -1: "
                          "reported only, not an objective).")
    goal: GoalConfig | None = Field(None, description="Bound a model must meet on this number.")
    higher_is_better: StrictBool | None = Field(
        None, description="Direction; set by the metric type for built-ins, required for custom metrics."
    )
    metric_config: dict[str, Any] | None = Field(
        None, description="Accepted for Olive compatibility (torchmetrics options); honed's scores need none."
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
    label_col: str | None = Field(None, description="Accuracy: the column holding the label; default: the last "
                                  "field of the text template.")
    scoring: Literal["loglikelihood", "generate"] = Field(
        "loglikelihood", description="Accuracy with a generative model: pick the label with the highest "
        "log-likelihood after the prompt, or greedy-generate and compare the text."
    )
    score_eos: StrictBool = Field(True, description="Include the EOS after the label in its log-likelihood (tells "
                            "'joy' from 'joyful'); matches training with append_eos.")
    user_script: PythonFile | None = Field(None, description="custom: the Python file defining evaluate_func.")
    evaluate_func: str | None = Field(None, description="custom: function (model: ModelHandle, rows: list[dict] "
                                      "| None) -> float | dict[str, float].")
    prompt: str = Field("The quick brown fox jumps over the lazy dog", description="Latency/throughput input "
                        "when the metric has no data_config.")


class MetricConfig(_Strict):
    """One measurement family over one data config."""

    name: str = Field(description="Name of this metric; results are keyed '<name>-<sub type>'.")
    type: MetricType = Field(description="accuracy, perplexity, latency, throughput, size_on_disk, memory or custom.")
    data_config: str | None = Field(None, description="Name of the data config to measure on (one of data_configs).")
    sub_types: list[SubMetricConfig] = Field(default_factory=list, description="Numbers to report; default per type.")
    user_config: MetricUserConfig = Field(default_factory=MetricUserConfig)
    backend: str | None = Field(None, description="Accepted for Olive compatibility; honed computes metrics itself.")

    @model_validator(mode="before")
    @classmethod
    def _olive_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("user_config"), dict):
            uc = {k: v for k, v in data["user_config"].items() if k not in OLIVE_ONLY_USER_CONFIG}
            data = {**data, "user_config": uc}
        return data

    @model_validator(mode="after")
    def _sub_types(self) -> MetricConfig:
        if not self.sub_types:
            if self.type == "custom":
                raise ValueError(f"metric '{self.name}': a custom metric needs sub_types naming its results, "
                                 "each with higher_is_better")
            self.sub_types = [SubMetricConfig(name=n) for n in DEFAULT_SUB_TYPES[self.type]]
        known = SUB_TYPES.get(self.type)
        for s in self.sub_types:
            if known is not None and s.name not in known:
                raise ValueError(f"metric '{self.name}': unknown {self.type} sub type '{s.name}'; use one of "
                                 f"{', '.join(known)}")
            if s.higher_is_better is None:
                if self.type == "custom":
                    raise ValueError(f"metric '{self.name}': sub type '{s.name}' needs higher_is_better")
                s.higher_is_better = self.type not in LOWER_IS_BETTER
        if self.type == "custom" and not (self.user_config.user_script and self.user_config.evaluate_func):
            raise ValueError(f"metric '{self.name}': a custom metric needs user_config.user_script and evaluate_func")
        if self.type in ("accuracy", "perplexity") and not self.data_config:
            raise ValueError(f"metric '{self.name}': {self.type} needs a data_config to score")
        return self


class EvaluatorConfig(_Strict):
    """A named set of metrics (``evaluators.<name>``)."""

    metrics: list[MetricConfig] = Field(min_length=1, description="Metrics to measure, in order.")

    @model_validator(mode="after")
    def _unique(self) -> EvaluatorConfig:
        names = [m.name for m in self.metrics]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"metric names must be unique; repeated: {', '.join(dup)}")
        return self

    def objectives(self) -> list[tuple[str, bool, int]]:
        """(result key, higher is better, priority) of every sub metric with a priority > 0, by priority."""
        out = [(f"{m.name}-{s.name}", bool(s.higher_is_better), s.priority)
               for m in self.metrics for s in m.sub_types if s.priority > 0]
        return sorted(out, key=lambda o: o[2])

    def directions(self) -> dict[str, bool]:
        """Every result key -> higher is better."""
        return {f"{m.name}-{s.name}": bool(s.higher_is_better) for m in self.metrics for s in m.sub_types}

    def goals(self) -> dict[str, GoalConfig]:
        return {f"{m.name}-{s.name}": s.goal for m in self.metrics for s in m.sub_types if s.goal is not None}
