"""Weight-only quantized Hugging Face checkpoints in Olive's format (``quant_method: olive``).

The format is the one Olive's Gptq/Rtn passes write and onnxruntime-genai's model builder reads
(``onnxruntime_genai.models.loaders.olive``): for each quantized ``nn.Linear`` named ``N``, the safetensors
file holds, instead of ``N.weight`` of shape (out, in),

- ``N.qweight``: uint8 (out, in * bits / 8), the integer codes packed along the last axis, low bits first;
- ``N.scales``: float (out, in / group_size);
- ``N.qzeros``: uint8 (out, ceil(in / group_size * bits / 8)), the zero points packed the same way;

and ``config.json`` has ``quantization_config = {"quant_method": "olive", "bits", "group_size", "symmetric",
...}``. A weight is ``(code - zero) * scale`` per group: MatMulNBits' own layout, so the builder copies the codes
unchanged. transformers cannot load the format; :func:`dequantized_state_dict` gives the float weights the
codes stand for, which is how honed's PyTorch runtime evaluates, converts or fine-tunes such a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from honed.errors import UserError

QUANT_METHOD = "olive"


def pack_codes(codes: Any, bits: int) -> Any:
    """Integer codes (rows, cols) in [0, 2**bits) -> uint8 (rows, ceil(cols * bits / 8)), low bits first."""
    import torch

    per_byte = 8 // bits
    rows, cols = codes.shape
    padded = torch.zeros(rows, -(-cols // per_byte) * per_byte, dtype=torch.uint8)
    padded[:, :cols] = codes.to(torch.uint8)
    out = torch.zeros(rows, padded.shape[1] // per_byte, dtype=torch.uint8)
    for k in range(per_byte):
        out |= padded[:, k::per_byte] << (k * bits)
    return out


def unpack_codes(packed: Any, bits: int, cols: int) -> Any:
    """Inverse of :func:`pack_codes`: uint8 (rows, packed) -> int64 codes (rows, cols)."""
    import torch

    per_byte = 8 // bits
    mask = (1 << bits) - 1
    parts = [(packed.to(torch.int64) >> (k * bits)) & mask for k in range(per_byte)]
    return torch.stack(parts, dim=-1).reshape(packed.shape[0], -1)[:, :cols]


def dequantize_codes(codes: Any, scales: Any, zeros: Any, group_size: int) -> Any:
    """Float weight (out, in) from unpacked integer ``codes`` (out, in) and per-group ``scales``/``zeros``
    (out, in / group_size): ``(code - zero) * scale``; the result has the scales' dtype."""
    groups = scales.shape[1]
    w = (codes.reshape(codes.shape[0], groups, group_size) - zeros.unsqueeze(-1)).to(scales.dtype)
    return (w * scales.unsqueeze(-1)).reshape(codes.shape[0], -1)


def dequantize(qweight: Any, scales: Any, qzeros: Any, bits: int, group_size: int) -> Any:
    """Float weight (out, in) of one quantized linear as stored (packed codes and zero points; shapes as in the
    module docstring): ``dequantize_codes`` after unpacking."""
    groups = scales.shape[1]
    return dequantize_codes(unpack_codes(qweight, bits, groups * group_size), scales,
                            unpack_codes(qzeros, bits, groups), group_size)


def quant_params(w: Any, bits: int, sym: bool) -> tuple[Any, Any]:
    """Scale and zero point per row of ``w`` (rows, group): min/max of the group with 0 included (asymmetric),
    or +-max|w| around a fixed zero point 2**(bits-1) (symmetric), as in GPTQ's reference quantizer."""
    import torch

    maxq = 2**bits - 1
    lo = torch.clamp(w.min(dim=1).values, max=0)
    hi = torch.clamp(w.max(dim=1).values, min=0)
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = -hi
    span = hi - lo
    span[span == 0] = 1.0  # an all-zero group: any scale represents it
    scale = span / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-lo / scale)
    return scale, zero


def quantize_codes(w: Any, scale: Any, zero: Any, bits: int) -> Any:
    """Codes of ``w`` (rows, n) with per-row ``scale``/``zero`` (rows,): ``clamp(round(w / scale) + zero)``."""
    import torch

    return torch.clamp(torch.round(w / scale[:, None]) + zero[:, None], 0, 2**bits - 1)


