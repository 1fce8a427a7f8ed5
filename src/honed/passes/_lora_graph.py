"""Add an unmerged LoRA adapter to an onnxruntime-genai graph built from a quantized checkpoint.

Why: onnxruntime-genai's builder takes an adapter (``adapter_path``) only over a float base, which it then
rounds itself; a quantization-aware adapter (``LoRA.quantization_aware``) trained against the exact codes
of a quantized checkpoint must ship beside those codes. So ModelBuilder builds the checkpoint (codes copied
unchanged into MatMulNBits) and this module adds, for every MatMulNBits node whose weights an adapter
module adapts, the branch peft computes, ``y = x W^T + scale * (x A^T) B^T``, as two float MatMuls and an
Add, named like the builder's own LoRA nodes (``.../lora_A/MatMul``) so ExtractAdapters finds them.

The builder packs some projections into one node (q/k/v into ``attn/qkv_proj``); a packed node's branch is
one MatMul by the stacked A matrices and one by a block matrix of the B matrices, row-aligned with the
node's output. A module the graph has no node for is a UserError, never a silently dropped adapter.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from honed.errors import UserError

# HF module (after the layer prefix) -> the ways the builder may lay its output rows out: each a list of
# (node, part) in the module's row order. Parts are q/k/v of a packed qkv_proj, gate/up of gate_up_proj;
# the builder packs q/k/v into one node and splits a fused gate_up_proj into two.
_QKV = [[("attn/qkv_proj", "q"), ("attn/qkv_proj", "k"), ("attn/qkv_proj", "v")],
        [("attn/q_proj", "q"), ("attn/k_proj", "k"), ("attn/v_proj", "v")]]
_GATE_UP = [[("mlp/gate_up_proj", "gate"), ("mlp/gate_up_proj", "up")],
            [("mlp/gate_proj", "gate"), ("mlp/up_proj", "up")]]
_LAYOUTS: dict[str, list[list[tuple[str, str]]]] = {
    "self_attn.q_proj": [[_QKV[0][0]], [_QKV[1][0]]],
    "self_attn.k_proj": [[_QKV[0][1]], [_QKV[1][1]]],
    "self_attn.v_proj": [[_QKV[0][2]], [_QKV[1][2]]],
    "self_attn.qkv_proj": _QKV,
    "self_attn.o_proj": [[("attn/o_proj", "o")]],
    "mlp.gate_proj": [[_GATE_UP[1][0]], [_GATE_UP[0][0]]],
    "mlp.up_proj": [[_GATE_UP[1][1]], [_GATE_UP[0][1]]],
    "mlp.gate_up_proj": _GATE_UP,
    "mlp.down_proj": [[("mlp/down_proj", "down")]],
}
# The parts each node's output rows hold, in order.
_NODE_PARTS = {"attn/qkv_proj": ("q", "k", "v"), "mlp/gate_up_proj": ("gate", "up")}
_MODULE = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")


def read_adapter(folder: Path) -> tuple[dict[str, tuple[Any, Any]], float]:
    """{module path (e.g. ``model.layers.0.self_attn.q_proj``): (A (r, in), B (out, r))} of a peft LoRA folder,
    as float32 numpy arrays, and its scale (lora_alpha / r, or / sqrt(r) with rsLoRA). UserError for a
    DoRA adapter or per-module ranks (neither is a plain two-matrix branch with one scale)."""
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    if cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise UserError(f"{folder}: a DoRA adapter or one with per-module ranks cannot be added to a quantized "
                        "graph; train a plain LoRA adapter (quantization_aware is LoRA-only)")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / (r ** 0.5 if cfg.get("use_rslora") else r)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    pairs: dict[str, tuple[Any, Any]] = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        pairs[module] = (a.astype(np.float32), b.astype(np.float32))
    return pairs, scale


def _part_rows(node: str, n_out: int, sizes: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Row range of each part in a node's output (e.g. q, k, v of a packed qkv_proj)."""
    kind = node.split("/", 3)[-1]
    parts = _NODE_PARTS.get(kind)
    if parts is None:
        return {kind.split("/")[-1].removesuffix("_proj"): (0, n_out)}
    bounds, start = {}, 0
    for p in parts:
        bounds[p] = (start, start + sizes[p])
        start += sizes[p]
    if start != n_out:
        raise UserError(f"the built node {node} has {n_out} output rows, not the {start} its parts add up to")
    return bounds


