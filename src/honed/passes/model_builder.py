"""ModelBuilder: an HF causal LM to an onnxruntime-genai folder, through the builder that
ships inside onnxruntime-genai (``onnxruntime_genai.models.builder``), called as a library.

The builder's command line is not used: its ``-h`` crashes on some versions, and a library
call lets us report an unsupported architecture as a one-line UserError.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.loaders import custom_code_errors, trust_kwargs, trusts_remote_code
from honed.passes._fidelity import fidelity_data_config_field, fidelity_samples_field, record_fidelity
from honed.passes._onnx_common import quiet_quantizer_logs
from honed.passes._sensitivity import SensitivityOptions
from honed.passes.base import Pass, PassContext, register_pass
from honed.util.offline import local_only

log = logging.getLogger("honed")

Precision = Literal["int4", "int8", "fp16", "bf16", "fp32"]
# The LM head (the largest, most output-sensitive MatMul) and llama.cpp's sensitive layers at 8 bits.
DEFAULT_MIXED_PRECISION = "last_matmul:int8,mixed_layers:int8"


class ModelBuilderConfig(SensitivityOptions):
    """Options of the onnxruntime-genai model builder (Olive's ModelBuilder names)."""

    precision: Precision = Field(
        "fp32", description="Weight precision: int4/int8 (MatMulNBits), fp16, bf16 (CUDA) or fp32."
    )
    execution_provider: Literal["cpu", "cuda", "dml", "webgpu", "NvTensorRtRtx"] | None = Field(
        None, description="Builder target (cpu, cuda, dml, webgpu, NvTensorRtRtx: the builder's choices); "
        "default: the workflow's target."
    )
    int4_block_size: Literal[16, 32, 64, 128, 256] = Field(
        32, description="Weights per quantization block for int4/int8."
    )
    int4_accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        None, description="MatMulNBits compute type: 1 fp32, 2 fp16, 3 bf16, 4 int8 (CPU default 4)."
    )
    int4_is_symmetric: StrictBool = Field(
        True, description="Symmetric (no zero point) int4/int8 weights. Left unset, a gptq build is asymmetric "
        "(a zero point per block: GPTQ's own default, what bench/fidelity.py measured)."
    )
    int4_algo_config: Literal["default", "rtn", "rtn_last", "k_quant", "k_quant_last", "k_quant_mixed", "gptq"] | None = (
        Field(None, description="Weight rounding method for int4/int8: the builder's ('default', 'rtn', 'k_quant*') "
              "or 'gptq' (int4: honed's GPTQ calibrated on calibration_data_config, with the measured int8 mix "
              "unless matmul_mixed_precision is 'none'; the builder keeps its codes: the same as a Gptq pass with "
              "mixed_precision 'measured' before ModelBuilder). Unset: 'rtn' with the fixed mix for a full model, "
              "'default' (plain RTN, Olive's choice) for an adapter input. bench/fidelity.py on the emotion "
              "demo's fine-tune: gptq has an eighth of the default's KL divergence but lost 3 rows of 181 where "
              "the default lost 2, and builds in minutes, not seconds.")
    )
    calibration_data_config: str | None = Field(
        None, description="With gptq: the data config whose rows calibrate GPTQ (and, unless "
        "sensitivity_data_config is set, measure the int8 mix); default: the workflow's first data config."
    )
    calibration_samples: int = Field(
        128, ge=1, le=4096, description="With gptq: calibration rows for GPTQ's Hessians (each up to the data "
        "config's max_seq_len)."
    )
    matmul_mixed_precision: str | None = Field(
        None, description="MatMul groups kept at another width: 'last_matmul:int8' (the LM head), "
        "'mixed_layers:int8' (llama.cpp's sensitive layers), comma-separated; 'none' for no exception. Unset "
        "with int4 and no int4_algo_config: both (the default: the fastest build of those measured below). 'measured' (int4, RTN): the LM head and the MatMuls whose "
        "int4 rounding moves the model most on sensitivity_data_config at int8, within mixed_precision_budget; "
        "the choice goes to sensitivity.json. bench/fidelity.py on the emotion demo's fine-tuned SmolLM2 (fp32: "
        "0.928 on 181 held-out rows): default 0.917, KL 0.52, 10 s; k_quant_mixed 0.912, KL 0.36, 49 s; "
        "measured 0.928, KL 0.31, 258 s (pick it for the accuracy); a Gptq pass first 0.912, KL 0.15, 81 s "
        "(pick it for the closest distribution); LoRA with quantization_aware trains against the int4 base and ships what it trained."
    )
    @model_validator(mode="after")
    def _measured_needs_rtn_int4(self) -> ModelBuilderConfig:
        if self.matmul_mixed_precision == "measured":
            if self.precision != "int4":
                raise ValueError("matmul_mixed_precision 'measured' needs precision int4")
            if self.int4_algo_config not in (None, "rtn", "gptq"):
                raise ValueError("matmul_mixed_precision 'measured' measures RTN rounding; set int4_algo_config "
                                 "to 'rtn' or 'gptq' or leave it unset")
        if self.int4_algo_config == "gptq":
            if self.precision != "int4":
                raise ValueError("int4_algo_config 'gptq' builds int4; set precision int4")
            if self.matmul_mixed_precision not in (None, "measured", "none"):
                raise ValueError("int4_algo_config 'gptq' keeps its measured int8 mix ('measured', the default) or "
                                 "none ('none'); remove the fixed matmul_mixed_precision")
        return self

    exclude_embeds: StrictBool = Field(False, description="Leave the embedding out; the model takes inputs_embeds.")
    exclude_lm_head: StrictBool = Field(False, description="Leave the LM head out; the model returns hidden states.")
    enable_cuda_graph: StrictBool | None = Field(None, description="Let the CUDA EP capture a CUDA graph.")
    extra_options: dict[str, str | int | float | bool | list[str]] = Field(
        default_factory=dict, description="Further onnxruntime-genai builder options (KEY: VALUE, e.g. "
        "int4_block_size, int4_accuracy_level, exclude_embeds, exclude_lm_head, filename), passed to the "
        "builder's extra_options and overriding the fields above; a key the installed builder does not list is "
        "an error. Olive's 'int4_'-prefixed spellings are read as the builder's names (int4_block_size -> "
        "block_size); lists (op_types_to_quantize, nodes_to_exclude) are joined as the builder's CLI does."
    )
    metadata_only: StrictBool = Field(
        False, description="Only write genai_config.json and the tokenizer beside an existing ONNX model (an "
        "input of kind onnx, e.g. from OnnxConversion) so onnxruntime-genai can run it; the graph is copied "
        "unchanged and genai_config's inputs/outputs are matched to it."
    )
    search: dict[str, str | int | float | bool] | None = Field(
        None, description="Generation defaults merged into genai_config.json's 'search' section (e.g. "
        "max_length, min_length, do_sample, top_k, top_p, temperature, num_beams); onnxruntime-genai reads them "
        "when the model loads."
    )
    enable_GQA_on_CPU: StrictBool | None = Field(  # Olive's spelling
        None, description="Olive's old switch for GroupQueryAttention on CPU. onnxruntime-genai 0.18 always "
        "uses GQA on CPU for fp32 I/O and has no such option: setting it only logs a warning."
    )
    check_outputs: StrictBool = Field(
        False, description="Compare the ONNX logits with the source model's on sample inputs; "
        "the max abs difference goes into the metrics."
    )
    check_tolerance: float | None = Field(
        None, gt=0, description="Fail when the max abs logit difference exceeds this (default: only record it)."
    )
    fidelity_data_config: str | None = fidelity_data_config_field()
    fidelity_samples: int = fidelity_samples_field()

    def uses_first_data_config(self) -> bool:
        measured = self.matmul_mixed_precision == "measured" and self.sensitivity_data_config is None
        calibrated = self.int4_algo_config == "gptq" and self.calibration_data_config is None
        quantized = self.precision in ("int4", "int8") and not self.metadata_only
        return measured or calibrated or (quantized and self.fidelity_samples > 0 and self.fidelity_data_config is None)

    @field_validator("extra_options")
    @classmethod
    def _known_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        return normalize_extra_options(v)

    @model_validator(mode="after")
    def _gqa_is_not_an_option(self) -> ModelBuilderConfig:
        if self.enable_GQA_on_CPU is not None:
            log.warning("ModelBuilder: enable_GQA_on_CPU: %s (onnxruntime-genai uses GroupQueryAttention on CPU "
                        "whenever the I/O is fp32 and has no option to change that)",
                        "no effect" if self.enable_GQA_on_CPU else "ignored; GQA stays on")
        return self

    @model_validator(mode="after")
    def _default_cannot_mix(self) -> ModelBuilderConfig:
        mixed = self.matmul_mixed_precision not in (None, "none")
        if mixed and self.int4_algo_config == "default":
            # onnxruntime-genai writes a graph that names a missing `*_Q8G32` weight for this pair.
            raise ValueError("matmul_mixed_precision needs int4_algo_config 'rtn' or 'k_quant'; the builder's "
                             "'default' method writes an invalid graph with it")
        return self


