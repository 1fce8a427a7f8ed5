"""OrtTransformersOptimization: onnxruntime's transformer graph fusions (attention,
LayerNorm, GELU, bias) for encoder models exported by OnnxConversion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, StrictBool

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.passes._onnx_common import OnnxSaveConfig, finish_onnx_output, onnx_file, save_onnx
from honed.passes.base import Pass, PassContext, register_pass

# config.json model_type -> onnxruntime.transformers model_type
_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert",
                "mpnet": "bert", "electra": "bert", "gpt2": "gpt2", "bart": "bart", "t5": "t5",
                "phi3": "phi", "llama": "gpt2", "vit": "vit", "clip": "clip"}


class OrtTransformersOptimizationConfig(OnnxSaveConfig):
    """Transformer fusion options (Olive's names)."""

    model_type: str | None = Field(
        None, description="onnxruntime.transformers model type (bert, gpt2, ...); default from config.json."
    )
    num_heads: int = Field(0, ge=0, description="Attention heads (0: read from config.json or the graph).")
    hidden_size: int = Field(0, ge=0, description="Hidden size (0: read from config.json or the graph).")
    optimization_options: dict[str, Any] = Field(
        default_factory=dict, description="FusionOptions attributes to set, e.g. {'enable_gelu': false}."
    )
    opt_level: int | None = Field(None, ge=0, le=99, description="onnxruntime graph optimization level.")
    only_onnxruntime: StrictBool = Field(False, description="Use only onnxruntime's own graph optimizer.")
    float16: StrictBool = Field(False, description="Convert the fused model to fp16.")
    keep_io_types: StrictBool = Field(True, description="With float16, keep fp32 inputs and outputs.")
    use_gpu: StrictBool | None = Field(None, description="Optimize for GPU (default: the workflow's target).")


def _hf_config(model: ModelHandle, src: Path) -> dict[str, Any]:
    for d in (src.parent, Path(model.path)):
        f = d / "config.json"
        if f.is_file():
            return json.loads(f.read_text())
    return {}


class OrtTransformersOptimization(Pass):
    name = "OrtTransformersOptimization"
    description = "Fuse transformer subgraphs (attention, LayerNorm, GELU) in an ONNX encoder."
    config_class = OrtTransformersOptimizationConfig
    libraries = ("onnxruntime", "onnx")
    accepts: ClassVar[tuple[str, ...]] = ("onnx",)
    produces: ClassVar[tuple[str, ...]] = ("onnx",)

    def run(self, model: ModelHandle, config: OrtTransformersOptimizationConfig, output_dir: Path,
            ctx: PassContext) -> ModelHandle:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        src = onnx_file(model)
        hf = _hf_config(model, src)
        model_type = config.model_type or _MODEL_TYPES.get(hf.get("model_type", ""), "")
        if not model_type:
            raise UserError(
                f"OrtTransformersOptimization: cannot tell the model type of {src} "
                f"(config.json model_type '{hf.get('model_type')}'); set model_type (bert, gpt2, ...)"
            )
        options = FusionOptions(model_type)
        for key, value in config.optimization_options.items():
            if not hasattr(options, key):
                raise UserError(f"OrtTransformersOptimization: unknown optimization_options key '{key}'")
            setattr(options, key, value)
        use_gpu = config.use_gpu if config.use_gpu is not None else ctx.target.device == "gpu"
        opt = optimize_model(
            str(src), model_type=model_type,
            num_heads=config.num_heads or hf.get("num_attention_heads", 0),
            hidden_size=config.hidden_size or hf.get("hidden_size", 0),
            optimization_options=options, opt_level=config.opt_level, use_gpu=use_gpu,
            only_onnxruntime=config.only_onnxruntime,
        )
        if config.float16:
            opt.convert_float_to_float16(keep_io_types=config.keep_io_types)
        ctx.metrics["fused_operators"] = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        out = output_dir / "model.onnx"
        save_onnx(opt.model, out, config)
        return finish_onnx_output(model, src, out, config, ctx)


register_pass(OrtTransformersOptimization)