def add_adapter(onnx_path: Path, adapter: Path, model_config: dict[str, Any]) -> int:
    """Rewrite ``onnx_path`` (and its external data) with ``adapter``'s LoRA branches added beside the
    MatMulNBits nodes they adapt; returns the number of branches. ``model_config`` is the HF config.json
    (the sizes of packed parts). Raises UserError when a module of the adapter has no node in the graph."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    pairs, scale = read_adapter(adapter)
    heads = model_config["num_attention_heads"]
    head_dim = model_config.get("head_dim") or model_config["hidden_size"] // heads
    kv = model_config.get("num_key_value_heads", heads) * head_dim
    inter = model_config.get("intermediate_size", 0)
    sizes = {"q": heads * head_dim, "k": kv, "v": kv, "gate": inter, "up": inter}

    model = onnx.load(str(onnx_path))
    graph = model.graph
    nodes = {n.name.removesuffix("/MatMulNBits"): n for n in graph.node if n.op_type == "MatMulNBits"}
    inits = {t.name: t for t in graph.initializer}
    # node -> [(A, B rows placed at output rows lo:hi)]
    branches: dict[str, list[tuple[Any, Any, int, int]]] = {}
    for module, (a, b) in pairs.items():
        m = _MODULE.search(module)
        prefix = f"/model/layers.{m.group(1)}/" if m else ""
        layout = next((lay for lay in (_LAYOUTS.get(m.group(2), []) if m else [])
                       if all(prefix + node in nodes for node, _ in lay)), None)
        if layout is None:
            raise UserError(f"{adapter}: the adapter adapts '{module}', which has no int4/int8 node in the built "
                            f"graph {onnx_path.name}; adapt only the decoder layers' linears (target_modules)")
        first = 0  # the module's output rows, part by part
        for node, part in layout:
            name = prefix + node
            n_out = int(next(x.i for x in nodes[name].attribute if x.name == "N"))
            lo, hi = _part_rows(name, n_out, sizes)[part]
            if first + hi - lo > b.shape[0]:
                raise UserError(f"{adapter}: '{module}' has {b.shape[0]} output rows, fewer than the graph's "
                                f"{name} holds for it")
            rows, placed = b[first:first + hi - lo], branches.setdefault(name, [])
            if placed and placed[-1][0] is a and placed[-1][3] == lo:  # the next part of the same module
                placed[-1] = (a, np.concatenate([placed[-1][1], rows]), placed[-1][2], hi)
            else:
                placed.append((a, rows, lo, hi))
            first += hi - lo
        if first != b.shape[0]:
            raise UserError(f"{adapter}: '{module}' has {b.shape[0]} output rows, the graph holds {first} for it")

    added: dict[str, list[Any]] = {}  # node name -> the branch nodes that follow it
    for name, parts in branches.items():
        node = nodes[name]
        scales = inits[node.input[2]]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(scales.data_type)
        n_out = int(next(x.i for x in node.attribute if x.name == "N"))
        a_all = np.concatenate([a for a, _, _, _ in parts], axis=0)  # (R, in)
        b_all = np.zeros((n_out, a_all.shape[0]), dtype=np.float32)  # (out, R)
        col = 0
        for a, b, lo, hi in parts:
            b_all[lo:hi, col:col + a.shape[0]] = b * scale
            col += a.shape[0]
        stem = name.lstrip("/").replace("/", ".")
        a_name, b_name = f"{stem}.lora_A.MatMul.weight", f"{stem}.lora_B.MatMul.weight"
        graph.initializer.extend([numpy_helper.from_array(a_all.T.astype(dtype), a_name),
                                  numpy_helper.from_array(b_all.T.astype(dtype), b_name)])
        out = node.output[0]
        node.output[0] = f"{name}/MatMulNBits/base_output_0"
        a_out, b_out = f"{name}/lora_A/MatMul/output_0", f"{name}/lora_B/MatMul/output_0"
        added[node.name] = [
            helper.make_node("MatMul", [node.input[0], a_name], [a_out], name=f"{name}/lora_A/MatMul"),
            helper.make_node("MatMul", [a_out, b_name], [b_out], name=f"{name}/lora_B/MatMul"),
            helper.make_node("Add", [node.output[0], b_out], [out], name=f"{name}/lora/Add"),
        ]
    # Each branch right after its node: the graph stays in the topological order ONNX requires.
    ordered = [copy.deepcopy(x) for n in graph.node for x in (n, *added.get(n.name, []))]
    del graph.node[:]
    graph.node.extend(ordered)
    data = onnx_path.name + ".data"
    for f in onnx_path.parent.glob(onnx_path.name + ".data*"):
        f.unlink()
    onnx.save_model(model, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)
    return len(branches)