# How the builder's CLI joins list values of these options (Olive's LIST_OPTION_SEPARATORS).
_LIST_SEPARATORS = {"op_types_to_quantize": "/", "nodes_to_exclude": ","}
# Builder options honed sets from the pass config or the input model; in extra_options they would break the output.
_MANAGED_OPTIONS = {"config_only": "set metadata_only: true instead"}


@functools.lru_cache(maxsize=1)
def builder_option_names() -> frozenset[str] | None:
    """The extra_options keys the installed onnxruntime-genai builder documents (its ``--extra_options`` help),
    read from its source without importing it (that import pulls in torch and transformers); None when
    onnxruntime-genai is not installed or its help text no longer has that layout."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("onnxruntime_genai")
    if spec is None or spec.origin is None:
        return None
    try:
        text = (Path(spec.origin).parent / "models" / "builder.py").read_text(encoding="utf-8")
        block = text.split('"--extra_options"', 1)[1].split('"""', 2)[1]
    except (OSError, IndexError):
        return None
    keys = re.findall(r"^( +)([a-z][a-z0-9_]*) = ", block, re.MULTILINE)
    if not keys:
        return None
    indent = min(len(i) for i, _ in keys)  # option names; deeper lines list an option's values
    names = frozenset(k for i, k in keys if len(i) == indent)
    return names if len(names) >= 10 else None


