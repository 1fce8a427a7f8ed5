"""OrtSessionParamsTuning: measure an ONNX (or onnxruntime-genai) model's latency on the target under
combinations of onnxruntime session options and keep the fastest (Olive's ``OrtSessionParamsTuning``,
formerly ``OrtPerfTuning``).

What is tried: for each execution mode (sequential / parallel) and graph optimization level, each
intra-op thread count (and, in parallel mode, each inter-op thread count).  Unset lists default to
sequential and parallel, level 99 (all) and thread counts 1, 2, 4, ... up to the physical cores
(``cpu_cores``).  "defaults" is the input model as honed's runtime loads it (a plain model: onnxruntime's
defaults with one intra-op thread per physical core; a tuned one: its settings; genai: its config); it is
a candidate too, so the written settings are never slower than the defaults in the measurement.

Each measurement: a fresh session through honed's own loader (``OnnxSession`` / ``og.Model`` over the
overlaid genai config, so what is timed is what later loads), ``warmup_num`` untimed runs, then timed runs;
a trial's latency is the median of its ``repeat_test_num`` runs in milliseconds.  Against drift the runs
are split into two rounds, forward then reversed, after one untimed pass that takes the process's cold
start (``measure_all``).  Timing on a busy machine is noisy (identical settings differed by ~20% on a
loaded 2-core VM); raise ``repeat_test_num`` for a steadier choice.

Where the choice goes:

* ``onnx``: ``inference_settings.json`` beside the model (``honed.models.onnx_runtime.SETTINGS_FILE``,
  Olive's ``inference_settings`` shape), which every ``OnnxSession`` over that model applies;
* ``genai``: ``genai_config.json`` ``model.decoder.session_options`` (``intra_op_num_threads``,
  ``inter_op_num_threads``, ``graph_optimization_level``, config entries), which onnxruntime-genai reads.
  onnxruntime-genai has no execution-mode option, so genai models are tuned in sequential mode only.

The model files are hard-linked (copied across file systems) into the output; the settings file is
written new.  Everything tried, the best, the defaults' latency and the gain (defaults / best) go into
the pass metrics (footprints.json).

Olive keys honed does not act on: ``io_bind`` (honed's runtime feeds sessions with ``run()``; IO binding
changes copy overhead, never outputs), ``enable_cuda_graph`` (needs IO binding), ``enable_profiling``,
``trt_fp16_enable`` on a provider other than TensorRT, and ``data_dir``/``user_script``/``script_dir`` without
``dataloader_func``: each is named in a warning.  Olive's older ``dataloader_func`` (with ``user_script``,
``data_dir``, ``batch_size``) becomes a data config in the config loader, read here like any ``data_config``.
Other execution providers than the target's are skipped with a warning, as Olive skips them; with
``force_evaluate_other_eps`` Olive could pick another provider, which honed cannot, so that is an error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, StrictBool, StrictInt, field_validator, model_validator

from honed.errors import ConfigError, ConfigProblem, UserError
from honed.models.handle import ModelHandle
from honed.passes._onnx_common import copy_side_files, onnx_file
from honed.passes.base import Pass, PassConfig, PassContext, register_pass
from honed.util.accelerator import execution_provider_problem
from honed.util.runtime_flavour import import_runtime

log = logging.getLogger("honed")

MODES = {"sequential": 0, "parallel": 1}
_MODE_NAMES = {0: "sequential", 1: "parallel", "sequential": "sequential", "parallel": "parallel",
               "ort_sequential": "sequential", "ort_parallel": "parallel"}
LEVEL_NAMES = {0: "ORT_DISABLE_ALL", 1: "ORT_ENABLE_BASIC", 2: "ORT_ENABLE_EXTENDED", 3: "ORT_ENABLE_LAYOUT",
               99: "ORT_ENABLE_ALL"}
_LEVELS = {**{v.lower(): k for k, v in LEVEL_NAMES.items()},
           **{v.lower().removeprefix("ort_").removeprefix("enable_"): k for k, v in LEVEL_NAMES.items()}}
GENAI_LEVELS = (0, 1, 2, 99)
"""The levels onnxruntime-genai's config parser knows (it has no ORT_ENABLE_LAYOUT)."""
AFFINITY_KEY = "session.intra_op_thread_affinities"
GENAI_NEW_TOKENS = 8
"""Tokens a genai measurement generates after the prompt (prompt + decode steps are timed together)."""
DEFAULT_SEQ_LEN = 16
"""Tokens per row of generated inputs (without data_config or input_shapes)."""


