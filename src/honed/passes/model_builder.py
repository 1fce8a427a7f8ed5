"""ModelBuilder: an HF causal LM to an onnxruntime-genai folder, through the builder that
ships inside onnxruntime-genai (``onnxruntime_genai.models.builder``), called as a library.

The builder's command line is not used: its ``-h`` crashes on some versions, and a library
call lets us report an unsupported architecture as a one-line UserError.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, StrictBool, model_validator

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.loaders import custom_code_errors, trust_kwargs, trusts_remote_code
from honed.passes._onnx_common import quiet_quantizer_logs
from honed.passes.base import Pass, PassConfig, PassContext, register_pass
from honed.util.offline import local_only

log = logging.getLogger("honed")

Precision = Literal["int4", "int8", "fp16", "bf16", "fp32"]
# The LM head (the largest, most output-sensitive MatMul) and llama.cpp's sensitive layers at 8 bits.
DEFAULT_MIXED_PRECISION = "last_matmul:int8,mixed_layers:int8"


class ModelBuilderConfig(PassConfig):
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
    int4_is_symmetric: StrictBool = Field(True, description="Symmetric (no zero point) int4/int8 weights.")
    int4_algo_config: Literal["default", "rtn", "rtn_last", "k_quant", "k_quant_last", "k_quant_mixed"] | None = Field(
        None, description="Weight rounding method for int4/int8. Unset: 'rtn' for a full model (with the "
        "default matmul_mixed_precision), 'default' (plain RTN, Olive's choice) for an adapter input."
    )
    matmul_mixed_precision: str | None = Field(
        None, description="MatMul groups kept at another width: 'last_matmul:int8' (the LM head), "
        "'mixed_layers:int8' (llama.cpp's sensitive layers), comma-separated; 'none' for no exception. Unset "
        "with int4 and no int4_algo_config: both. On two fine-tuned SmolLM2s (181 held-out rows) that scored "
        "0.912 and 0.906 against fp32's 0.928, plain RTN 0.840, k_quant_mixed 0.912 and 0.923 in a build 3x "
        "longer (31 s vs 9 s): choose k_quant_mixed when the last point matters more than build time."
    )
    exclude_embeds: StrictBool = Field(False, description="Leave the embedding out; the model takes inputs_embeds.")
    exclude_lm_head: StrictBool = Field(False, description="Leave the LM head out; the model returns hidden states.")
    enable_cuda_graph: StrictBool | None = Field(None, description="Let the CUDA EP capture a CUDA graph.")
    extra_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Further builder options (KEY: VALUE), passed through unchanged."
    )
    check_outputs: StrictBool = Field(
        False, description="Compare the ONNX logits with the source model's on sample inputs; "
        "the max abs difference goes into the metrics."
    )
    check_tolerance: float | None = Field(
        None, gt=0, description="Fail when the max abs logit difference exceeds this (default: only record it)."
    )

    @model_validator(mode="after")
    def _default_cannot_mix(self) -> ModelBuilderConfig:
        mixed = self.matmul_mixed_precision not in (None, "none")
        if mixed and self.int4_algo_config == "default":
            # onnxruntime-genai writes a graph that names a missing `*_Q8G32` weight for this pair.
            raise ValueError("matmul_mixed_precision needs int4_algo_config 'rtn' or 'k_quant'; the builder's "
                             "'default' method writes an invalid graph with it")
        return self


def _builder() -> Any:
    """The builder module; it imports onnx_ir, which onnxruntime-genai does not declare."""
    try:
        return importlib.import_module("onnxruntime_genai.models.builder")
    except ModuleNotFoundError as e:
        raise UserError(
            f"ModelBuilder needs onnxruntime-genai and onnx-ir ({e.name} is missing); "
            "install them with: pip install onnxruntime-genai onnx-ir"
        ) from e


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
    """``src``, or a staging copy (weights linked) with a config the builder reads correctly.

    A Phi-3 config whose max_position_embeddings differs from original_max_position_embeddings
    sends the builder down its LongRoPE path even when the config has no LongRoPE factors
    (transformers then uses plain RoPE); aligning the two keeps the builder on plain RoPE.
    """
    cfg = json.loads((src / "config.json").read_text())
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if not (
        cfg.get("model_type") == "phi3"
        and cfg.get("original_max_position_embeddings") not in (None, cfg.get("max_position_embeddings"))
        and "long_factor" not in rope
    ):
        return src
    stage = work / "source"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "config.json":
            (stage / f.name).symlink_to(f.resolve())
    cfg["original_max_position_embeddings"] = cfg["max_position_embeddings"]
    (stage / "config.json").write_text(json.dumps(cfg, indent=2))
    return stage


def build_genai(
    src: Path, out: Path, precision: str, ep: str, cache_dir: Path, options: dict[str, Any]
) -> None:
    """Run the builder on the local HF folder ``src`` into ``out``; its chatter goes to the debug log."""
    builder = _builder()
    quiet_quantizer_logs()
    kv = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items()]
    buf = io.StringIO()
    # A local folder: the builder's transformers calls stay off the network.
    with local_only(), custom_code_errors(src), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        extra = builder.parse_extra_options("", str(src), str(out), precision, ep, str(cache_dir), kv)
        builder.create_model("", str(src), str(out), precision, ep, str(cache_dir), **extra)
    log.debug("model builder output:\n%s", buf.getvalue())


class ModelBuilder(Pass):
    name = "ModelBuilder"
    description = "Convert an HF causal LM to an onnxruntime-genai folder (int4/int8/fp16/fp32)."
    config_class = ModelBuilderConfig
    requires = ("onnxruntime_genai", "onnx_ir")
    libraries = ("onnxruntime-genai", "onnx-ir", "onnxruntime", "onnx", "transformers", "torch")
    accepts: ClassVar[tuple[str, ...]] = ("hf", "peft")
    produces: ClassVar[tuple[str, ...]] = ("genai",)
    search_space: ClassVar[dict[str, list[Any]]] = {
        "precision": ["int4", "int8", "fp32"], "int4_block_size": [32, 64, 128],
    }

    def run(self, model: ModelHandle, config: ModelBuilderConfig, output_dir: Path, ctx: PassContext) -> ModelHandle:
        src = Path(model.path)
        options: dict[str, Any] = {}
        if model.kind == "peft":
            if model.base is None or not Path(model.base.path).is_dir():
                raise UserError(f"ModelBuilder: adapter {model.path} needs a local base model folder")
            options["adapter_path"] = str(src)
            src = Path(model.base.path)
        if not src.is_dir():
            raise UserError(f"ModelBuilder: {src} is not a local model folder")
        arch = _architecture(src)
        supported = supported_architectures()
        if arch not in supported:
            raise UserError(
                f"ModelBuilder cannot export '{arch}' (from {src / 'config.json'}); it supports "
                f"{', '.join(supported)}; use the OnnxConversion pass for other models"
            )
        ep = config.execution_provider or ctx.target.ep_short
        if config.precision in ("int4", "int8"):
            # The builder reads the unprefixed names; its `int4_*` spellings are silently ignored.
            options["block_size"] = config.int4_block_size
            options["is_symmetric"] = config.int4_is_symmetric
            algo, mixed = config.int4_algo_config, config.matmul_mixed_precision
            if algo is None and model.kind != "peft":
                algo, mixed = "rtn", mixed or DEFAULT_MIXED_PRECISION
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
            build_genai(_staged_source(src, ctx.work_dir), out, config.precision, ep, cache, options)
        except NotImplementedError as e:  # the builder's "not currently supported"
            raise UserError(f"ModelBuilder: {e}; use the OnnxConversion pass for this model") from e
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        if not (out / "genai_config.json").is_file():
            raise RuntimeError(f"the model builder wrote no genai_config.json into {out}")
        # The builder copies the tokenizer; chat templates and generation config ride along too.
        from honed.passes._onnx_common import copy_side_files

        copy_side_files(src, out, ("chat_template.jinja", "generation_config.json"))
        handle = ModelHandle(
            kind="genai", path=str(out), task="text-generation", load_kwargs=trust_kwargs(model),
            attributes={**model.attributes, "precision": config.precision, "execution_provider": ep},
        )
        size = sum(f.stat().st_size for f in out.glob("model.onnx*"))
        ctx.metrics["onnx_size_mb"] = round(size / 2**20, 3)
        if config.check_outputs:
            from honed.passes._onnx_common import check_against_source

            check_against_source(model, handle, ctx, config.check_tolerance)
        return handle


register_pass(ModelBuilder)