def normalize_extra_options(options: dict[str, Any]) -> dict[str, Any]:
    """Builder extra_options as the builder reads them: Olive's ``int4_`` spellings renamed, lists joined;
    a key the installed builder does not document is a ValueError (the builder would ignore it silently)."""
    import difflib

    known = builder_option_names()
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = key
        if key.startswith("int4_") and (known is None or key[5:] in known):
            name = key[5:]
        if name in _MANAGED_OPTIONS:
            raise ValueError(f"'{key}': {_MANAGED_OPTIONS[name]}")
        if known is not None and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"the builder knows: {', '.join(sorted(known))}"
            raise ValueError(f"'{key}' is not an option of the installed onnxruntime-genai model builder; {hint}")
        if name in out:
            raise ValueError(f"'{key}' repeats '{name}'; give it once")
        if isinstance(value, list):
            if name not in _LIST_SEPARATORS:
                raise ValueError(f"'{key}' takes one value, not a list")
            value = _LIST_SEPARATORS[name].join(value)
        out[name] = value
    return out


def _builder() -> Any:
    """The builder module; it imports onnx_ir, which onnxruntime-genai does not declare."""
    from honed.util.runtime_flavour import import_runtime

    try:
        return import_runtime("onnxruntime_genai.models.builder")  # no genai: a UserError naming the extra
    except ModuleNotFoundError as e:
        dist = (e.name or "onnx_ir").replace("_", "-")
        raise UserError(f"ModelBuilder: the onnxruntime-genai builder needs {dist}, which is not installed; "
                        f"install it with: pip install {dist}") from e


def supported_architectures() -> list[str]:
    """Architectures (config.json 'architectures') the installed builder can export."""
    import inspect
    import re

    src = inspect.getsource(_builder().create_model)
    return sorted(set(re.findall(r'architectures\[0\] == "(\w+)"', src)))


def _architecture(folder: Path) -> str:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise UserError(f"ModelBuilder: {folder} has no config.json; give a Hugging Face model folder")
    archs = json.loads(cfg.read_text()).get("architectures") or []
    if not archs:
        raise UserError(f"ModelBuilder: {cfg} names no 'architectures'; set it (e.g. LlamaForCausalLM)")
    return archs[0]


