"""OnnxConversion: ``torch.onnx.export`` (dynamo for opset >= 18, TorchScript below) for models the genai
builder does not cover: encoders, sequence classifiers, and causal LMs with past key/values as explicit
inputs (``past_key_values.N.key``) and outputs (``present.N.key``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, StrictBool, model_validator

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.loaders import trust_kwargs
from honed.passes._onnx_common import (
    OnnxSaveConfig,
    check_against_source,
    copy_side_files,
    save_onnx,
)
from honed.passes.base import Pass, PassContext, register_pass
from honed.passes.lora import DTypeName

log = logging.getLogger("honed")

_CAUSAL = "text-generation"
_CLASSIFY = "text-classification"
_FEATURES = "feature-extraction"
# torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET in torch 2.x
TORCHSCRIPT_MAX_OPSET = 20


class OnnxConversionConfig(OnnxSaveConfig):
    """Export options (Olive's names)."""

    target_opset: int = Field(
        20, ge=7, le=23, description="ONNX (ai.onnx) opset to export to. Below 18 the TorchScript exporter writes "
        "it (torch's dynamo exporter emits opset 18 at least); the opset actually written is checked and recorded "
        "in the metrics ('opset')."
    )
    use_dynamo_exporter: StrictBool | None = Field(
        None, description="Use the torch.export-based exporter (true) or the TorchScript exporter with eager "
        "attention (false), whose graph OrtTransformersOptimization fuses into Attention ops. Default: dynamo for "
        "target_opset >= 18, TorchScript below."
    )
    torch_dtype: DTypeName | None = Field(
        None, description="Cast the model first (float32, float16, bfloat16).")
    use_past: StrictBool | None = Field(
        None, description="Causal LMs: past key/values as inputs and outputs (default true for text-generation)."
    )
    save_metadata_for_token_generation: StrictBool = Field(
        False, description="Olive's switch for writing config.json, generation_config.json and the tokenizer "
        "files beside the model; honed always writes them (ModelBuilder metadata_only reads them), so either "
        "value gives the same folder."
    )
    check_outputs: StrictBool = Field(
        True, description="Compare the ONNX outputs with PyTorch's on sample inputs and record the max difference."
    )
    check_tolerance: float | None = Field(
        None, gt=0, description="Fail when the max abs difference exceeds this times max(1, max |output|) "
        "(default 1e-4 for fp32; other dtypes only record it)."
    )

    @model_validator(mode="after")
    def _exporter_reaches_opset(self) -> OnnxConversionConfig:
        if self.use_dynamo_exporter is False and self.target_opset > TORCHSCRIPT_MAX_OPSET:
            raise ValueError(f"the TorchScript exporter (use_dynamo_exporter: false) writes opsets up to "
                             f"{TORCHSCRIPT_MAX_OPSET}; lower target_opset or set use_dynamo_exporter: true")
        return self

    @property
    def dynamo(self) -> bool:
        """Whether the dynamo exporter runs: as set, else for opsets it writes natively (18 and later)."""
        return self.use_dynamo_exporter if self.use_dynamo_exporter is not None else self.target_opset >= 18


def infer_task(handle: ModelHandle, folder: Path) -> str:
    """What to export: text-generation, text-classification or feature-extraction.

    The handle's task wins unless it is the default (text-generation) while config.json names
    no causal LM (a BERT folder given without a task)."""
    archs: list[str] = []
    cfg = folder / "config.json"
    if cfg.is_file():
        archs = json.loads(cfg.read_text()).get("architectures") or []
    arch = archs[0] if archs else ""
    if handle.task in (_CLASSIFY, "sequence-classification"):
        return _CLASSIFY
    if handle.task in (_FEATURES, "sentence-similarity"):
        return _FEATURES
    if handle.task == _CAUSAL and arch and not arch.endswith(("ForCausalLM", "LMHeadModel")):
        return _CLASSIFY if arch.endswith("ForSequenceClassification") else _FEATURES
    return handle.task


def _layer_shapes(cfg: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head size) of a decoder config."""
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = text.num_attention_heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers, kv, head_dim


def _cache_kwarg(model: Any) -> str:
    """transformers 5.2x calls the cache argument ``cache``; earlier ones ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _causal_wrapper(model: Any, use_past: bool) -> Any:
    """A module whose flat inputs/outputs name the past key/values explicitly."""
    import torch
    from transformers import DynamicCache

    n_layers, _, _ = _layer_shapes(model.config)
    cache_kw = _cache_kwarg(model)

    class CausalLMWithPast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, past: Any = None) -> Any:
            if not use_past:
                out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids, use_cache=False)
                return out.logits
            cache = DynamicCache(
                ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(n_layers)], config=self.model.config
            )
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=True, **{cache_kw: cache})
            presents: list[Any] = []
            for layer in cache.layers:
                presents += [layer.keys, layer.values]
            return (out.logits, *presents)

    return CausalLMWithPast().eval()


