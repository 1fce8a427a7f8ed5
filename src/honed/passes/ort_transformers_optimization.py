"""OrtTransformersOptimization: onnxruntime's transformer graph fusions (attention,
LayerNorm, GELU, bias) for models exported by OnnxConversion, optionally fp16 and, with ``use_gqa``,
GroupQueryAttention in place of MultiHeadAttention (Olive's pass of the same name).

Takes an ONNX model or an onnxruntime-genai folder and returns the same kind. A ModelBuilder graph is already
fused (GroupQueryAttention, SimplifiedLayerNormalization), so on a genai folder the pass mostly re-checks it;
``float16`` still converts it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, StrictBool, ValidationInfo, field_validator

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.passes._onnx_common import (
    OnnxSaveConfig,
    finish_onnx_output,
    onnx_file,
    op_counts,
    output_file,
    save_onnx,
)
from honed.passes.base import Pass, PassContext, register_pass
from honed.util.runtime_flavour import import_runtime

log = logging.getLogger("honed")

# config.json model_type -> onnxruntime.transformers model_type
_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert",
                "mpnet": "bert", "electra": "bert", "gpt2": "gpt2", "bart": "bart", "t5": "t5",
                "phi3": "phi", "llama": "gpt2", "vit": "vit", "clip": "clip"}

# Names onnxruntime's replace_mha_with_gqa adds to the graph (initializer, node outputs) without checking.
_GQA_NEW_NAMES = ("one", "seqlens_k_int64", "seqlens_k", "total_seq_len_int64", "total_seq_len",
                  "attention_mask_row_sums", "attention_mask_shape")


class OrtTransformersOptimizationConfig(OnnxSaveConfig):
    """Transformer fusion options (Olive's names)."""

    model_type: str | None = Field(
        None, description="onnxruntime.transformers model type (bert, gpt2, ...); default from config.json "
        "(or genai_config.json's model type for an onnxruntime-genai folder)."
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
    use_gqa: StrictBool = Field(
        False, description="After fusion and fp16 conversion, replace each MultiHeadAttention node with "
        "GroupQueryAttention (onnxruntime.transformers' replace_mha_with_gqa: Q/K/V MatMuls packed into one, "
        "the rotary embedding folded in, sequence lengths from the attention_mask input; position_ids is "
        "dropped when nothing else reads it). Needs float16: true, as in Olive. A graph without "
        "MultiHeadAttention is kept as fused, with a warning (Olive replaces none); a MultiHeadAttention the "
        "replacement would change the meaning of (a bias or attention_bias input, Q/K not from "
        "MatMul -> RotaryEmbedding) is an error."
    )
    num_key_value_heads: int = Field(
        0, ge=0, description="Key/value heads of the GroupQueryAttention nodes use_gqa writes (0: the "
        "MultiHeadAttention's num_heads, the head count its past key/value carry)."
    )

    @field_validator("use_gqa")
    @classmethod
    def _gqa_needs_fp16(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("float16") is False:
            raise ValueError("use_gqa: true needs float16: true (Olive replaces MultiHeadAttention with "
                             "GroupQueryAttention only in the fp16 graph and skips the pass otherwise); "
                             "set float16: true or use_gqa: false")
        return v


def _hf_config(model: ModelHandle, src: Path) -> dict[str, Any]:
    """config.json beside the graph (or the model folder); for a genai folder without one, the same keys from
    genai_config.json (model type, heads, hidden size)."""
    for d in (src.parent, Path(model.path)):
        f = d / "config.json"
        if f.is_file():
            return json.loads(f.read_text())
    genai = src.parent / "genai_config.json"
    if model.kind == "genai" and genai.is_file():
        cfg = json.loads(genai.read_text())["model"]
        dec = cfg.get("decoder") or {}
        return {"model_type": cfg.get("type", ""), "num_attention_heads": dec.get("num_attention_heads", 0),
                "hidden_size": dec.get("hidden_size", 0)}
    return {}


def _gqa_blocker(opt: Any, node: Any, initializers: dict[str, Any]) -> str | None:
    """Why onnxruntime's replace_mha_with_gqa cannot rewrite this MultiHeadAttention node faithfully (it would
    crash or silently drop part of the computation); None when it can.

    Its pattern: query and key from MatMul [-> Add] -> RotaryEmbedding, value from MatMul [-> Add], past key and
    value as inputs 6 and 7; Q/K/V with one root input and biases on all or none of them are packed into one
    MatMul (square weights), otherwise an Add on any path is lost."""
    inputs = list(node.input)
    if len(inputs) < 8:
        return "it has no past_key/past_value inputs (GroupQueryAttention takes them as inputs 6 and 7)"
    if inputs[3]:
        return "it has a bias input, which GroupQueryAttention lacks"
    if inputs[5]:
        return "it has an attention_bias input, which GroupQueryAttention lacks"
    paths = {}
    for label, index, options in (
        ("query", 0, ((["RotaryEmbedding", "Add", "MatMul"], [0, 0, 0]), (["RotaryEmbedding", "MatMul"], [0, 0]))),
        ("key", 1, ((["RotaryEmbedding", "Add", "MatMul"], [1, 0, 0]), (["RotaryEmbedding", "MatMul"], [1, 0]))),
        ("value", 2, ((["Add", "MatMul"], [2, 0]), (["MatMul"], [2]))),
    ):
        found = next((p for types, idx in options if (p := opt.match_parent_path(node, types, idx)) is not None), None)
        if found is None:
            want = "MatMul [-> Add] -> RotaryEmbedding" if index < 2 else "MatMul [-> Add]"
            return f"its {label} does not come from {want}"
        paths[label] = found
    rotaries = [paths["query"][0], paths["key"][0]]
    if any(len(r.input) < 4 or not r.input[2] or not r.input[3] for r in rotaries):
        return "a RotaryEmbedding has no cos/sin cache inputs"
    matmuls = [p[-1] for p in paths.values()]
    adds = [p[-2] if len(p) > 1 and p[-2].op_type == "Add" else None for p in paths.values()]
    same_root = len({m.input[0] for m in matmuls}) == 1
    if any(adds) and not (same_root and all(adds)):
        return "its query/key/value biases cannot be packed (different inputs or not on all three), so the " \
               "replacement would drop them"
    if same_root:
        shapes = [tuple(initializers[m.input[1]].dims) if m.input[1] in initializers else None for m in matmuls]
        if any(s is None or len(s) != 2 or s[0] != s[1] for s in shapes) or len(set(shapes)) != 1:
            return f"its Q/K/V MatMul weights are not equal square initializers ({shapes}), which packing needs"
        if all(adds):
            biases = [tuple(initializers[a.input[1]].dims) if a.input[1] in initializers else None for a in adds]
            if any(b is None for b in biases) or len(set(biases)) != 1:
                return "its Q/K/V biases are not equal-shaped initializers, which packing needs"
    return None


def replace_mha_with_gqa(opt: Any, config: OrtTransformersOptimizationConfig, ctx: PassContext) -> int:
    """Olive's ``use_gqa`` on an onnxruntime.transformers OnnxModel, in place; returns how many
    MultiHeadAttention nodes became GroupQueryAttention. Warns when there are none (the graph is unchanged);
    raises UserError (naming the pass) when one cannot be rewritten faithfully."""
    import onnx
    import_runtime("onnxruntime")  # missing: a UserError naming the extra
    from onnxruntime.transformers.convert_generation import replace_mha_with_gqa as ort_replace

    graph = opt.model.graph
    mha = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    where = f"passes.{ctx.pass_name} (OrtTransformersOptimization)"
    if not mha:
        counts = op_counts(opt.model)
        has = [f"{counts[op]} {op}" for op in ("GroupQueryAttention", "Attention") if counts.get(op)]
        log.warning("%s: use_gqa: the optimized graph has no MultiHeadAttention node%s, so none was replaced and "
                    "the graph is kept as fused (as Olive does); set use_gqa: false, or "
                    "optimization_options.use_multi_head_attention: true if attention should fuse to it",
                    where, f" (it has {', '.join(has)})" if has else "")
        return 0
    inputs = {v.name: v for v in graph.input}
    mask = inputs.get("attention_mask")
    if mask is None or mask.type.tensor_type.elem_type != onnx.TensorProto.INT64:
        raise UserError(f"{where}: use_gqa needs an int64 graph input 'attention_mask' (GroupQueryAttention's "
                        "sequence lengths come from it); export the model with one or set use_gqa: false")
    initializers = {t.name: t for t in graph.initializer}
    taken = {*initializers, *inputs, *(o for n in graph.node for o in n.output)}
    clash = [n for n in _GQA_NEW_NAMES if n in taken]
    if clash:
        raise UserError(f"{where}: use_gqa would add tensors named {', '.join(clash)}, which the graph already "
                        "has; rename them in the export or set use_gqa: false")
    for node in mha:
        why = _gqa_blocker(opt, node, initializers)
        if why:
            raise UserError(f"{where}: use_gqa cannot replace MultiHeadAttention '{node.name}': {why}; "
                            "set use_gqa: false")
    ort_replace(opt, "attention_mask", kv_num_heads=config.num_key_value_heads, world_size=1)
    # Olive's clean-up: drop the now unused Q/K/V MatMuls and RotaryEmbeddings, and inputs only they read.
    opt.prune_graph()
    opt.update_graph(allow_remove_graph_inputs=True)
    return len(mha)


class OrtTransformersOptimization(Pass):
    name = "OrtTransformersOptimization"
    description = "Fuse transformer subgraphs (attention, LayerNorm, GELU) in an ONNX model."
    config_class = OrtTransformersOptimizationConfig
    libraries = ("onnxruntime", "onnx")
    accepts: ClassVar[tuple[str, ...]] = ("onnx", "genai")
    produces: ClassVar[tuple[str, ...]] = ("onnx", "genai")  # the kind it was given

    def run(self, model: ModelHandle, config: OrtTransformersOptimizationConfig, output_dir: Path,
            ctx: PassContext) -> ModelHandle:
        import onnx
        import_runtime("onnxruntime")  # missing: a UserError naming the extra
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
        if model_type == "phi" and not onnx.load(str(src), load_external_data=False).functions:
            # As Olive: onnxruntime's phi fusions need a dynamo export (local functions); others take bert's.
            log.info("%s: model_type phi, but %s is not a dynamo export; fusing as bert", ctx.pass_name, src.name)
            model_type = "bert"
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
        ctx.metrics["fused_operators"] = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        if config.float16:
            opt.convert_float_to_float16(keep_io_types=config.keep_io_types)
        if config.use_gqa:
            ctx.metrics["gqa_replaced"] = replace_mha_with_gqa(opt, config, ctx)
        # As Olive: the rewrites append nodes, so sort the graph before saving.
        opt.topological_sort()
        out = output_file(model, src, output_dir)
        save_onnx(opt.model, out, config)
        return finish_onnx_output(model, src, out, config, ctx)


register_pass(OrtTransformersOptimization)