def _staged_source(src: Path, work: Path) -> Path:
    """``src``, or a staging copy (unchanged files linked) that the builder reads correctly.

    - A Phi-3 config whose max_position_embeddings differs from original_max_position_embeddings sends the
      builder down its LongRoPE path even when the config has no LongRoPE factors (transformers then uses plain
      RoPE); aligning the two keeps the builder on plain RoPE.
    - An Olive-format quantized checkpoint (e.g. from Gptq) with fused projections gets them split
      (``honed.models.quantized.split_fused``: the builder mis-splits their zero points).
    """
    from honed.models.quantized import has_fused_projections, quantization_config, split_fused

    cfg = json.loads((src / "config.json").read_text())
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    fix_rope = (
        cfg.get("model_type") == "phi3"
        and cfg.get("original_max_position_embeddings") not in (None, cfg.get("max_position_embeddings"))
        and "long_factor" not in rope
    )
    split = None
    if quantization_config(src) is not None and has_fused_projections(src):  # read the weights only then
        from safetensors.torch import load_file

        tensors: dict[str, Any] = {}
        for f in sorted(src.glob("*.safetensors")):
            tensors.update(load_file(f))
        split = split_fused(tensors, cfg)
    if not fix_rope and split is None:
        return src
    stage = work / "source"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "config.json" and not (split is not None and f.suffix == ".safetensors"):
            (stage / f.name).symlink_to(f.resolve())
    if fix_rope:
        cfg["original_max_position_embeddings"] = cfg["max_position_embeddings"]
    if split is not None:
        from safetensors.torch import save_file

        save_file(split, str(stage / "model.safetensors"), metadata={"format": "pt"})
    (stage / "config.json").write_text(json.dumps(cfg, indent=2))
    return stage


def build_genai(
    src: Path, out: Path, precision: str, ep: str, cache_dir: Path, options: dict[str, Any],
    target_options: dict[str, Any] | None = None,
) -> None:
    """Run the builder on the local HF folder ``src`` into ``out``; its chatter goes to the debug log.
    ``target_options``: the builder's structured target policy (e.g. per-node weight overrides)."""
    builder = _builder()
    quiet_quantizer_logs()
    kv = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items()]
    buf = io.StringIO()
    # A local folder: the builder's transformers calls stay off the network.
    with local_only(), custom_code_errors(src), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        extra = builder.parse_extra_options("", str(src), str(out), precision, ep, str(cache_dir), kv,
                                            target_options=target_options)
        builder.create_model("", str(src), str(out), precision, ep, str(cache_dir), **extra)
    log.debug("model builder output:\n%s", buf.getvalue())
    from honed.util.monitor import release_memory

    release_memory()  # the builder's graph outlives the call in cycles: ~1x the bf16 bytes otherwise held on


