"""onnxruntime's RTN int4/int8 rounding, streamed: a float Hugging Face folder to an Olive-format quantized checkpoint
(``honed.models.quantized``), one tensor at a time.

Why: onnxruntime-genai's builder (0.18) rounds float weights itself by building the whole graph with fp32
initializers, copying it into a protobuf and quantizing that (``Model.to_nbits``): about 4x the model's bf16 bytes
(``bench/scale.py``: 4.0x at 0.5B, 3.9x at 1.5B), 29.5 GiB for Phi-3-mini.  Given a checkpoint that already holds
the codes, its Olive loader copies them into MatMulNBits initializers unchanged, and only the LM head is left for
it to round.  This module writes that checkpoint with exactly the builder's own rounding
(``honed.models.quantized.rtn_quantize``: onnxruntime's ``quant_tensor``), so the genai folder is the same
(``tests/test_rtn_stream.py`` compares every MatMulNBits weight, scale and zero point of the two builds).

- Each decoder-layer linear (``q/k/v/o_proj``, ``gate/up/down_proj``; Phi-3's fused ``qkv_proj`` and
  ``gate_up_proj`` written as their separate parts, which the builder reads correctly) is read alone with a plain
  file read (``honed.models.shards.read_tensor``), rounded in row chunks of about ``CHUNK`` weights (float64
  temporaries, as onnxruntime computes) and appended to a shard of at most ``SHARD_BYTES``
  (``honed.models.shards.ShardWriter``: temp name, renamed when whole).  At most one source tensor is held.
- An untied LM head is rounded the same way at the width the build gives it (``last_matmul:int8``, else 4 bits):
  rounding it, the builder would hold it in fp32 twice and its float64 temporaries (about 2.5 GiB at Phi-3-mini's
  size).  A tied one (no ``lm_head.weight``) is left to the builder, which shares it with the embedding as in a
  float build.  Every other tensor (embedding, norms) is copied as stored.
- The builder's fixed ``mixed_layers`` preset (llama.cpp's sensitive layers) becomes 8-bit modules in the
  checkpoint's ``overrides``: q, k, v (the builder packs them into one ``qkv_proj`` MatMul when their widths agree,
  as it does for a float model on CPU) and ``down_proj`` of the layers ``mixed_layers`` lists.
- Zero points are packed per row, as onnxruntime packs them when a row has an even number of blocks
  (``rtn_plan`` refuses an odd one, and a partial block).  Symmetric codes get them too (all ``2**(bits-1)``: the
  builder concatenates q/k/v's zero points to pack them); ``drop_default_zero_points`` then removes them from the
  built graph, where the builder's own symmetric RTN has none (MatMulNBits' default is the same value).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from honed.models.memory import Tensor, safetensors_files
from honed.models.quantized import QUANT_METHOD, pack_codes, rtn_quantize
from honed.models.shards import TORCH_NAMES, ShardWriter, dtype_size, plan_shards, read_tensor, tensor_offsets

ARCHITECTURES = ("LlamaForCausalLM", "Phi3ForCausalLM")
"""Architectures whose builder graph the streamed codes are checked against (``tests/test_rtn_stream.py``)."""
CHUNK = 2**22
"""Weights rounded at once (output rows times input features): each float64 temporary is 32 MiB."""
_LINEAR = re.compile(r"^(model\.layers\.(\d+)\.(?:self_attn|mlp))\.(q_proj|k_proj|v_proj|o_proj|qkv_proj|gate_proj|"
                     r"up_proj|down_proj|gate_up_proj)\.weight$")
_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_MIXED = ("q_proj", "k_proj", "v_proj", "down_proj")
_FLOAT = ("F32", "F16", "BF16")


def mixed_layers(num_layers: int) -> list[int]:
    """The decoder layers onnxruntime-genai's ``mixed_layers`` preset keeps at 8 bits (its
    ``Model.make_matmul_mixed_precision``, after llama.cpp's ``llama-quant.cpp``): the first and last eighth and every
    third layer between them."""
    n = num_layers
    return [i for i in range(n) if i < n / 8 or i >= 7 * n / 8 or (i - round(n / 8)) % 3 == 2]


@dataclass(frozen=True)
class Part:
    """One quantized output module: rows ``[start, stop)`` of source tensor ``source`` at ``bits``."""

    module: str
    source: str
    start: int
    stop: int
    bits: int


@dataclass
class RtnPlan:
    """What ``write_rtn_checkpoint`` writes: every source tensor (file, data offset, entry), the quantized parts in
    write order, the tensors copied as stored, and the rounding."""

    src: Path
    tensors: dict[str, tuple[Path, int, Tensor]]
    parts: list[Part]
    copied: list[str]
    block_size: int
    symmetric: bool
    bits: int = 4
    config: dict[str, Any] = field(default_factory=dict)

    def layout(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """(name, safetensors dtype, shape) of every output tensor, in write order."""
        out: list[tuple[str, str, tuple[int, ...]]] = []
        copied = set(self.copied)
        parts_of: dict[str, list[Part]] = {}
        for p in self.parts:
            parts_of.setdefault(p.source, []).append(p)
        for name, (_, _, t) in self.tensors.items():
            if name in copied:
                out.append((name, t.dtype, t.shape))
            for p in parts_of.get(name, []):
                rows, cols = p.stop - p.start, t.shape[1]
                blocks = cols // self.block_size
                out.append((f"{p.module}.qweight", "U8", (rows, cols * p.bits // 8)))
                out.append((f"{p.module}.scales", "F32", (rows, blocks)))
                out.append((f"{p.module}.qzeros", "U8", (rows, -(-blocks * p.bits // 8))))
        return out

    def checkpoint_bytes(self) -> int:
        """Bytes of tensor data the checkpoint holds (codes, scales, zero points, and the tensors copied)."""
        return sum(_numel(shape) * dtype_size(st) for _, st, shape in self.layout())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def rtn_plan(src: Path, *, block_size: int, symmetric: bool, mixed_layers_bits: int | None,
             head_bits: int | None = None) -> RtnPlan | str:
    """The plan for streaming ``src`` (a float Hugging Face folder) into RTN codes of 4 bits, the ``mixed_layers``
    preset's modules at ``mixed_layers_bits`` (None: none) and an untied LM head (``lm_head.weight``) at
    ``head_bits`` (None: copied, for the builder to round or drop), or why it cannot (the build then rounds the
    float weights itself, as before): an architecture outside ``ARCHITECTURES``, an already quantized model, a
    decoder weight of another name or dtype, or an input dimension that is not an even number of whole blocks."""
    cfg_file = src / "config.json"
    if not cfg_file.is_file():
        return "no config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    arch = (cfg.get("architectures") or [None])[0]
    if arch not in ARCHITECTURES:
        return f"architecture {arch} (streamed codes are checked for {', '.join(ARCHITECTURES)})"
    if cfg.get("quantization_config"):
        return "an already quantized model"
    files = safetensors_files(src)
    if not files:
        return "no safetensors weights"
    tensors = {name: (f, off, t) for f in files for name, off, t in tensor_offsets(f)}
    layers = int(cfg.get("num_hidden_layers", 0))
    upgraded = set(mixed_layers(layers)) if mixed_layers_bits else set()
    heads = int(cfg.get("num_attention_heads", 0))
    head_dim = int(cfg.get("head_dim") or (int(cfg.get("hidden_size", 0)) // max(heads, 1)))
    kv = int(cfg.get("num_key_value_heads") or heads)
    parts: list[Part] = []
    copied: list[str] = []
    for name, (_, _, t) in tensors.items():
        m = _LINEAR.match(name)
        if name == "lm_head.weight" and head_bits:
            if t.dtype not in _FLOAT or len(t.shape) != 2:
                return f"'{name}' is {t.dtype} {list(t.shape)}, not a float matrix"
            cols = t.shape[1]
            if cols % block_size or (not symmetric and (cols // block_size) % 2):
                return f"'{name}' has {cols} input features, not an even number of {block_size}-weight blocks"
            parts.append(Part("lm_head", name, 0, t.shape[0], head_bits))
            continue
        if m is None:
            if ".layers." in name and len(t.shape) == 2:
                return f"decoder weight '{name}' of no known linear"
            if t.dtype not in TORCH_NAMES:
                return f"tensor '{name}' of dtype {t.dtype}"
            copied.append(name)
            continue
        stem, layer, leaf = m.group(1), int(m.group(2)), m.group(3)
        if t.dtype not in _FLOAT or len(t.shape) != 2:
            return f"'{name}' is {t.dtype} {list(t.shape)}, not a float matrix"
        rows, cols = t.shape
        if cols % block_size or (not symmetric and (cols // block_size) % 2):
            return (f"'{name}' has {cols} input features, not an even number of {block_size}-weight blocks (the "
                    "builder pads them differently)")
        if leaf in _FUSED:
            sizes = ([heads * head_dim, kv * head_dim, kv * head_dim] if leaf == "qkv_proj" else [rows // 2] * 2)
            if sum(sizes) != rows:
                return f"'{name}' has {rows} rows, not the {sum(sizes)} its config's q/k/v or gate/up sizes add to"
            start = 0
            for part, size in zip(_FUSED[leaf], sizes, strict=True):
                bits = mixed_layers_bits if (layer in upgraded and part in _MIXED) else 4
                parts.append(Part(f"{stem}.{part}", name, start, start + size, bits or 4))
                start += size
            bias = f"{stem}.{leaf}.bias"
            if bias in tensors:
                return f"'{bias}' (a fused projection's bias)"
        else:
            bits = mixed_layers_bits if (layer in upgraded and leaf in _MIXED) else 4
            parts.append(Part(f"{stem}.{leaf}", name, 0, rows, bits or 4))
    if not parts:
        return "no decoder linears"
    return RtnPlan(src, tensors, parts, copied, block_size, symmetric, config=cfg)


def _round(w: Any, bits: int, block_size: int, symmetric: bool) -> tuple[Any, Any, Any]:
    """``rtn_quantize`` of ``w`` (rows, cols) in chunks of rows (rows are independent), packed: qweight, scales,
    zero points."""
    import torch

    step = max(1, CHUNK // w.shape[1])
    codes, scales, zeros = [], [], []
    for r in range(0, w.shape[0], step):
        c, s, z = rtn_quantize(w[r:r + step], bits, block_size, symmetric)
        codes.append(pack_codes(c, bits))
        scales.append(s)
        zeros.append(pack_codes(z, bits))
        del c, z
    return torch.cat(codes), torch.cat(scales), torch.cat(zeros)


def write_rtn_checkpoint(plan: RtnPlan, out: Path) -> int:
    """Write ``plan`` into ``out`` (created; FileExistsError if it exists: nothing of the caller's is deleted here):
    the shards, config.json with a ``quantization_config`` (quant_method olive, ``overrides`` for the 8-bit modules,
    ``algorithm: rtn``) and the source's other files (tokenizer, generation config).  Returns the bytes of tensor
    data written."""
    out.mkdir(parents=True)
    by_module = {f"{p.module}.{s}": p for p in plan.parts for s in ("qweight", "scales", "qzeros")}
    source: dict[str, Any] = {}  # the one source tensor held: {name: tensor}
    ready: dict[str, Any] = {}  # the tensors of the module being written

    def make(name: str) -> Any:
        part = by_module.get(name)
        if part is None:
            return read_tensor(*plan.tensors[name])
        if name not in ready:
            if part.source not in source:
                source.clear()
                source[part.source] = read_tensor(*plan.tensors[part.source])
            w = source[part.source][part.start:part.stop]
            q, s, z = _round(w, part.bits, plan.block_size, plan.symmetric)
            ready.update({f"{part.module}.qweight": q, f"{part.module}.scales": s, f"{part.module}.qzeros": z})
        return ready.pop(name)

    written = ShardWriter(out, plan_shards(plan.layout())).write(make)
    source.clear()
    for f in plan.src.iterdir():
        if f.is_file() and f.name != "config.json" and f.suffix != ".safetensors" and not f.name.startswith(
                "model.safetensors.index"):
            shutil.copy2(f, out / f.name)
    cfg = dict(plan.config)
    cfg["quantization_config"] = {
        "quant_method": QUANT_METHOD, "bits": plan.bits, "group_size": plan.block_size, "symmetric": plan.symmetric,
        "lm_head": any(p.module == "lm_head" for p in plan.parts), "embeds": False,
        "overrides": {p.module: {"bits": p.bits} for p in plan.parts if p.bits != plan.bits} or None,
        "modules_to_not_convert": [], "algorithm": "rtn",
    }
    tmp = out / ".config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "config.json")
    return written


def drop_default_zero_points(onnx_path: Path) -> int:
    """Remove the zero-point input of every MatMulNBits node of ``onnx_path`` whose zero points all equal
    MatMulNBits' default (``2**(bits-1)`` per block: a symmetric weight), and their initializers; the external data
    file is rewritten without them (streamed, one initializer at a time; temp names, then renamed).  Returns how
    many were removed.  The graph then is what onnxruntime's symmetric RTN writes."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    folder = onnx_path.parent

    def external(t: Any) -> dict[str, str]:
        return {e.key: e.value for e in t.external_data}

    def read(t: Any) -> bytes:
        ext = external(t)
        with open(folder / ext["location"], "rb") as f:
            f.seek(int(ext.get("offset", 0)))
            return f.read(int(ext["length"]))

    dropped: set[str] = set()
    for node in graph.node:
        if node.op_type != "MatMulNBits" or len(node.input) < 4 or not node.input[3]:
            continue
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        zp = inits.get(node.input[3])
        if zp is None or zp.data_location != onnx.TensorProto.EXTERNAL:
            continue
        default = 0x88 if bits == 4 else 1 << (bits - 1)
        if set(read(zp)) != {default}:
            continue
        dropped.add(node.input[3])
        del node.input[3:]
    if not dropped:
        return 0
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name not in dropped or t.name in used]
    locations = {external(t)["location"] for t in keep if t.data_location == onnx.TensorProto.EXTERNAL}
    if len(locations) != 1:
        raise RuntimeError(f"{onnx_path}: expected one external data file, found {sorted(locations)}")
    location = locations.pop()
    tmp_data = folder / f".{location}.tmp"
    pos = 0
    with open(tmp_data, "wb") as out:
        for t in keep:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            raw = read(t)
            out.write(raw)
            entries = {e.key: e for e in t.external_data}
            if "offset" not in entries:
                entries["offset"] = t.external_data.add(key="offset")
            entries["offset"].value = str(pos)
            pos += len(raw)
            del raw
    del graph.initializer[:]
    graph.initializer.extend(keep)
    tmp_model = folder / f".{onnx_path.name}.tmp"
    onnx.save(model, str(tmp_model))
    os.replace(tmp_data, folder / location)
    os.replace(tmp_model, onnx_path)
    return len(dropped)