def _as_list(v: Any) -> Any:
    """Olive's current schema takes one value per key (it searches them); its older one a list."""
    return v if v is None or isinstance(v, list) else [v]


def _mode(v: Any) -> Any:
    key = v.lower() if isinstance(v, str) else v
    if isinstance(v, bool) or not isinstance(v, int | float | str) or key not in _MODE_NAMES:
        raise ValueError(f"unknown execution mode {v!r}; use 0 / 'sequential' / 'ORT_SEQUENTIAL' or "
                         "1 / 'parallel' / 'ORT_PARALLEL'")
    return _MODE_NAMES[key]


def _level(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"unknown graph optimization level {v!r}")
    if isinstance(v, str) and v.lower() in _LEVELS:
        return _LEVELS[v.lower()]
    if not isinstance(v, int | float) or v not in LEVEL_NAMES:  # a list/dict is unhashable
        raise ValueError(f"unknown graph optimization level {v!r}; use 0, 1, 2, 3, 99 or "
                         + ", ".join(LEVEL_NAMES.values()))
    return v


ExecutionModeName = Annotated[Literal["sequential", "parallel"], BeforeValidator(_mode)]
OptLevel = Annotated[Literal[0, 1, 2, 3, 99], BeforeValidator(_level)]
ThreadCount = Annotated[StrictInt, Field(ge=1, le=4096)]
ConfigValue = str | StrictInt | float | StrictBool