class ModelBuilder(Pass):
    name = "ModelBuilder"
    description = "Convert an HF causal LM to an onnxruntime-genai folder (int4/int8/fp16/fp32)."
    config_class = ModelBuilderConfig
    requires = ("onnxruntime_genai", "onnx_ir")
    libraries = ("onnxruntime-genai", "onnx-ir", "onnxruntime", "onnx", "transformers", "torch")
    accepts: ClassVar[tuple[str, ...]] = ("hf", "peft", "onnx")
    produces: ClassVar[tuple[str, ...]] = ("genai",)
    search_space: ClassVar[dict[str, list[Any]]] = {
        "precision": ["int4", "int8", "fp32"], "int4_block_size": [32, 64, 128],
    }

    @classmethod
    def accepted_kinds(cls, config: Any) -> tuple[str, ...]:
        """metadata_only describes an existing ONNX model; a build starts from a Hugging Face model (or PEFT
        adapter): an ONNX model handed to a build is refused before the run, never silently described."""
        return ("onnx",) if config.metadata_only else ("hf", "peft")

    def run(self, model: ModelHandle, config: ModelBuilderConfig, output_dir: Path, ctx: PassContext) -> ModelHandle:
        if config.metadata_only or model.kind == "onnx":  # write_metadata names a mismatch in one line
            return write_metadata(model, config, output_dir, ctx)
        from honed.models.quantized import quantization_config

        src = Path(model.path)
        options: dict[str, Any] = {}
        unmerged: Path | None = None  # a quantization-aware adapter, added beside its base's codes after the build
        if model.kind == "peft":
            if model.base is None or not Path(model.base.path).is_dir():
                raise UserError(f"ModelBuilder: adapter {model.path} needs a local base model folder")
            if quantization_config(model.base.path) is not None:
                unmerged = src
            else:
                options["adapter_path"] = str(src)
            src = Path(model.base.path)
        if not src.is_dir():
            raise UserError(f"ModelBuilder: {src} is not a local model folder")
        rtn = preflight_streamed_rtn(model, src, config, ctx)  # UserError before the builder loads it
        arch = _architecture(src)
        supported = supported_architectures()
        if arch not in supported:
            raise UserError(
                f"ModelBuilder cannot export '{arch}' (from {src / 'config.json'}); it supports "
                f"{', '.join(supported)}; use the OnnxConversion pass for other models"
            )
        ep = config.execution_provider or ctx.target.ep_short
        qc = quantization_config(src)
        if qc is not None and config.precision not in ("int4", "int8"):
            raise UserError(f"ModelBuilder: {src} is already quantized to int{qc.get('bits')} "
                            f"({qc.get('algorithm', 'Olive format')}); set precision: int4 (its codes are kept as "
                            "they are)")
        target_options: dict[str, Any] | None = None
        source = model  # what the output is checked and compared against: the float input, even after GPTQ
        if config.precision in ("int4", "int8"):
            # The builder reads the unprefixed names; its `int4_*` spellings are silently ignored.
            options["block_size"] = config.int4_block_size
            options["is_symmetric"] = config.int4_is_symmetric
            algo, mixed = config.int4_algo_config, config.matmul_mixed_precision
            if qc is None and _calibrates(config, model, ctx):
                model = calibrate(model, config, ctx, output_dir / "model")
                src, algo = Path(model.path), None
                mixed = "none" if config.matmul_mixed_precision == "none" else "last_matmul:int8"
            elif algo == "gptq":
                why = ("is already quantized (drop int4_algo_config: its codes are kept)" if qc is not None
                       else "is an adapter (merge it first, or set int4_algo_config to 'rtn')" if model.kind == "peft"
                       else "has no data config to calibrate on (define one, or set int4_algo_config to 'rtn')")
                raise UserError(f"ModelBuilder: int4_algo_config 'gptq' needs a float Hugging Face model and a data "
                                f"config; {model.path} {why}")
            if algo is None and model.kind != "peft":
                algo, mixed = "rtn", mixed or DEFAULT_MIXED_PRECISION
            if mixed == "measured":  # per-node int8 overrides from measured sensitivity (passes/_sensitivity.py)
                from honed.passes._sensitivity import measured_target_options

                algo, mixed = "rtn", None
                target_options = measured_target_options(model, config, ep, output_dir / "model", ctx)
            if algo not in (None, "default"):
                options["algo_config"] = algo
            if mixed not in (None, "none"):
                options["matmul_mixed_precision"] = mixed
            if config.int4_accuracy_level is not None:
                options["accuracy_level"] = config.int4_accuracy_level
        if config.exclude_embeds:
            options["exclude_embeds"] = True
        if config.exclude_lm_head:
            options["exclude_lm_head"] = True
        if config.enable_cuda_graph is not None:
            options["enable_cuda_graph"] = config.enable_cuda_graph
        if trusts_remote_code(model):
            options["hf_remote"] = True
        options.update(config.extra_options)

        out = output_dir / "model"
        cache = ctx.work_dir / "builder_cache"
        try:
            build_int4_or_float(src, out, config.precision, ep, cache, options, target_options, ctx, rtn)
        except NotImplementedError as e:  # the builder's "not currently supported"
            raise UserError(f"ModelBuilder: {e}; use the OnnxConversion pass for this model") from e
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        if not (out / "genai_config.json").is_file():
            raise RuntimeError(f"the model builder wrote no genai_config.json into {out}")
        if unmerged is not None:
            from honed.passes._lora_graph import add_adapter
            from honed.passes._onnx_common import genai_decoder

            decoder = genai_decoder(out)
            if decoder is None:
                raise RuntimeError(f"the model builder wrote no decoder model into {out}")
            ctx.metrics["adapter_branches"] = add_adapter(decoder, unmerged, json.loads((src / "config.json").read_text()))
        merge_search(out / "genai_config.json", config.search)
        # The builder copies the tokenizer; chat templates and generation config ride along too.
        from honed.passes._onnx_common import copy_side_files

        copy_side_files(src, out, ("chat_template.jinja", "generation_config.json"))
        handle = ModelHandle(
            kind="genai", path=str(out), task="text-generation", load_kwargs=trust_kwargs(model),
            attributes={**model.attributes, "precision": config.precision, "execution_provider": ep},
        )
        if model.kind == "peft" and unmerged is None:
            # The recipe ExtractAdapters replays to lay out further adapters exactly like this one.
            handle.attributes["model_builder"] = {
                "source": str(src), "precision": config.precision, "execution_provider": ep,
                "options": {k: v for k, v in options.items() if k != "adapter_path"},
            }
        size = sum(f.stat().st_size for f in out.glob("*.onnx*"))  # extra_options may rename model.onnx
        ctx.metrics["onnx_size_mb"] = round(size / 2**20, 3)
        if config.check_outputs:
            from honed.passes._onnx_common import check_against_source

            check_against_source(source, handle, ctx, config.check_tolerance)
        record_fidelity(source, handle, config, ctx, quantized=config.precision in ("int4", "int8"))
        return handle