def save_checkpoint(model: Any, tokenizer: Any, quantized: dict[str, tuple[Any, Any, Any, int]], *, bits: int,
                    group_size: int, sym: bool, algorithm: str, out: Path) -> None:
    """Write ``model`` in Olive's format into ``out``: for each module of ``quantized`` ({name: (codes (out, in),
    scales and zeros (out, in / group_size), bits)}) its packed codes, scales and zero points instead of its
    weight, every other tensor once (a tied copy is left to tying), config.json with a ``quantization_config``
    (``bits`` the common width; a module of another width listed in ``overrides``), the tokenizer and the
    generation config. What Gptq, Awq and quantization-aware LoRA write, and ModelBuilder builds unchanged."""
    from safetensors.torch import save_file

    state: dict[str, Any] = {}
    seen: set[int] = set()
    for key, tensor in model.state_dict().items():
        module = key.rsplit(".", 1)[0]
        if (module in quantized and key.endswith(".weight")) or tensor.data_ptr() in seen:
            continue  # quantized, or a tied copy (the embedding's lm_head)
        seen.add(tensor.data_ptr())
        state[key] = tensor.detach().contiguous()
    for module, (codes, scales, zeros, width) in quantized.items():
        state[f"{module}.qweight"] = pack_codes(codes, width)
        state[f"{module}.scales"] = scales.contiguous()
        state[f"{module}.qzeros"] = pack_codes(zeros, width)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(out)
    head = model.get_output_embeddings()
    head_name = next((n for n, m in model.named_modules() if m is head), None)
    overrides = {n: {"bits": w} for n, (_, _, _, w) in quantized.items() if w != bits}
    cfg_file = out / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["quantization_config"] = {
        "quant_method": QUANT_METHOD, "bits": bits, "group_size": group_size, "symmetric": sym,
        "lm_head": head_name in quantized, "embeds": False, "overrides": overrides or None,
        "modules_to_not_convert": [], "algorithm": algorithm,
    }
    cfg["dtype"] = "float32"
    if head_name in quantized:
        cfg["tie_word_embeddings"] = False
    cfg_file.write_text(json.dumps(cfg, indent=2))
    tokenizer.save_pretrained(out)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(out)


def has_fused_projections(folder: str | Path) -> bool:
    """Whether the checkpoint in ``folder`` holds a quantized fused projection (see ``split_fused``); reads only
    the safetensors headers."""
    from safetensors import safe_open

    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            if any(k.endswith(fused + ".qweight") for k in st.keys() for fused in _FUSED):  # noqa: SIM118
                return True
    return False


def quantization_config(folder: str | Path) -> dict[str, Any] | None:
    """The ``quantization_config`` of an Olive-format checkpoint in ``folder``; None for any other model."""
    cfg_file = Path(folder) / "config.json"
    if not cfg_file.is_file():
        return None
    qc = json.loads(cfg_file.read_text(encoding="utf-8")).get("quantization_config")
    return qc if isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD else None


def layer_bits(qc: dict[str, Any], module: str) -> tuple[int, int]:
    """(bits, group_size) of ``module``: its entry in ``overrides`` or the global values."""
    over = (qc.get("overrides") or {}).get(module) or {}
    return int(over.get("bits", qc["bits"])), int(over.get("group_size", qc["group_size"]))


def dequantized_state_dict(folder: str | Path) -> dict[str, Any]:
    """Every tensor of the checkpoint in ``folder``, with each quantized linear's three tensors replaced by its
    float ``.weight``. Raises UserError when a quantized module lacks one of its tensors."""
    from safetensors.torch import load_file

    qc = quantization_config(folder)
    if qc is None:
        raise UserError(f"{folder}: config.json has no quantization_config with quant_method '{QUANT_METHOD}'")
    tensors: dict[str, Any] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(f))
    out = {k: v for k, v in tensors.items() if not k.endswith((".qweight", ".scales", ".qzeros"))}
    for key in [k for k in tensors if k.endswith(".qweight")]:
        name = key[: -len(".qweight")]
        missing = [s for s in (".scales", ".qzeros") if name + s not in tensors]
        if missing:
            raise UserError(f"{folder}: quantized module {name} has no {' or '.join(name + s for s in missing)}")
        bits, group = layer_bits(qc, name)
        out[name + ".weight"] = dequantize(tensors[key], tensors[name + ".scales"], tensors[name + ".qzeros"],
                                           bits, group)
    return out


def load_dequantized(auto: Any, folder: str | Path, **kwargs: Any) -> Any:
    """A transformers model (class ``auto``, e.g. AutoModelForCausalLM) of an Olive-format checkpoint with its
    dequantized weights. ``kwargs`` are from_pretrained's (dtype, trust_remote_code). Raises UserError when the
    checkpoint misses weights the architecture needs (tied ones aside)."""
    import torch
    from transformers import AutoConfig

    trust = bool(kwargs.get("trust_remote_code", False))
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust)
    del config.quantization_config
    dtype = kwargs.get("dtype")
    model = auto.from_config(config, trust_remote_code=trust,
                             **({"dtype": dtype} if isinstance(dtype, torch.dtype) else {}))
    state = dequantized_state_dict(folder)
    result = model.load_state_dict(state, strict=False)
    model.tie_weights()
    tied = {k for k in result.missing_keys if "lm_head" in k and getattr(config, "tie_word_embeddings", False)}
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise UserError(f"{folder}: the quantized checkpoint does not match its architecture "
                        f"(missing: {missing[:3]}, unexpected: {result.unexpected_keys[:3]})")
    return model


_FUSED = {".self_attn.qkv_proj": (".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj"),
          ".mlp.gate_up_proj": (".mlp.gate_proj", ".mlp.up_proj")}