class OrtSessionParamsTuningConfig(PassConfig):
    """Which session options to try and how to measure them (Olive's names)."""

    data_config: str | None = Field(
        None, description="Data config whose first batch is the timed input: its dummy data, user dataloader or "
        "tokenized rows as latency metrics take them, else its first batch_size rows tokenized and cut to the "
        "shortest; default: generated token ids (batch_size x 16) or input_names/input_shapes.")
    batch_size: StrictInt = Field(1, ge=1, le=4096, description="Rows per timed run.")
    input_names: list[str] | None = Field(
        None, description="Model inputs to generate with the shapes in input_shapes (others: token ids, "
        "masks and empty past key/values as honed feeds them).")
    input_shapes: list[list[Annotated[StrictInt, Field(ge=0)]]] | None = Field(
        None, description="One shape per name in input_names, e.g. [[1, 128], [1, 128]].")
    input_types: list[str] | None = Field(
        None, description="One numpy dtype per name in input_names (default: the model's input type).")
    providers_list: Annotated[list[str] | None, BeforeValidator(_as_list)] = Field(
        None, description="Execution providers Olive would try; honed tunes the target's provider only "
        "(others are skipped with a warning).")
    provider_options_list: dict[str, ConfigValue] = Field(
        default_factory=dict, description="Options of the target's execution provider, used while measuring "
        "and stored with the chosen settings.")
    device: Literal["cpu", "gpu", "npu"] | None = Field(
        None, description="Device to tune on; must be the target system's device (default: it).")
    cpu_cores: StrictInt | None = Field(
        None, ge=1, le=4096, description="Largest thread count tried when a thread list is unset "
        "(default: the physical cores).")
    io_bind: StrictBool = Field(
        False, description="Olive: time with IO binding. Not applied (warning): honed's runtime runs sessions "
        "without it; it changes copy overhead, not outputs.")
    enable_cuda_graph: StrictBool = Field(
        False, description="Olive: CUDA graphs for the CUDA provider. Not applied (warning): they need IO binding.")
    execution_mode_list: Annotated[list[ExecutionModeName] | None, BeforeValidator(_as_list)] = Field(
        None, min_length=1, description="Execution modes to try: 0/'sequential', 1/'parallel' (default both; "
        "genai: sequential only).")
    opt_level_list: Annotated[list[OptLevel] | None, BeforeValidator(_as_list)] = Field(
        None, min_length=1, description="Graph optimization levels to try: 0 disable, 1 basic, 2 extended, "
        "3 layout, 99 all (or their ORT_* names; default [99]).")
    trt_fp16_enable: StrictBool = Field(
        False, description="TensorRT provider only: FP16 engines (stored in provider options; warning elsewhere).")
    intra_thread_num_list: Annotated[list[ThreadCount] | None, BeforeValidator(_as_list)] = Field(
        None, min_length=1, description="Intra-op thread counts to try (default 1, 2, 4, ... up to cpu_cores).")
    inter_thread_num_list: Annotated[list[ThreadCount] | None, BeforeValidator(_as_list)] = Field(
        None, min_length=1, description="Inter-op thread counts to try in parallel mode (default 2, 4, ... up "
        "to cpu_cores).")
    extra_session_config: dict[str, ConfigValue] | None = Field(
        None, description="Session config entries (add_session_config_entry) used in every trial and stored "
        "with the choice; booleans become '1'/'0'.")
    force_evaluate_other_eps: StrictBool = Field(
        False, description="Olive: also time providers other than the target's. An error when providers_list "
        "names another provider (honed runs the target's).")
    enable_profiling: StrictBool = Field(False, description="Olive: onnxruntime profiling. Not applied (warning).")
    warmup_num: StrictInt = Field(3, ge=0, le=10_000, description="Untimed runs per trial.")
    repeat_test_num: StrictInt = Field(10, ge=1, le=100_000, description="Timed runs per trial; the median counts.")
    data_dir: str | None = Field(None, description="Olive's older data key; with dataloader_func it goes into that "
                                 "data config, alone it is ignored (warning).")
    user_script: str | None = Field(None, description="Olive's older data key; with dataloader_func it goes into "
                                    "that data config, alone it is ignored (warning).")
    script_dir: str | None = Field(None, description="Olive's older data key; with dataloader_func it goes into "
                                   "that data config, alone it is ignored (warning).")
    dataloader_func: str | None = Field(
        None, description="Olive's older data loader (with user_script): the config loader turns it into a data "
        "config this pass reads; an error together with data_config.")

    @field_validator("providers_list")
    @classmethod
    def _known_providers(cls, v: list[str] | None) -> list[str] | None:
        for name in v or []:
            problem = execution_provider_problem(name)
            if problem:
                raise ValueError(problem)
        return v

    @field_validator("dataloader_func")
    @classmethod
    def _no_user_loader(cls, v: str | None) -> str | None:
        if v is not None:  # the config loader moved it into a data config unless data_config was set too
            raise ValueError("set either data_config or dataloader_func (with user_script), not both")
        return v

    @field_validator("input_types")
    @classmethod
    def _dtypes(cls, v: list[str] | None) -> list[str] | None:
        import numpy as np

        for t in v or []:
            try:
                np.dtype(t)
            except TypeError as e:
                raise ValueError(f"unknown numpy dtype {t!r} (e.g. int64, int32, float32, float16, bool)") from e
        return v

    @model_validator(mode="after")
    def _consistent(self) -> OrtSessionParamsTuningConfig:
        n = len(self.input_names or [])
        if (self.input_shapes is not None or self.input_types is not None) and self.input_names is None:
            raise ValueError("input_shapes/input_types need input_names (one name per shape)")
        if self.input_shapes is not None and len(self.input_shapes) != n:
            raise ValueError(f"input_shapes has {len(self.input_shapes)} shapes for {n} input_names")
        if self.input_types is not None and len(self.input_types) != n:
            raise ValueError(f"input_types has {len(self.input_types)} types for {n} input_names")
        if self.input_names is not None and self.input_shapes is None:
            raise ValueError("input_names needs input_shapes (one shape per name)")
        affinities = (self.extra_session_config or {}).get(AFFINITY_KEY)
        if isinstance(affinities, str) and self.intra_thread_num_list is not None:
            need = len(affinities.split(";")) + 1
            if self.intra_thread_num_list != [need]:
                raise ValueError(f"extra_session_config '{AFFINITY_KEY}' lists {need - 1} affinities, which fixes "
                                 f"intra-op threads at {need}; drop intra_thread_num_list or set it to [{need}]")
        return self


def _config_value(v: Any) -> str:
    """A session config entry's string form (onnxruntime reads '1'/'0' for booleans)."""
    return ("1" if v else "0") if isinstance(v, bool) else str(v)


def thread_ladder(cores: int, start: int = 1) -> list[int]:
    """1, 2, 4, ... below ``cores``, then ``cores`` itself (from ``start`` on)."""
    out, n = set(), 1
    while n < cores:
        out.add(n)
        n *= 2
    out.add(cores)
    return sorted(x for x in out if x >= start) or [cores]


