"""OnnxIOFloat16ToFloat32: give an fp16 ONNX model float32 graph inputs/outputs (a Cast at each boundary),
so callers feed and read fp32 while the graph computes in fp16. Takes an ONNX model or an onnxruntime-genai
folder (Olive's web recipe runs it after ModelBuilder), and returns the same kind.

Olive's pass of the same name (now ``OnnxIODataTypeConverter``) converts only the inputs/outputs whose
name matches ``name_pattern``, default ``logits``; honed keeps that default so Olive files mean the same.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.passes._onnx_common import OnnxSaveConfig, finish_onnx_output, onnx_file, save_onnx
from honed.passes.base import Pass, PassContext, register_pass

log = logging.getLogger("honed")


class OnnxIOFloat16ToFloat32Config(OnnxSaveConfig):
    """Which float16 inputs/outputs become float32 (Olive's names)."""

    name_pattern: str | None = Field(
        "logits", description="Convert only inputs/outputs whose name matches this regular expression "
        "(re.search); Olive's default 'logits' converts the logits only (past key/values stay fp16). "
        "null or '' converts every float16 input and output."
    )

    @field_validator("name_pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a regular expression ({e}); e.g. 'logits|present'") from e
        return v


def _rename_uses(graph: Any, old: str, new: str) -> None:
    """Point every node input named ``old`` (also inside If/Loop/Scan subgraphs, which see outer names)
    at ``new``."""
    import onnx

    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_uses(attr.g, old, new)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _rename_uses(g, old, new)


def _fresh(base: str, taken: set[str]) -> str:
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def io_float16_to_float32(model: Any, pattern: re.Pattern[str] | None) -> tuple[list[str], list[str]]:
    """Rewrite ``model`` (an onnx ModelProto) in place: each matching float16 graph input becomes float32
    followed by Cast(to=float16); each matching float16 output is produced by Cast(to=float32) from the
    original fp16 tensor. Returns the converted input and output names.

    Raises UserError for an output no node produces (a graph input or initializer passed straight through).
    """
    import onnx

    graph = model.graph
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    taken = {n for node in graph.node for n in (*node.input, *node.output)}
    taken |= {v.name for v in (*graph.input, *graph.output, *graph.initializer, *graph.value_info)}
    wanted = [v for v in graph.input if v.type.tensor_type.elem_type == fp16 and (not pattern or pattern.search(v.name))]
    casts_in = []
    for v in wanted:
        inner = _fresh(v.name + "_fp16", taken)
        _rename_uses(graph, v.name, inner)
        casts_in.append(onnx.helper.make_node("Cast", [v.name], [inner], to=fp16, name=_fresh(f"{v.name}_cast", taken)))
        v.type.tensor_type.elem_type = fp32
    outs = [v for v in graph.output if v.type.tensor_type.elem_type == fp16 and (not pattern or pattern.search(v.name))]
    producers = {o: node for node in graph.node for o in node.output}
    casts_out = []
    for v in outs:
        node = producers.get(v.name)
        if node is None:
            raise UserError(f"OnnxIOFloat16ToFloat32: output '{v.name}' is a graph input or initializer passed "
                            "through unchanged, which cannot get its own Cast; narrow name_pattern to skip it")
        inner = _fresh(v.name + "_fp16", taken)
        for i, name in enumerate(node.output):
            if name == v.name:
                node.output[i] = inner
        _rename_uses(graph, v.name, inner)
        for info in graph.value_info:
            if info.name == v.name:
                info.name = inner
        casts_out.append(onnx.helper.make_node("Cast", [inner], [v.name], to=fp32, name=_fresh(f"{v.name}_cast", taken)))
        v.type.tensor_type.elem_type = fp32
    # Nodes stay topologically sorted: input casts first, output casts last.
    nodes = [*casts_in, *graph.node, *casts_out]
    del graph.node[:]
    graph.node.extend(nodes)
    return [v.name for v in wanted], [v.name for v in outs]


class OnnxIOFloat16ToFloat32(Pass):
    name = "OnnxIOFloat16ToFloat32"
    description = "Give an fp16 ONNX model float32 inputs/outputs (Cast nodes at the graph boundary)."
    config_class = OnnxIOFloat16ToFloat32Config
    libraries = ("onnx",)
    accepts: ClassVar[tuple[str, ...]] = ("onnx", "genai")
    produces: ClassVar[tuple[str, ...]] = ("onnx", "genai")

    def run(self, model: ModelHandle, config: OnnxIOFloat16ToFloat32Config, output_dir: Path,
            ctx: PassContext) -> ModelHandle:
        import onnx

        src = onnx_file(model)
        m = onnx.load(str(src))
        pattern = re.compile(config.name_pattern) if config.name_pattern else None
        inputs, outputs = io_float16_to_float32(m, pattern)
        ctx.metrics["converted_inputs"] = len(inputs)
        ctx.metrics["converted_outputs"] = len(outputs)
        if not inputs and not outputs:
            left = [v.name for v in (*m.graph.input, *m.graph.output)
                    if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16]
            log.warning(
                "%s (OnnxIOFloat16ToFloat32): no float16 input/output %s; the model is copied unchanged%s",
                ctx.pass_name, f"matches name_pattern '{config.name_pattern}'" if pattern else "found",
                f" (float16: {', '.join(left[:6])})" if left else "",
            )
        # A genai folder keeps its file name (genai_config.json names it) and stays a genai model.
        out = output_dir / (src.name if model.kind == "genai" else "model.onnx")
        save_onnx(m, out, config)
        handle = finish_onnx_output(model, src, out, config, ctx)
        if model.kind == "genai":
            handle = handle.model_copy(update={"kind": "genai", "path": str(output_dir)})
        return handle


register_pass(OnnxIOFloat16ToFloat32)