def _calibrates(config: ModelBuilderConfig, model: ModelHandle, ctx: PassContext) -> bool:
    """Whether this int4 build runs GPTQ first (int4_algo_config 'gptq' on a float Hugging Face model with a data
    config to calibrate on; the caller names what is missing otherwise)."""
    return (config.precision == "int4" and config.int4_algo_config == "gptq" and model.kind == "hf"
            and bool(config.calibration_data_config or ctx.data_configs))


def calibrate(model: ModelHandle, config: ModelBuilderConfig, ctx: PassContext, out: Path) -> ModelHandle:
    """The GPTQ checkpoint (passes/gptq.py) this int4 build keeps the codes of: calibrated on
    calibration_data_config (default: the workflow's first), block size and the sensitivity fields as configured,
    asymmetric unless int4_is_symmetric is set, written under the pass's work dir; sensitivity.json is copied into
    ``out`` (the genai folder). Raises UserError for an undefined data config."""
    from honed.passes.gptq import Gptq, GptqConfig

    name = config.calibration_data_config or next(iter(ctx.data_configs))
    ctx.data_config(name, "calibration_data_config", "ModelBuilder")
    sym = config.int4_is_symmetric if "int4_is_symmetric" in config.model_fields_set else False
    mixed = "none" if config.matmul_mixed_precision == "none" else "measured"
    log.info("ModelBuilder: int4 with GPTQ calibrated on data config '%s' (%d rows)%s; int4_algo_config 'rtn' "
             "builds in seconds instead", name, config.calibration_samples,
             " and the measured int8 mix" if mixed == "measured" else "")
    gptq = GptqConfig(data_config=name, group_size=config.int4_block_size, sym=sym,
                      num_samples=config.calibration_samples, mixed_precision=mixed,
                      mixed_precision_budget=config.mixed_precision_budget,
                      sensitivity_data_config=config.sensitivity_data_config or config.calibration_data_config,
                      sensitivity_method=config.sensitivity_method, sensitivity_samples=config.sensitivity_samples,
                      sensitivity_positions=config.sensitivity_positions, fidelity_samples=0)
    folder = ctx.work_dir / "gptq"
    handle = Gptq().run(model, gptq, folder, ctx)
    if (folder / "sensitivity.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / "sensitivity.json", out / "sensitivity.json")
    return handle


def merge_search(genai_config: Path, search: dict[str, Any] | None) -> None:
    """Olive's ``search``: the user's generation defaults over the builder's in genai_config.json."""
    if not search:
        return
    cfg = json.loads(genai_config.read_text())
    cfg["search"] = {**(cfg.get("search") or {}), **search}
    genai_config.write_text(json.dumps(cfg, indent=4))


def _external_files(onnx_path: Path) -> list[str]:
    """The external-data files an ONNX file names (its weights beside it)."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    found = set()
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            found |= {e.value for e in t.external_data if e.key == "location"}
    return sorted(found)


def match_genai_io(genai_config: Path, onnx_path: Path) -> None:
    """Make genai_config.json's decoder inputs/outputs name what the graph has.

    The builder writes them for the graph it would build (on CPU: no position_ids, rotary embedding inside
    GroupQueryAttention); an exported graph may differ. Standard names the graph has are added, names it
    lacks are dropped; a graph input genai would not feed is a UserError."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    g_in, g_out = {v.name for v in graph.input}, {v.name for v in graph.output}
    cfg = json.loads(genai_config.read_text())
    dec = cfg["model"]["decoder"]
    layers = int(dec.get("num_hidden_layers", 0))
    for section, names, standard in (("inputs", g_in, ("input_ids", "inputs_embeds", "attention_mask",
                                                        "position_ids")),
                                     ("outputs", g_out, ("logits", "hidden_states"))):
        entries: dict[str, str] = dec.setdefault(section, {})
        for key in standard:
            if key in names:
                entries[key] = key
        for key, value in list(entries.items()):
            present = (value % 0 in names) if "%d" in value else value in names
            if not present:
                del entries[key]
        covered = {v % i if "%d" in v else v for v in entries.values() for i in range(max(layers, 1))}
        missing = sorted(names - covered)
        if missing:
            raise UserError(
                f"ModelBuilder (metadata_only): {onnx_path.name} has {section} onnxruntime-genai would not "
                f"{'feed' if section == 'inputs' else 'read'}: {', '.join(missing[:5])}; export with "
                "OnnxConversion (use_past: true) or build with ModelBuilder from the HF model"
            )
    genai_config.write_text(json.dumps(cfg, indent=4))


def write_metadata(model: ModelHandle, config: ModelBuilderConfig, output_dir: Path, ctx: PassContext) -> ModelHandle:
    """Olive's ``metadata_only``: the builder's genai_config.json and tokenizer files (``config_only``) beside
    a copy of an existing ONNX causal LM, whose folder must hold the HF config.json (OnnxConversion's does)."""
    from honed.passes._onnx_common import copy_side_files, onnx_file

    if model.kind != "onnx":
        raise UserError(f"ModelBuilder: metadata_only takes an ONNX model, not a {model.kind} model; put it after "
                        "OnnxConversion or drop metadata_only to build from the HF model")
    if not config.metadata_only:
        raise UserError("ModelBuilder: the input is an ONNX model; set metadata_only: true to write only "
                        "genai_config.json and the tokenizer for it, or give the HF model to build from")
    src = onnx_file(model)
    folder = src.parent
    if not (folder / "config.json").is_file():
        raise UserError(f"ModelBuilder (metadata_only): {folder} has no config.json; the builder reads the model's "
                        "HF config from beside the ONNX file (OnnxConversion puts it there)")
    arch = _architecture(folder)
    if not arch.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
        raise UserError(f"ModelBuilder (metadata_only): {folder / 'config.json'} names '{arch}', not a causal LM; "
                        "onnxruntime-genai runs text generation models only")
    out = output_dir / "model"
    out.mkdir(parents=True, exist_ok=True)
    for name in (src.name, *_external_files(src)):
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise UserError(f"ModelBuilder (metadata_only): {src} names external data '{name}' outside its folder")
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / name, out / name)
    ep = config.execution_provider or ctx.target.ep_short
    options: dict[str, Any] = {**config.extra_options, "config_only": True, "filename": src.name}
    if trusts_remote_code(model):
        options["hf_remote"] = True
    cache = ctx.work_dir / "builder_cache"
    try:
        build_genai(folder, out, config.precision, ep, cache, options)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if not (out / "genai_config.json").is_file():
        raise RuntimeError(f"the model builder wrote no genai_config.json into {out}")
    match_genai_io(out / "genai_config.json", out / src.name)
    merge_search(out / "genai_config.json", config.search)
    copy_side_files(folder, out)
    ctx.metrics["onnx_size_mb"] = round(sum(f.stat().st_size for f in out.glob("*.onnx*")) / 2**20, 3)
    return ModelHandle(kind="genai", path=str(out), task="text-generation", load_kwargs=trust_kwargs(model),
                       attributes={**model.attributes, "execution_provider": ep, "metadata_only": True})