def candidate_settings(config: OrtSessionParamsTuningConfig, cores: int, genai: bool) -> list[dict[str, Any]]:
    """Every session_options mapping to try, in the order they are measured."""
    modes = config.execution_mode_list or (["sequential"] if genai else ["sequential", "parallel"])
    if genai:
        modes = [m for m in modes if m == "sequential"]
    levels = list(dict.fromkeys(config.opt_level_list or [99]))
    extra = {k: _config_value(v) for k, v in (config.extra_session_config or {}).items()}
    affinities = extra.get(AFFINITY_KEY)
    if affinities is not None:
        intra = [len(affinities.split(";")) + 1]
    else:
        intra = list(dict.fromkeys(config.intra_thread_num_list or thread_ladder(cores)))
    inter = list(dict.fromkeys(config.inter_thread_num_list or thread_ladder(cores, start=2)))
    out = []
    for mode in dict.fromkeys(modes):
        for level in levels:
            for n_inter in (inter if mode == "parallel" else [None]):
                for n_intra in intra:
                    so: dict[str, Any] = {"execution_mode": MODES[mode], "graph_optimization_level": level,
                                          "intra_op_num_threads": n_intra}
                    if n_inter is not None:
                        so["inter_op_num_threads"] = n_inter
                    if extra:
                        so["extra_session_config"] = extra
                    out.append(so)
    return out


