"""honed's workflow schema (pydantic v2).

Every field is described once; that text feeds ``honed config schema`` (JSON Schema for
editors), the generated docs and CLI help.  Pass parameters are validated against each
pass's own config model (see ``honed.config.load``), so this file knows no pass.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, Tag, field_validator
from typing_extensions import TypedDict

from honed.data.config import SEED_MAX, DataConfig
from honed.evaluate.config import EvaluatorConfig
from honed.systems.base import all_systems
from honed.util.paths import LocalPath


class _Strict(BaseModel):
    # Booleans are StrictBool field by field: "false" (a string) is truthy and must never switch on
    # trust_remote_code; NaN/inf never validate as numbers.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


DTypeName = Literal["float32", "fp32", "float16", "fp16", "bfloat16", "bf16", "auto"]


class LoadKwargs(TypedDict, total=False):
    """``from_pretrained`` arguments: the ones whose type matters are checked; any other key is passed on.

    A key that is neither a ``from_pretrained`` argument nor an attribute of the model's config makes
    transformers fail when the model loads, so the preflight refuses it for a local model folder and
    names it in a warning when the config cannot be read before the run (hub id, GGUF file).
    """

    __pydantic_config__ = ConfigDict(extra="allow", allow_inf_nan=False)  # type: ignore[misc]

    trust_remote_code: StrictBool
    local_files_only: StrictBool
    low_cpu_mem_usage: StrictBool
    use_safetensors: StrictBool
    force_download: StrictBool
    ignore_mismatched_sizes: StrictBool
    output_loading_info: StrictBool
    offload_buffers: StrictBool
    use_kernels: StrictBool
    weights_only: StrictBool
    revision: str
    subfolder: str
    variant: str
    attn_implementation: str
    torch_dtype: DTypeName
    dtype: DTypeName


FROM_PRETRAINED_KEYS = frozenset({
    *LoadKwargs.__annotations__, "adapter_kwargs", "adapter_name", "cache_dir", "device_map", "device_mesh",
    "distributed_config", "experts_implementation", "generation_config", "gguf_file", "kernel_config",
    "key_mapping", "max_memory", "offload_folder", "proxies", "quantization_config", "tp_plan", "tp_size",
    "token", "disable_mmap", "allow_all_kernels", "code_revision",
})
"""Arguments transformers' ``from_pretrained`` takes itself (not passed on to the model's config)."""


class InputModelConfig(_Strict):
    """The model a workflow starts from."""

    type: Literal["HfModel", "OnnxModel", "GenAIModel"] = Field(
        "HfModel", description="HfModel (transformers folder, hub id, GGUF file), OnnxModel or GenAIModel."
    )
    model_path: LocalPath = Field(
        description="Local folder or file, a hub id (org/name), a .gguf file, or a file inside an installed "
        "Python package written 'pkg://package/relative/path'."
    )
    task: str = Field("text-generation", description="What the model does: text-generation, text-classification, ...")
    adapter_path: LocalPath | None = Field(None, description="A PEFT adapter folder to apply over model_path.")
    load_kwargs: LoadKwargs = Field(
        default_factory=lambda: LoadKwargs(),
        description="Arguments for from_pretrained (torch_dtype, revision, ...). trust_remote_code is honoured "
        "only when set here, and only as true or false (never a string). Other keys are passed to "
        "from_pretrained, which hands them to the model's config; one that is neither is refused before the "
        "run for a local model folder and named in a warning otherwise.",
    )


SYSTEM_TYPES: tuple[str, ...] = tuple(all_systems())
"""The system types honed has (the registry in honed.systems); messages recommend only these."""


def _system_tag(v: Any) -> str | None:
    kind = v.get("type", "LocalSystem") if isinstance(v, dict) else getattr(v, "type", None)
    return kind if isinstance(kind, str) else None


SystemConfig = Annotated[
    Union[tuple(Annotated[c.config_class, Tag(n)] for n, c in all_systems().items())],  # noqa: UP007
    Discriminator(_system_tag, custom_error_type="system_type",
                  custom_error_message=f"unknown system type; use one of {', '.join(SYSTEM_TYPES)}"),
]
"""One system's config: the registered system config class its ``type`` names (LocalSystem when absent)."""


