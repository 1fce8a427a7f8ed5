"""Quantization-aware LoRA: train the adapter against the int4 base that will ship.

A LoRA adapter trained on the fp32 base and then merged and rounded to int4 loses what the rounding moves
(2.2 points of held-out accuracy on the emotion demo). Here the base is rounded first, with the
round-to-nearest grid of honed's quantized checkpoints (``honed.models.quantized``: per group of
``group_size`` inputs, ``w = (code - zero) * scale``, the layout of onnxruntime's MatMulNBits), the frozen
base weights are replaced by exactly the values those codes stand for, and the adapter trains on top. No
straight-through estimator is needed: the rounded base is frozen, and the adapter stays in float, unmerged.

The pass writes the rounded base as a quantized checkpoint (Olive's format) beside the adapter; ModelBuilder
copies its codes unchanged into MatMulNBits weights and adds the adapter as float MatMuls beside them
(``honed.passes._lora_graph``), so what training saw is what ships. The idea of training against the
quantized weights is QLoRA's and QA-LoRA's (Dettmers et al. 2023; Xu et al. 2023, arXiv:2309.14717); unlike
QA-LoRA, the adapter is not merged into the zero points, which MatMulNBits stores as integers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from honed.errors import UserError
from honed.models.quantized import dequantize_codes, quant_params, quantize_codes, save_checkpoint

log = logging.getLogger("honed")


def rtn_codes(weight: Any, bits: int, group_size: int, sym: bool) -> tuple[Any, Any, Any]:
    """Round-to-nearest codes (out, in) uint8, scales (out, in / group_size) and zero points (same shape,
    uint8) of ``weight`` (out, in), group by group along the inputs; ``weight`` in any float dtype."""
    import torch

    w = weight.detach().float()
    out, n_in = w.shape
    groups = w.reshape(out * (n_in // group_size), group_size)
    scale, zero = quant_params(groups, bits, sym)
    codes = quantize_codes(groups, scale, zero, bits)
    return (codes.reshape(out, n_in).to(torch.uint8), scale.reshape(out, -1),
            zero.reshape(out, -1).to(torch.uint8))


def quantize_base(model: Any, config: Any, key: str) -> dict[str, tuple[Any, Any, Any, int]]:
    """Round every linear of ``model``'s decoder layers to ``config.bits`` and the LM head to
    ``config.lm_head_bits`` in place: each weight becomes the float values its codes stand for.

    Returns {module name: (codes, scales, zeros, bits)} for :func:`save_quantized_base`. An embedding tied to
    the LM head is untied and stays float. Raises UserError when
    ``config.group_size`` does not divide a linear's input size.
    """
    import torch

    head = model.get_output_embeddings()
    out: dict[str, tuple[Any, Any, Any, int]] = {}
    with torch.no_grad():
        for name, mod in model.named_modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            bits = config.lm_head_bits if mod is head else config.bits
            if mod.in_features % config.group_size:
                raise UserError(f"{key}.group_size: {config.group_size} does not divide the input size "
                                f"{mod.in_features} of '{name}'; choose a group size that divides it (e.g. 32)")
            codes, scales, zeros = rtn_codes(mod.weight, bits, config.group_size, config.sym)
            deq = dequantize_codes(codes.float(), scales, zeros.float(), config.group_size)
            if mod is head and head.weight is model.get_input_embeddings().weight:
                # Untied: the embedding stays float. (Tied to the head's int8 codes, onnxruntime-genai 0.18's
                # builder writes a GatherBlockQuantized that onnxruntime refuses: "scales must have the same
                # rank as data".)
                mod.weight = torch.nn.Parameter(deq.to(mod.weight.dtype), requires_grad=False)
                model.config.tie_word_embeddings = False
            else:
                mod.weight.copy_(deq.to(mod.weight.dtype))
            out[name] = (codes, scales, zeros, bits)
    if not out:
        raise UserError(f"{key}: the model has no linear layers to quantize")
    return out


def save_quantized_base(model: Any, quantized: dict[str, tuple[Any, Any, Any, int]], config: Any,
                        tokenizer: Any, out: Path) -> None:
    """Write ``model`` (after :func:`quantize_base`) as a quantized checkpoint in Olive's format
    (``honed.models.quantized.save_checkpoint``; the LM head's width in its ``overrides``)."""
    save_checkpoint(model, tokenizer, quantized, bits=config.bits, group_size=config.group_size, sym=config.sym,
                    algorithm="rtn", out=out)