def timed_ms(run: Callable[[], Any], warmup: int, repeat: int) -> list[float]:
    """Wall times of ``repeat`` calls of ``run`` after ``warmup`` untimed ones, in milliseconds."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def measure_all(measure: Callable[[int, int], list[float]], n: int, warmup: int, repeat: int,
                advance: Callable[[], None] = lambda: None) -> list[list[float]]:
    """Timed runs of trials 0..n-1 (``measure(trial, runs)``), fairly ordered.

    First one untimed pass of trial 0 (thread pools, allocator, CPU clock up), so the first trial does not
    pay the process's cold start; then two rounds, forward and reversed, each with half the timed runs, so
    a machine that speeds up or slows down during the sweep favours no trial.  ``repeat`` 1: one round.
    """
    if warmup:
        measure(0, warmup)
    first = (repeat + 1) // 2
    runs: list[list[float]] = [[] for _ in range(n)]
    for i in range(n):
        runs[i] += measure(i, first)
        advance()
    if repeat - first:
        for i in reversed(range(n)):
            runs[i] += measure(i, repeat - first)
            advance()
    return runs


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no copy of large weights); copy when the file systems differ."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---------------------------------------------------------------- inputs


_NP = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
       "tensor(bfloat16)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32",
       "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def _vocab_size(folder: Path, sess: Any | None) -> int:
    """Token ids must stay below the vocabulary: config.json / genai_config.json, else the logits width."""
    for name, keys in (("config.json", ("vocab_size",)), ("genai_config.json", ("model", "vocab_size"))):
        try:
            node: Any = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, int) and node > 0:
            return node
    if sess is not None and "logits" in sess.output_names:
        dim = sess.session.get_outputs()[sess.output_names.index("logits")].shape[-1]
        if isinstance(dim, int) and dim > 0:
            return dim
    return 2


def _data_token_rows(handle: ModelHandle, folder: Path, config: OrtSessionParamsTuningConfig,
                     ctx: PassContext, key: str) -> Any:
    """[batch, seq] int64 token ids: the timed batch latency metrics take from the data config (dummy data, a
    user dataloader, rows a user's pre_process_data tokenized), else its first rows tokenized and cut to the
    shortest, as the evaluator cuts prompts."""
    import numpy as np

    from honed.data.batches import calibration_texts, timing_batch, timing_batch_size
    from honed.models.loaders import load_tokenizer_dir, trusts_remote_code

    name = config.data_config
    if name not in ctx.data_configs:
        raise ConfigError([ConfigProblem(f"{key}.data_config", f"no data config named '{name}'",
                                         f"define it under data_configs (defined: {', '.join(ctx.data_configs) or 'none'})")])
    dc = ctx.data_configs[name]
    tok = load_tokenizer_dir(folder, trust_remote_code=trusts_remote_code(handle))
    batch = timing_batch(dc, tok, config.batch_size, ctx.cache_dir)
    if batch is not None:
        return np.array(batch, dtype=np.int64)
    size = timing_batch_size(dc, config.batch_size)
    texts = calibration_texts(dc, size, tok, ctx.cache_dir)
    if not texts:
        raise UserError(f"{key}.data_config: data config '{name}' has no rows to time the model on")
    texts = (texts * size)[:size]  # fewer rows than the batch: repeat them
    max_len = dc.pre_process_data_config.max_seq_len
    rows = [list(tok(*(t if isinstance(t, tuple) else (t,)), truncation=True, max_length=max_len)["input_ids"])
            for t in texts]  # a (text, text_pair) tuple of input_cols is tokenized as a pair
    n = min(len(r) for r in rows)
    if n == 0:
        raise UserError(f"{key}.data_config: a row of data config '{name}' tokenizes to no tokens")
    return np.array([r[:n] for r in rows], dtype=np.int64)


def onnx_feeds(sess: Any, handle: ModelHandle, folder: Path, config: OrtSessionParamsTuningConfig,
               ctx: PassContext, key: str) -> tuple[dict[str, Any], str]:
    """The timed feeds and a description of them.

    Token models get token ids (data rows, or random ids below the vocabulary), an all-ones mask and empty
    past key/values as honed's runtime feeds them; inputs in input_names get their shape and dtype; any
    other input is zeros (floats: standard normal) with its symbolic dims set to batch_size / 16.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    feeds: dict[str, Any] = {}
    named = dict(zip(config.input_names or [], config.input_shapes or [], strict=True))
    types = dict(zip(config.input_names or [], config.input_types or [], strict=False))
    unknown = [n for n in named if n not in sess.inputs]
    if unknown:
        raise ConfigError([ConfigProblem(f"{key}.input_names", f"the model has no input {', '.join(map(repr, unknown))}",
                                         f"its inputs are: {', '.join(sess.inputs)}")])
    if config.data_config is not None:
        if "input_ids" not in sess.inputs:
            raise ConfigError([ConfigProblem(f"{key}.data_config", "the model takes no input_ids, so text rows "
                                             "cannot feed it", "give input_names/input_shapes instead")])
        ids = _data_token_rows(handle, folder, config, ctx, key)
        feeds.update(sess.feeds(ids, np.ones_like(ids)))
        what = f"data config '{config.data_config}'"
    elif "input_ids" in sess.inputs:
        shape = named.get("input_ids")
        b, s = (shape[0], shape[1]) if shape is not None and len(shape) == 2 else (config.batch_size, DEFAULT_SEQ_LEN)
        ids = rng.integers(0, _vocab_size(folder, sess), size=(b, s), dtype=np.int64)
        feeds.update(sess.feeds(ids, np.ones_like(ids)))
        what = "generated token ids"
    else:
        what = "generated inputs"
    for name, meta in sess.inputs.items():
        if name in named:
            dtype = types.get(name) or _NP.get(meta.type, "float32")
            shape = tuple(named[name])
        elif name in feeds:
            continue
        else:
            dtype = _NP.get(meta.type, "float32")
            shape = tuple(d if isinstance(d, int) else (config.batch_size if i == 0 else DEFAULT_SEQ_LEN)
                          for i, d in enumerate(meta.shape))
        if np.dtype(dtype).kind == "f":
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif name.endswith("input_ids"):
            feeds[name] = rng.integers(0, _vocab_size(folder, sess), size=shape).astype(dtype)
        elif "mask" in name:
            feeds[name] = np.ones(shape, dtype=dtype)
        else:
            feeds[name] = np.zeros(shape, dtype=dtype)
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
    return feeds, f"{what}: {shapes}"


# ---------------------------------------------------------------- benches


class OnnxBench:
    """Times one ONNX model under given settings through honed's ``OnnxSession``."""

    def __init__(self, path: Path, provider: str) -> None:
        self.path = path
        self.provider = provider

    def session(self, settings: dict[str, Any] | None) -> Any:
        from honed.models.onnx_runtime import OnnxSession

        return OnnxSession(self.path, providers=[self.provider], settings=settings)

    def measure(self, settings: dict[str, Any] | None, feeds: dict[str, Any], warmup: int,
                repeat: int) -> list[float]:
        """Timed runs (ms) in a fresh session; ``settings`` None: as the runtime loads the model."""
        sess = self.session(settings)
        return timed_ms(lambda: sess.session.run(None, feeds), warmup, repeat)


def genai_options(so: dict[str, Any]) -> dict[str, Any]:
    """A session_options mapping in genai_config.json's spelling (level names, string config entries)."""
    out: dict[str, Any] = {}
    for k in ("intra_op_num_threads", "inter_op_num_threads"):
        if so.get(k) is not None:
            out[k] = so[k]
    if so.get("graph_optimization_level") is not None:
        out["graph_optimization_level"] = LEVEL_NAMES[so["graph_optimization_level"]]
    out.update(so.get("extra_session_config") or {})
    return out


class GenaiBench:
    """Times one onnxruntime-genai folder: prefill of the prompt rows plus ``GENAI_NEW_TOKENS`` decode
    steps, with the candidate's session options overlaid on its genai_config.json."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def model(self, settings: dict[str, Any] | None) -> Any:
        og = import_runtime("onnxruntime_genai")

        from honed.models.onnx_runtime import load_genai

        if settings is None:
            return load_genai(self.folder)[0]
        config = og.Config(str(self.folder))
        overlay = genai_options(settings.get("session_options") or {})
        config.overlay(json.dumps({"model": {"decoder": {"session_options": overlay}}}))
        return og.Model(config)

    def measure(self, settings: dict[str, Any] | None, ids: Any, warmup: int, repeat: int) -> list[float]:
        """Timed runs (ms) of a fresh model; ``settings`` None: as the runtime loads the folder."""
        og = import_runtime("onnxruntime_genai")

        model = self.model(settings)
        length = ids.shape[1] + GENAI_NEW_TOKENS

        def run() -> None:
            params = og.GeneratorParams(model)
            # min_length: a random model's early EOS must not shorten some runs
            params.set_search_options(max_length=length, min_length=length, do_sample=False)
            gen = og.Generator(model, params)
            gen.append_tokens(ids)
            while not gen.is_done():
                gen.generate_next_token()

        return timed_ms(run, warmup, repeat)


# ---------------------------------------------------------------- the pass


class OrtSessionParamsTuning(Pass):
    name = "OrtSessionParamsTuning"
    description = ("Time the model under onnxruntime thread counts, execution modes and optimization levels; "
                   "store the fastest session options with it.")
    config_class = OrtSessionParamsTuningConfig
    requires = ("onnxruntime",)
    libraries = ("onnxruntime", "onnxruntime-genai")
    accepts: ClassVar[tuple[str, ...]] = ("onnx", "genai")
    produces: ClassVar[tuple[str, ...]] = ("onnx", "genai")
    data_use: ClassVar[str] = "latency"  # its data_config is timed, as a latency metric's (honed.data.config.use_problem)

    def run(self, model: ModelHandle, config: OrtSessionParamsTuningConfig, output_dir: Path,
            ctx: PassContext) -> ModelHandle:
        ort = import_runtime("onnxruntime")

        from honed.models.loaders import trust_kwargs
        from honed.models.onnx_runtime import SETTINGS_FILE, physical_cores

        key = f"passes.{ctx.pass_name}"
        provider = ctx.target.execution_provider
        genai = model.kind == "genai"
        self._check(config, ctx, key, genai)
        if provider not in ort.get_available_providers():
            raise UserError(f"{key}: the target's execution provider {provider} is not available in this "
                            f"onnxruntime ({', '.join(ort.get_available_providers())}); tune on the target machine "
                            "or install the onnxruntime build that has it")
        cores = config.cpu_cores or physical_cores()
        candidates = candidate_settings(config, cores, genai)
        provider_options = {k: _config_value(v) for k, v in config.provider_options_list.items()}
        if config.trt_fp16_enable and provider == "TensorrtExecutionProvider":
            provider_options["trt_fp16_enable"] = "True"

        src = onnx_file(model)
        folder = Path(model.path) if Path(model.path).is_dir() else src.parent
        if genai:
            bench_g = GenaiBench(folder)
            ids, inputs = self._genai_ids(model, folder, config, ctx, key)

            def measure(settings: dict[str, Any] | None, runs: int) -> list[float]:
                return bench_g.measure(settings, ids, config.warmup_num, runs)

            raw = json.loads((folder / "genai_config.json").read_text())
            base_options = raw.get("model", {}).get("decoder", {}).get("session_options", {}) or {}
            defaults_shown: dict[str, Any] = {k: base_options[k] for k in
                                              ("intra_op_num_threads", "inter_op_num_threads") if k in base_options}
            level = base_options.get("graph_optimization_level")
            if isinstance(level, str) and level.lower() in _LEVELS:
                defaults_shown["graph_optimization_level"] = _LEVELS[level.lower()]
        else:
            bench_o = OnnxBench(src, provider)
            first = bench_o.session(None)
            defaults_settings = {k: v for k, v in first.settings.items()
                                 if k in ("execution_provider", "provider_options", "session_options")}
            defaults_shown = dict(first.settings.get("session_options") or {})
            feeds, inputs = onnx_feeds(first, model, folder, config, ctx, key)
            del first

            def measure(settings: dict[str, Any] | None, runs: int) -> list[float]:
                return bench_o.measure(settings, feeds, config.warmup_num, runs)

        settings_list: list[dict[str, Any] | None] = [None] + [
            {"execution_provider": [provider], "provider_options": [provider_options], "session_options": so}
            for so in candidates]
        rounds = 2 if config.repeat_test_num > 1 else 1
        bar = ctx.task(f"{ctx.pass_name}: timing session options", rounds * len(settings_list))
        try:
            runs = measure_all(lambda i, n: measure(settings_list[i], n), len(settings_list), config.warmup_num,
                               config.repeat_test_num, lambda: bar.advance(1))
        finally:
            bar.close()
        trials = [{"session_options": so, "defaults": i == 0, "latency_ms": statistics.median(r), "timed_runs": len(r)}
                  for i, (so, r) in enumerate(zip([defaults_shown, *candidates], runs, strict=True))]

        best = min(trials, key=lambda t: t["latency_ms"])
        defaults_ms = trials[0]["latency_ms"]
        if genai:
            self._write_genai(folder, output_dir, raw, None if best["defaults"] else best["session_options"])
            where = "genai_config.json model.decoder.session_options"
        else:
            chosen = ({"execution_provider": [provider], "provider_options": [provider_options],
                       "session_options": best["session_options"]} if not best["defaults"] else defaults_settings)
            self._write_onnx(model, src, output_dir, chosen, provider, best["latency_ms"], defaults_ms)
            where = SETTINGS_FILE
        ctx.metrics.update({
            "tuning_trials": trials,
            "best_session_options": best["session_options"],
            "best_is_defaults": best["defaults"],
            "best_latency_ms": best["latency_ms"],
            "defaults_latency_ms": defaults_ms,
            "gain_over_defaults": defaults_ms / best["latency_ms"] if best["latency_ms"] > 0 else 1.0,
            "execution_provider": provider,
            "tuning_inputs": inputs,
            "measurement": {"warmup_num": config.warmup_num, "repeat_test_num": config.repeat_test_num,
                            "statistic": "median", "unit": "ms", "cpu_cores": cores},
            "settings_written_to": where,
        })
        log.info("%s: best %s at %.3f ms (defaults %.3f ms, gain x%.3f)", ctx.pass_name,
                 best["session_options"] or "defaults", best["latency_ms"], defaults_ms,
                 ctx.metrics["gain_over_defaults"])
        return ModelHandle(kind=model.kind, path=str(output_dir), task=model.task, load_kwargs=trust_kwargs(model),
                           attributes=dict(model.attributes))

    # -- checks ----------------------------------------------------------------------------------------
    @staticmethod
    def _check(config: OrtSessionParamsTuningConfig, ctx: PassContext, key: str, genai: bool) -> None:
        """Errors for settings whose loss would change what is chosen; warnings for those honed ignores."""
        provider = ctx.target.execution_provider
        problems = []
        if config.device is not None and config.device != ctx.target.device:
            problems.append(ConfigProblem(
                f"{key}.device", f"'{config.device}' but the target system's device is '{ctx.target.device}'",
                "set the target system's accelerator device instead, or drop device"))
        others = [p for p in config.providers_list or [] if p != provider]
        if others and config.force_evaluate_other_eps:
            problems.append(ConfigProblem(
                f"{key}.force_evaluate_other_eps",
                f"honed tunes only the target's execution provider {provider}, not {', '.join(others)}",
                "run one workflow per execution provider (set each as the target's), or set it to false"))
        modes = config.execution_mode_list or []
        if genai and modes and "sequential" not in modes:
            problems.append(ConfigProblem(
                f"{key}.execution_mode_list", "onnxruntime-genai models run in sequential mode only",
                "add 'sequential' or drop execution_mode_list"))
        if genai and any(lv not in GENAI_LEVELS for lv in config.opt_level_list or []):
            problems.append(ConfigProblem(
                f"{key}.opt_level_list", "onnxruntime-genai's config has no level 3 (ORT_ENABLE_LAYOUT)",
                "use 0, 1, 2 or 99"))
        if problems:
            raise ConfigError(problems)

        def warn(k: str, why: str) -> None:
            log.warning("%s.%s: not applied (%s)", key, k, why)

        if others:
            warn("providers_list", f"only the target's execution provider {provider} is tuned; skipped "
                 f"{', '.join(others)} as Olive does without force_evaluate_other_eps")
        if config.io_bind:
            warn("io_bind", "honed's runtime runs sessions without IO binding, so latency is measured that way; "
                 "IO binding changes copy overhead, not outputs")
        if config.enable_cuda_graph:
            warn("enable_cuda_graph", "CUDA graphs need IO binding, which honed's runtime does not use"
                 if provider == "CUDAExecutionProvider" else f"only the CUDA provider has CUDA graphs ({provider})")
        if config.trt_fp16_enable and provider != "TensorrtExecutionProvider":
            warn("trt_fp16_enable", f"only the TensorRT provider reads it ({provider})")
        if config.enable_profiling:
            warn("enable_profiling", "honed times sessions without onnxruntime's profiler")
        for k in ("data_dir", "user_script", "script_dir"):
            if getattr(config, k) is not None:
                warn(k, "without dataloader_func it names no data; honed reads timing data through data_config")
        if genai and "parallel" in modes:
            warn("execution_mode_list", "onnxruntime-genai has no execution-mode option; 'parallel' is skipped")
        if config.inter_thread_num_list is not None and (genai or "parallel" not in (modes or ["parallel"])):
            warn("inter_thread_num_list", "inter-op threads are used in parallel execution mode only")
        if genai and (config.input_names or config.provider_options_list):
            warn("input_names" if config.input_names else "provider_options_list",
                 "a genai model is timed on token ids (batch_size x 16, or data_config rows) with the providers "
                 "its genai_config.json names")

    # -- inputs and outputs ----------------------------------------------------------------------------
    @staticmethod
    def _genai_ids(model: ModelHandle, folder: Path, config: OrtSessionParamsTuningConfig, ctx: PassContext,
                   key: str) -> tuple[Any, str]:
        import numpy as np

        try:
            import_runtime("onnxruntime_genai")
        except UserError as e:
            raise UserError(f"{key}: timing a genai model: {e}") from e
        if config.data_config is not None:
            ids = _data_token_rows(model, folder, config, ctx, key).astype(np.int32)
            what = f"data config '{config.data_config}'"
        else:
            rng = np.random.default_rng(0)
            ids = rng.integers(0, _vocab_size(folder, None), size=(config.batch_size, DEFAULT_SEQ_LEN),
                               dtype=np.int32)
            what = "generated token ids"
        return ids, f"{what}: input_ids {list(ids.shape)} + {GENAI_NEW_TOKENS} generated tokens"

    @staticmethod
    def _link_folder(folder: Path, output_dir: Path, skip: str) -> None:
        for f in sorted(folder.rglob("*")):
            rel = f.relative_to(folder)
            if f.is_file() and rel.as_posix() != skip:
                link_or_copy(f, output_dir / rel)

    def _write_onnx(self, model: ModelHandle, src: Path, output_dir: Path, chosen: dict[str, Any],
                    provider: str, best_ms: float, defaults_ms: float) -> None:
        from honed.models.onnx_runtime import SETTINGS_FILE

        if Path(model.path).is_dir():
            self._link_folder(Path(model.path), output_dir, SETTINGS_FILE)
        else:  # one .onnx file among others: it, its external data and the tokenizer files
            for f in model.files():
                link_or_copy(f, output_dir / f.name)
            copy_side_files(src.parent, output_dir)
        settings = {"model_file": src.name, "execution_provider": [provider], "provider_options": [{}],
                    "session_options": {}, **chosen, "io_bind": False, "tuned_by": self.name,
                    "latency_ms": round(best_ms, 4), "defaults_latency_ms": round(defaults_ms, 4)}
        (output_dir / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")

    def _write_genai(self, folder: Path, output_dir: Path, raw: dict[str, Any], best: dict[str, Any] | None) -> None:
        self._link_folder(folder, output_dir, "genai_config.json")
        if best is not None:
            decoder = raw.setdefault("model", {}).setdefault("decoder", {})
            options = decoder.get("session_options") or {}
            options.update(genai_options(best))
            decoder["session_options"] = options
        (output_dir / "genai_config.json").write_text(json.dumps(raw, indent=4) + "\n", encoding="utf-8")


register_pass(OrtSessionParamsTuning)