# ------------------------------------------------------------------ int4 codes rounded by honed, streamed (models/rtn.py)


def streamed_rtn(model: ModelHandle, src: Path, config: ModelBuilderConfig, ctx: PassContext) -> Any:
    """The plan (``honed.models.rtn.RtnPlan``) for rounding this int4 build's decoder weights in honed, streamed,
    into the codes the builder's own RTN would write; or a string saying why the builder rounds the float weights
    itself: only a float Hugging Face model built for cpu with the builder's RTN (``int4_algo_config`` unset or
    'rtn'), a fixed ``matmul_mixed_precision`` of ``last_matmul`` (left to the builder: the LM head) and
    ``mixed_layers`` (8-bit modules in the checkpoint) and no ``extra_options`` (which could change what is
    rounded) is streamed; ``honed.models.rtn.rtn_plan`` then checks the weights.  An untied LM head is rounded there
    too, at ``last_matmul``'s width (4 bits without it, as the builder's RTN rounds it)."""
    from honed.models.rtn import rtn_plan

    if config.precision != "int4" or model.kind != "hf":
        return f"a {config.precision} build of a {model.kind} model"
    algo = config.int4_algo_config
    if algo not in (None, "rtn"):
        return f"int4_algo_config is '{algo}'"
    mixed = config.matmul_mixed_precision or (DEFAULT_MIXED_PRECISION if algo is None else "none")
    entries = dict(e.split(":", 1) if ":" in e else (e, "") for e in mixed.split(",")) if mixed != "none" else {}
    if any(k not in ("last_matmul", "mixed_layers") or v not in ("int4", "int8") for k, v in entries.items()):
        return f"matmul_mixed_precision is '{mixed}'"
    if config.extra_options:
        return f"extra_options sets {', '.join(sorted(config.extra_options))}"
    ep = config.execution_provider or ctx.target.ep_short
    if ep != "cpu":
        return f"the build is for {ep}"
    if trusts_remote_code(model):
        return "the model has remote code"
    bits = int(entries["mixed_layers"][3:]) if "mixed_layers" in entries else None
    head = None if config.exclude_lm_head else int(entries.get("last_matmul", "int4")[3:])
    return rtn_plan(src, block_size=config.int4_block_size, symmetric=config.int4_is_symmetric,
                    mixed_layers_bits=bits, head_bits=head)