def _encoder_wrapper(model: Any, task: str, with_token_types: bool) -> Any:
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"token_type_ids": token_type_ids} if with_token_types else {}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            return out.logits if task == _CLASSIFY else out.last_hidden_state

    return Encoder().eval()


def export_causal_lm(model: Any, out_file: Path, opset: int, use_past: bool, dynamo: bool, external: bool) -> None:
    """Export a causal LM: input_ids, attention_mask, position_ids, past_key_values.N.key/value ->
    logits, present.N.key/value, with dynamic batch and (past) sequence axes."""
    import torch

    n_layers, kv, head_dim = _layer_shapes(model.config)
    b, s, p = 2, 3, 4
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(3, vocab, (b, s))
    pos = torch.arange(p, p + s).expand(b, s).contiguous()
    dtype = next(model.parameters()).dtype
    batch, seq = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    names = ["input_ids", "attention_mask", "position_ids"]
    outputs = ["logits"]
    if use_past:
        past_len, total = torch.export.Dim("past_sequence_length"), torch.export.Dim("total_sequence_length")
        mask = torch.ones(b, p + s, dtype=torch.int64)
        past = [torch.randn(b, kv, p, head_dim, dtype=dtype) for _ in range(2 * n_layers)]
        args: tuple[Any, ...] = (ids, mask, pos, past)
        shapes: Any = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
                       [{0: batch, 2: past_len}] * (2 * n_layers))
        kinds = [f"{i}.{t}" for i in range(n_layers) for t in ("key", "value")]
        names += [f"past_key_values.{k}" for k in kinds]
        outputs += [f"present.{k}" for k in kinds]
        out_axes = {"logits": {0: "batch_size", 1: "sequence_length"},
                    **{n: {0: "batch_size", 2: "total_sequence_length"} for n in outputs[1:]}}
    else:
        mask = torch.ones(b, s, dtype=torch.int64)
        args = (ids, mask, torch.arange(s).expand(b, s).contiguous())
        shapes = ({0: batch, 1: seq},) * 3
        out_axes = {"logits": {0: "batch_size", 1: "sequence_length"}}
    _export(_causal_wrapper(model, use_past), args, shapes, names, out_axes, out_file, opset, dynamo, external)


def export_encoder(model: Any, task: str, out_file: Path, opset: int, dynamo: bool, external: bool) -> None:
    """Export an encoder / classifier: input_ids, attention_mask[, token_type_ids] ->
    logits or last_hidden_state, dynamic batch and sequence."""
    import inspect

    import torch

    with_types = "token_type_ids" in inspect.signature(model.forward).parameters and bool(
        getattr(model.config, "type_vocab_size", 0)
    )
    b, s = 2, 8
    ids = torch.randint(3, model.config.vocab_size, (b, s))
    args: tuple[Any, ...] = (ids, torch.ones(b, s, dtype=torch.int64))
    names = ["input_ids", "attention_mask"]
    if with_types:
        args += (torch.zeros(b, s, dtype=torch.int64),)
        names.append("token_type_ids")
    axes = {0: torch.export.Dim("batch_size"), 1: torch.export.Dim("sequence_length")}
    out_axes = {"logits": {0: "batch_size"}} if task == _CLASSIFY else {
        "last_hidden_state": {0: "batch_size", 1: "sequence_length"}}
    _export(_encoder_wrapper(model, task, with_types), args, (axes,) * len(args), names, out_axes,
            out_file, opset, dynamo, external)