class EngineConfig(_Strict):
    """How the workflow runs: where outputs and the cache go, which systems to use."""

    cache_dir: LocalPath = Field("cache", description="Content-addressed cache of pass outputs; reruns reuse it.")
    shared_cache: str | None = Field(
        None, description="An object-store URL every machine reaches (s3://bucket/prefix, gs://, az://): a second "
        "cache tier, so a pass computed on one machine or Ray node is a hit on every other; commits are atomic and "
        "a per-key lease keeps two machines from computing the same pass. Credentials and endpoint come from the "
        "usual environment (AWS_*, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS). A folder every machine "
        "mounts needs no second tier: make it engine.cache_dir."
    )
    output_dir: LocalPath = Field("models", description="The final model's files, footprints.json and the report.")
    host: str | None = Field(None, description="Name of the system passes run on (default: local CPU).")
    target: str | None = Field(None, description="Name of the system the model is built for (default: host).")
    evaluator: str | None = Field(None, description="Name of the evaluator that scores models.")
    evaluate_input_model: StrictBool | None = Field(
        None, description="Score the input model too, so the report shows before and after (default: yes "
        "when an evaluator is set)."
    )
    evaluate_passes: StrictBool | list[str] = Field(
        False, description="Also score the output of these passes (true: every pass), so the table shows "
        "each stage, e.g. the merged fp32 model before the int4 build."
    )
    seed: int = Field(0, ge=0, le=SEED_MAX,
                      description="Seed for search samplers and anything else random in the engine (0 to 2**32-1).")
    generate_config_only: StrictBool = Field(
        False, description="Write the resolved workflow (honed's schema) to output_dir/workflow.json and run "
        "nothing (Olive's auto_optimizer_config.generate_config_only).",
    )


class SearchStrategy(_Strict):
    """How to search pass parameters (see honed.search)."""

    execution_order: Literal["joint", "pass-by-pass"] = Field("joint", description="Search all passes jointly.")
    sampler: Literal["sequential", "random", "tpe", "qmc", "nsgaII"] = Field(
        "sequential", description="How to pick trials: sequential (every point in order), random, or optuna's "
        "tpe, qmc (quasi-Monte Carlo) or nsgaII (Olive's search_algorithm names exhaustive/random/tpe/qmc/nsgaII "
        "map here)."
    )
    max_iter: int | None = Field(None, gt=0, description="Stop after this many trials.")
    max_time: float | None = Field(None, gt=0, description="Stop after this many seconds.")
    stop_when_goals_met: StrictBool = Field(False, description="Stop at the first trial meeting every goal.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the sampler (0 to 2**32-1).")
    output_model_num: int | None = Field(
        None, gt=0, description="Copy this many best models to output_dir/<rank>/ (default: every Pareto-optimal one)."
    )
    max_concurrent_trials: int = Field(
        1, gt=0, description="Trials run at once (above 1: each in a worker of the host system, a spawned process "
        "or a Ray task; a trial whose worker dies is retried once). Another `honed run` of the same search on the "
        "same cache joins it and runs the trials not taken yet."
    )


class PassEntry(BaseModel):
    """One pass in the workflow: its registered type plus that pass's parameters (flat)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Registered pass type (see `honed passes`).")

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class WorkflowConfig(_Strict):
    """A whole workflow file, in honed's own schema."""

    input_model: InputModelConfig
    systems: dict[str, SystemConfig] = Field(default_factory=dict, description="Named systems.")
    data_configs: list[DataConfig] = Field(default_factory=list, description="Named data sources.")
    evaluators: dict[str, EvaluatorConfig] = Field(default_factory=dict, description="Named evaluators.")
    passes: dict[str, PassEntry] = Field(default_factory=dict, description="Passes, run in this order.")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    search_strategy: SearchStrategy | None = Field(None, description="Set to search pass parameters.")
    pass_flows: list[list[str]] | None = Field(
        None, description="Olive's pass flows: each list names passes (from `passes`) run in that order as its own "
        "branch over the shared cache, written to output_dir/<flow>/ (the pass names joined by '-'); the top "
        "output_dir then holds footprints.json and report.html comparing the flows.",
    )

    @field_validator("pass_flows")
    @classmethod
    def _flows(cls, v: list[list[str]] | None) -> list[list[str]] | None:
        if v is not None:
            if not v or any(not flow for flow in v):
                raise ValueError("needs at least one flow, each naming at least one pass")
            names = ["-".join(flow) for flow in v]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"flows must differ; repeated: {', '.join(dup)}; remove the repeat")
        return v

    @field_validator("data_configs")
    @classmethod
    def _unique_names(cls, v: list[DataConfig]) -> list[DataConfig]:
        names = [d.name for d in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"data config names must be unique; repeated: {', '.join(dup)}")
        return v