def split_fused(tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any] | None:
    """``tensors`` with each quantized fused projection (Phi-3's ``qkv_proj`` and ``gate_up_proj``) split into
    the separate modules it packs (q/k/v, gate/up, along the output rows); None when there is none.

    Why: onnxruntime-genai's builder (0.18) splits a fused projection's packed zero points of an Olive-format
    checkpoint along the wrong axis (MatMulNBits then refuses the model); given the separate modules, it reads
    them correctly, and the graph it writes is the same.
    """
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    sizes = {".self_attn.qkv_proj": [heads * head_dim, *[config.get("num_key_value_heads", heads) * head_dim] * 2],
             ".mlp.gate_up_proj": [config.get("intermediate_size", 0)] * 2}
    out = dict(tensors)
    found = False
    for key in [k for k in tensors if k.endswith(".qweight")]:
        module = key[: -len(".qweight")]
        fused = next((f for f in _FUSED if module.endswith(f)), None)
        if fused is None:
            continue
        found = True
        stem = module[: -len(fused)]
        for suffix in (".qweight", ".scales", ".qzeros", ".bias"):
            t = out.pop(module + suffix, None)
            if t is not None:
                for part, piece in zip(_FUSED[fused], t.split(sizes[fused], dim=0), strict=True):
                    out[stem + part + suffix] = piece.contiguous()
    return out if found else None


def decoder_layers(model: Any) -> tuple[str, Any]:
    """(dotted name, ModuleList) of the model's decoder layers: the ModuleList with num_hidden_layers entries.
    Raises UserError for an architecture without one."""
    import torch

    n = getattr(model.config, "num_hidden_layers", None)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return name, mod
    raise UserError(f"no list of {n} decoder layers found in {type(model).__name__}; layer-by-layer quantization "
                    "(GPTQ, AWQ, measured mixed precision) needs a transformer decoder (Llama, Phi-3, Qwen, Mistral, ...)")


def rtn_quantize(w: Any, bits: int, block_size: int, symmetric: bool) -> tuple[Any, Any, Any]:
    """onnxruntime's RTN rounding of one weight ``w`` (out, in), float: (codes uint8 (out, blocks * block_size),
    scales float32 (out, blocks), zero points uint8 (out, blocks)); ``blocks = ceil(in / block_size)``, the input
    dimension zero-padded to whole blocks as onnxruntime pads it.

    The rule is ``onnxruntime.quantization.neural_compressor.weight_only.quant_tensor`` with dtype ``uint`` (what
    ``MatMulNBitsQuantizer`` with ``RTNWeightOnlyQuantConfig``, the genai builder's ``algo_config: rtn``, runs on
    the fp32 weight), operation for operation: per block of ``block_size`` consecutive input features of one
    output row, ``rmin``/``rmax`` in float32; symmetric: scale ``float64(2 * max(|rmin|, |rmax|)) / (2**bits - 1)``
    and zero point ``2**(bits - 1)``; asymmetric: scale ``float64(rmax - rmin) / (2**bits - 1)`` (the difference
    taken in float32) and zero point ``clip(round(-rmin / scale), 0, 2**bits - 1)``; a constant block gets scale 1;
    codes ``clip(round(w / scale + zero), 0, 2**bits - 1)`` in float64 (round half to even, as numpy); the scale is
    stored as float32, what MatMulNBits multiplies by."""
    import torch

    out_f, in_f = w.shape
    blocks = -(-in_f // block_size)
    x = w.detach().to(torch.float32)
    if blocks * block_size != in_f:
        x = torch.nn.functional.pad(x, (0, blocks * block_size - in_f))
    g = x.reshape(out_f, blocks, block_size)
    maxq = 2**bits - 1
    rmin, rmax = g.amin(-1), g.amax(-1)
    if symmetric:
        span = torch.maximum(rmin.abs(), rmax.abs()) * 2.0
        nonzero = span > 0
    else:
        span = rmax - rmin
        nonzero = rmin != rmax
    scale = torch.where(nonzero, span.to(torch.float64) / maxq, torch.ones((), dtype=torch.float64))
    if symmetric:
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        zero = torch.clamp(torch.round(-rmin.to(torch.float64) / scale), 0, maxq)
    q = torch.clamp(torch.round(g.to(torch.float64) / scale[..., None] + zero[..., None]), 0, maxq)
    return (q.to(torch.uint8).reshape(out_f, blocks * block_size), scale.to(torch.float32),
            zero.to(torch.uint8))


def fake_quant(w: Any, bits: int, block_size: int, symmetric: bool) -> Any:
    """``w`` (out, in) float tensor quantized and dequantized as onnxruntime's RTN MatMulNBits weight
    (:func:`rtn_quantize`); returns float32 (out, in): ``(code - zero) * scale`` in float32, the padding of the last
    block dropped again."""
    codes, scale, zero = rtn_quantize(w, bits, block_size, symmetric)
    return dequantize_codes(codes.float(), scale, zero.float(), block_size)[:, :w.shape[1]].contiguous()