def preflight_streamed_rtn(model: ModelHandle, src: Path, config: ModelBuilderConfig, ctx: PassContext) -> Any:
    """``streamed_rtn``'s plan, or None when the builder rounds the float weights (the reason at debug level), after
    the memory check for that path (``honed.models.memory.preflight_build``). Raises UserError when it does not
    fit."""
    from honed.models.memory import preflight_build

    plan = streamed_rtn(model, src, config, ctx)
    what = f"ModelBuilder ({ctx.pass_name}) on {src}"
    if isinstance(plan, str):
        log.debug("ModelBuilder: the builder rounds the float weights (%s)", plan)
        preflight_build(src, what, why_not_streamed=plan if config.precision == "int4" else "",
                        block_size=config.int4_block_size)
        return None
    preflight_build(src, what, checkpoint_bytes=plan.checkpoint_bytes())
    return plan


def build_int4_or_float(src: Path, out: Path, precision: str, ep: str, cache: Path, options: dict[str, Any],
                        target_options: dict[str, Any] | None, ctx: PassContext, plan: Any) -> None:
    """``build_genai`` of ``src``; with a ``streamed_rtn`` plan, of the RTN checkpoint it writes first (under the
    work dir, removed after): ``matmul_mixed_precision`` keeps only ``last_matmul``, for a tied LM head the builder
    still rounds, and a symmetric build's default zero points are dropped from the graph, so the folder is the one
    the builder's own RTN writes from ``src`` (tests/test_rtn_stream.py)."""
    if plan is None:
        build_genai(_staged_source(src, ctx.work_dir), out, precision, ep, cache, options, target_options)
        return
    from honed.models.rtn import drop_default_zero_points, write_rtn_checkpoint

    codes = ctx.work_dir / "rtn"
    shutil.rmtree(codes, ignore_errors=True)  # this pass's own scratch, left by an interrupted run
    log.info("ModelBuilder: rounding the decoder weights to int4 in honed, streamed (onnxruntime's RTN)")
    try:
        ctx.metrics["int4_codes_mb"] = round(write_rtn_checkpoint(plan, codes) / 2**20, 1)
        opts = dict(options)
        head = [e for e in str(opts.pop("matmul_mixed_precision", "")).split(",") if e.startswith("last_matmul")]
        if head and not any(p.module == "lm_head" for p in plan.parts):
            opts["matmul_mixed_precision"] = ",".join(head)
        build_genai(_staged_source(codes, ctx.work_dir), out, precision, ep, cache, opts, target_options)
    finally:
        shutil.rmtree(codes, ignore_errors=True)
    if plan.symmetric:
        drop_default_zero_points(out / "model.onnx")


register_pass(ModelBuilder)