def written_opset(onnx_path: Path) -> int:
    """The ai.onnx opset version an ONNX file imports (its header only; weights are not read)."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def _flat_axes(shapes: Any) -> list[dict[int, str]]:
    """torch.export dynamic shapes (per argument; a list argument holds one per tensor) as TorchScript
    ``dynamic_axes`` entries, one per flattened input, named by each Dim."""
    flat: list[dict[int, str]] = []
    for entry in shapes:
        for axes in entry if isinstance(entry, list) else [entry]:
            flat.append({axis: dim.__name__ for axis, dim in axes.items()})
    return flat


def _export(module: Any, args: tuple[Any, ...], shapes: Any, names: list[str], out_axes: dict[str, dict[int, str]],
            out_file: Path, opset: int, dynamo: bool, external: bool) -> None:
    """torch.onnx.export with dynamic axes: the dynamo exporter (``shapes`` as torch.export Dims) or the
    TorchScript one (``dynamic_axes`` named alike), which writes opsets below 18."""
    import contextlib
    import io
    import warnings

    import torch

    out_file.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(buf), warnings.catch_warnings():
        # The TorchScript tracer warns on every Python branch over a tensor; the outputs check covers them.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if dynamo:
            program = torch.onnx.export(module, args, dynamic_shapes=shapes, input_names=names,
                                        output_names=list(out_axes), opset_version=opset, dynamo=True)
            program.save(str(out_file), external_data=external)
        else:
            axes = dict(zip(names, _flat_axes(shapes), strict=True)) | out_axes
            torch.onnx.export(module, args, str(out_file), input_names=names, output_names=list(out_axes),
                              opset_version=opset, dynamo=False, dynamic_axes=axes)
    log.debug("torch.onnx.export output:\n%s", buf.getvalue())


class OnnxConversion(Pass):
    name = "OnnxConversion"
    description = "Export a PyTorch model to ONNX with dynamic batch/sequence axes (and past key/values)."
    config_class = OnnxConversionConfig
    requires = ("onnxscript",)
    libraries = ("torch", "transformers", "onnx", "onnxscript")
    accepts: ClassVar[tuple[str, ...]] = ("hf", "peft")
    produces: ClassVar[tuple[str, ...]] = ("onnx",)

    def run(self, model: ModelHandle, config: OnnxConversionConfig, output_dir: Path,
            ctx: PassContext) -> ModelHandle:
        from honed.models.loaders import load_model

        folder = Path(model.base.path if model.kind == "peft" and model.base else model.path)
        if not folder.is_dir():
            raise UserError(f"OnnxConversion: {folder} is not a local model folder")
        task = infer_task(model, folder)
        if task not in (_CAUSAL, _CLASSIFY, _FEATURES):
            raise UserError(
                f"OnnxConversion: task '{task}' is not supported; use text-generation, "
                "text-classification or feature-extraction"
            )
        src = model.model_copy(update={"task": task})
        extra: dict[str, Any] = {}
        if not config.dynamo:
            extra["attn_implementation"] = "eager"  # the TorchScript exporter traces eager attention exactly
        torch_model = load_model(src, dtype=config.torch_dtype or "float32", **extra)
        if model.kind == "peft":
            torch_model = torch_model.merge_and_unload()
        n_bytes = sum(p.numel() * p.element_size() for p in torch_model.parameters())
        external = config.save_as_external_data or n_bytes > 1_800_000_000
        out_file = output_dir / "model.onnx"
        use_past = config.use_past if config.use_past is not None else task == _CAUSAL
        if task == _CAUSAL:
            export_causal_lm(torch_model, out_file, config.target_opset, use_past, config.dynamo, external)
        else:
            export_encoder(torch_model, task, out_file, config.target_opset, config.dynamo, external)
        del torch_model
        opset = written_opset(out_file)
        ctx.metrics["opset"] = opset
        if opset != config.target_opset:
            # torch's dynamo exporter falls back to opset 18 when it cannot convert down, and says so only in a log.
            raise UserError(
                f"OnnxConversion: asked for target_opset {config.target_opset} but the "
                f"{'dynamo' if config.dynamo else 'TorchScript'} exporter wrote opset {opset}; "
                + ("set use_dynamo_exporter: false (the TorchScript exporter writes opsets below 18)"
                   if config.dynamo else "choose another target_opset")
            )
        if external and (config.external_data_name or not config.all_tensors_to_one_file):
            import onnx

            save_onnx(onnx.load(str(out_file)), out_file, config)
        copy_side_files(folder, output_dir)
        if model.kind == "peft":
            copy_side_files(Path(model.path), output_dir)
        handle = ModelHandle(kind="onnx", path=str(output_dir), task=task, load_kwargs=trust_kwargs(model),
                             attributes={**model.attributes, "use_past": use_past, "opset": opset})
        ctx.metrics["onnx_size_mb"] = round(sum(f.stat().st_size for f in output_dir.glob("model.onnx*")) / 2**20, 3)
        if config.check_outputs:
            fp32 = config.torch_dtype in (None, "float32", "fp32")
            tol = config.check_tolerance or (1e-4 if fp32 else None)
            check_against_source(src, handle, ctx, tol)
        return handle


register_pass(OnnxConversion)
