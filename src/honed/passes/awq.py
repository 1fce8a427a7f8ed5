"""Awq: activation-aware int4/int8 weight-only quantization of a Llama-architecture causal LM.

AWQ (Lin et al., 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration",
arXiv:2306.00978; reference code mit-han-lab/llm-awq and casper-hansen/AutoAWQ): the few input channels that
carry large activations matter most, so before rounding, each group of linears that reads one input ``x``
(tokens, in) has its weight columns multiplied by a per-channel scale ``s`` (in,), and the op that produces
``x`` (the RMSNorm before q/k/v and gate/up, ``v_proj`` before ``o_proj``, ``up_proj`` before ``down_proj``) has
its output divided by ``s``: the float model is unchanged, and the salient channels get finer rounding steps.
``s = mean|x|^a`` (``/ mean|w|^(1-a)`` with ``duo_scaling``, AutoAWQ's default), with ``a`` the point of
``{0, 1/20, ..., 19/20}`` that minimizes the mean squared error of the group's quantized outputs on the layer's
calibration inputs. A clipping search (AutoAWQ's ``apply_clip``) then shrinks each group's weight range where
that lowers the quantized outputs' error. The codes use GPTQ's grid (``honed.passes.gptq.quant_params``), and
the output is Olive's quantized format exactly as Gptq writes it: ModelBuilder builds it unchanged.

One simplification against AutoAWQ: the scale search measures the error of the group's linear outputs
(AutoAWQ measures the attention block's or the MLP's output), which lets it use every calibration token at the
cost of one ``x^T x`` per group (``search_scale``).

Why honed's own ~200 lines and not a library (checked with this venv's torch 2.13 and transformers 5.25):
llm-compressor 0.14's AWQModifier pins transformers <= 5.17 and writes compressed-tensors, which the
onnxruntime-genai builder (0.18) reads only as FP8/NVFP4 on CUDA; auto-round 0.16.1's AWQ does run on CPU and
its ``auto_awq`` output builds with ModelBuilder, but transformers loads that format only with gptqmodel (a CUDA
kernel build), so honed's PyTorch runtime could not evaluate or fine-tune the result (and it rounds with its own
RTN stage, not the grid Gptq's checkpoints use); AutoAWQ itself is archived.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, StrictBool

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.quantized import decoder_layers, quant_params, quantize_codes
from honed.passes.base import Pass, PassConfig, PassContext, register_pass
from honed.passes.gptq import QuantizedLinear, _Captured, _layer_output, calibrate_and_save, dequantized

log = logging.getLogger("honed")

N_GRID = 20
"""Points of the scale-exponent grid ``a = i / N_GRID`` and of the clipping grid (AutoAWQ's n_grid)."""
MAX_SHRINK = 0.5
"""The clipping search tries group ranges from 1 down to ``1 - MAX_SHRINK`` of the original (AutoAWQ's)."""
CLIP_TOKENS = 512
"""Calibration tokens the clipping search uses per group (AutoAWQ's n_sample_token)."""
NO_CLIP = ("q_proj", "k_proj")
"""Linears whose range is not clipped: their outputs meet in a softmax, where a clip's error is not the output
error the search measures (AutoAWQ skips them too)."""


class AwqConfig(PassConfig):
    """AWQ options (Olive's AutoAWQQuantizer names and defaults)."""

    w_bit: Literal[4, 8] = Field(4, description="Bits per weight.")
    q_group_size: Literal[16, 32, 64, 128, 256] = Field(
        128, description="Input features per group sharing one scale and zero point (MatMulNBits block size)."
    )
    zero_point: StrictBool = Field(True, description="Asymmetric codes, a zero point per group; false: symmetric "
                                                     "(zero point fixed at 2**(w_bit-1)).")
    duo_scaling: StrictBool = Field(True, description="Scale by mean|x|^a / mean|w|^(1-a) (activations and "
                                                      "weights, AutoAWQ's default); false: mean|x|^a only.")
    apply_clip: StrictBool = Field(True, description="Search each group's weight range (shrunk by up to half) "
                                                     "for the lowest quantized output error (AutoAWQ's default).")
    data_config: str = Field(description="Name of the data config whose rows calibrate the scales (Olive's "
                             "default, pile-val from the hub, is not fetched: name your own).")
    num_samples: int = Field(128, gt=0, description="Calibration rows (fewer when the data config's "
                             "max_samples says so).")


def pseudo_quantize(w: Any, bits: int, group_size: int, sym: bool) -> Any:
    """The float weight (out, in) that group-wise codes of ``w`` on GPTQ's grid stand for."""
    rows = w.reshape(-1, group_size)
    scale, zero = quant_params(rows, bits, sym)
    codes = quantize_codes(rows, scale, zero, bits)
    return ((codes - zero[:, None]) * scale[:, None]).reshape(w.shape)


def quantize_linear(w: Any, cfg: AwqConfig) -> QuantizedLinear:
    """Codes (out, in), scales and zero points (out, in / q_group_size) of the (scaled, clipped) weight ``w``."""
    import torch

    out, n_in = w.shape
    rows = w.detach().float().reshape(-1, cfg.q_group_size)
    scale, zero = quant_params(rows, cfg.w_bit, not cfg.zero_point)
    codes = quantize_codes(rows, scale, zero, cfg.w_bit)
    groups = n_in // cfg.q_group_size
    return QuantizedLinear(codes.reshape(out, n_in).to(torch.uint8), scale.reshape(out, groups),
                           zero.reshape(out, groups).to(torch.uint8))


def _subsample(x: Any, limit: int) -> Any:
    """At most ``limit`` evenly spaced rows of ``x`` (tokens, in)."""
    import torch

    if x.shape[0] <= limit:
        return x
    return x[torch.linspace(0, x.shape[0] - 1, limit).long()]


def candidate_scales(x: Any, weights: list[Any], group_size: int, duo: bool) -> list[Any]:
    """The ``N_GRID`` per-channel scales (in,) the search tries for inputs ``x`` (tokens, in) of the linears
    ``weights`` (each (out, in)): ``mean|x|^a [/ mean|w|^(1-a)]`` for ``a = i / N_GRID``, clamped at 1e-4 and
    divided by ``sqrt(max * min)`` (AutoAWQ's normalization, which keeps the scales around 1)."""
    import torch

    x_mean = x.abs().float().mean(0)
    w = torch.cat([w.detach().float() for w in weights], 0)
    grouped = w.abs().reshape(-1, group_size)
    w_mean = (grouped / grouped.amax(dim=1, keepdim=True).clamp(min=1e-12)).reshape(w.shape).mean(0)
    out = []
    for i in range(N_GRID):
        a = i / N_GRID
        s = x_mean.pow(a) / w_mean.pow(1 - a).clamp(min=1e-4) if duo else x_mean.pow(a)
        s = s.clamp(min=1e-4)
        out.append(s / (s.max() * s.min()).sqrt())
    return out


def search_scale(x: Any, weights: list[Any], cfg: AwqConfig) -> Any:
    """The per-channel scale (in,) among :func:`candidate_scales` whose quantized, rescaled linears
    ``Q(W * s) / s`` give outputs on ``x`` (tokens, in) closest (mean squared error) to the float outputs.

    The error of a weight error ``D`` (out, in) over all tokens is ``sum((D @ H) * D) / (tokens * out)`` with
    ``H = x^T x`` (in, in), formed once: each candidate costs in * in * out, not tokens * in * out."""
    import torch

    xf = x.float()
    H = xf.T @ xf
    w = torch.cat([w.detach().float() for w in weights], 0)
    norm = xf.shape[0] * w.shape[0]
    best, best_err = None, float("inf")
    for s in candidate_scales(x, weights, cfg.q_group_size, cfg.duo_scaling):
        d = pseudo_quantize(w * s[None, :], cfg.w_bit, cfg.q_group_size, not cfg.zero_point) / s[None, :] - w
        err = ((d @ H) * d).sum().item() / norm
        if err < best_err:
            best, best_err = s, err
    return best


def search_clip(x: Any, w: Any, cfg: AwqConfig) -> Any:
    """Per (row, group) the largest |weight| (out, in / q_group_size) to clamp ``w`` (out, in) to: the one of
    ``max|w_group| * (1 - i / N_GRID)``, ``i < MAX_SHRINK * N_GRID``, whose quantized group gives the lowest
    squared error of that group's contribution to the outputs on ``x`` (tokens, in)."""
    import torch

    G = cfg.q_group_size
    xs = _subsample(x.float(), CLIP_TOKENS)
    w = w.detach().float()
    out, n_in = w.shape
    xg = xs.reshape(xs.shape[0], n_in // G, G).transpose(0, 1)  # (groups, tokens, G)
    wg = w.reshape(out, n_in // G, G).transpose(0, 1)  # (groups, out, G)
    want = xg @ wg.transpose(1, 2)  # (groups, tokens, out)
    org_max = wg.abs().amax(dim=-1)  # (groups, out)
    best_max = org_max.clone()
    best_err = torch.full_like(org_max, float("inf"))
    for i in range(int(MAX_SHRINK * N_GRID)):
        m = org_max * (1 - i / N_GRID)
        clipped = torch.maximum(torch.minimum(wg, m[..., None]), -m[..., None])
        q = pseudo_quantize(clipped.reshape(-1, G), cfg.w_bit, G, not cfg.zero_point).reshape(wg.shape)
        err = (xg @ q.transpose(1, 2) - want).pow(2).mean(dim=1)  # (groups, out)
        better = err < best_err
        best_err[better], best_max[better] = err[better], m[better]
    return best_max.T.contiguous()


def clip_weight(w: Any, max_val: Any, group_size: int) -> Any:
    """``w`` (out, in) clamped per (row, group) to ``[-max_val, max_val]`` (max_val: (out, in / group_size))."""
    import torch

    m = max_val.repeat_interleave(group_size, dim=1).to(w.dtype)
    return torch.maximum(torch.minimum(w, m), -m)


_NAMES = {"input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
          "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}


def scale_groups(layer: Any) -> list[tuple[str, list[str]]]:
    """(producer, linears reading its output) of one Llama-architecture decoder layer, in run order: the norm
    before q/k/v, v before o (only when v's outputs are o's inputs, i.e. without grouped-query attention), the
    norm before gate/up, up before down. Raises UserError for another layout (e.g. Phi-3's fused projections)."""
    modules = dict(layer.named_modules())
    missing = sorted(_NAMES - set(modules))
    if missing:
        fused = [n for n in ("self_attn.qkv_proj", "mlp.gate_up_proj") if n in modules]
        what = f"fused projections ({', '.join(fused)})" if fused else f"no {', '.join(missing)}"
        raise UserError(f"Awq: {type(layer).__name__} has {what}; Awq scales Llama-architecture layers (Llama, "
                        "Mistral, Qwen2/3, SmolLM): use the Gptq pass for this model")
    groups = [("input_layernorm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"])]
    if modules["self_attn.v_proj"].out_features == modules["self_attn.o_proj"].in_features:
        groups.append(("self_attn.v_proj", ["self_attn.o_proj"]))
    groups += [("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"]), ("mlp.up_proj", ["mlp.down_proj"])]
    return groups


def fold_scale(prev: Any, linears: list[Any], s: Any) -> None:
    """Divide ``prev``'s output by ``s`` (in,) (a norm's weight and bias, or a linear's rows and bias) and multiply
    the columns of each of ``linears`` by ``s``: the composition computes what it did before."""
    import torch

    s = s.to(prev.weight.dtype)
    if isinstance(prev, torch.nn.Linear):
        prev.weight.div_(s[:, None])
    else:
        prev.weight.div_(s)
    if getattr(prev, "bias", None) is not None:
        prev.bias.div_(s)
    for lin in linears:
        lin.weight.mul_(s[None, :].to(lin.weight.dtype))


def awq_model(model: Any, samples: list[Any], cfg: AwqConfig, progress: Any = None,
              quantize: bool = True) -> dict[str, QuantizedLinear]:
    """AWQ on every decoder layer of ``model`` with the token-id tensors ``samples`` (each (1, seq)): scales are
    searched and folded in place; with ``quantize``, ranges are clipped and each linear's weight is replaced by
    its dequantized value. Each layer is calibrated on the float outputs of the layers before it (as AutoAWQ).
    Returns the codes by module name (empty without ``quantize``)."""
    import torch

    prefix, layers = decoder_layers(model)
    for layer in layers:
        scale_groups(layer)  # refuse an unhandled architecture before any work
    inputs: list[tuple[tuple, dict]] = []

    def capture(_m: Any, args: tuple, kwargs: dict) -> None:
        inputs.append((args, kwargs))
        raise _Captured

    hook = layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        for ids in samples:
            with contextlib.suppress(_Captured):
                model(input_ids=ids, use_cache=False)
    hook.remove()
    out: dict[str, QuantizedLinear] = {}
    with torch.no_grad():
        for idx, layer in enumerate(layers):
            modules = dict(layer.named_modules())
            linears = {n: m for n, m in modules.items() if isinstance(m, torch.nn.Linear)}
            feats: dict[str, list[Any]] = {n: [] for n in linears}
            hooks = [m.register_forward_pre_hook(lambda m, a, f=feats[n]: f.append(a[0].reshape(-1, a[0].shape[-1])))
                     for n, m in linears.items()]
            try:
                nxt = [((_layer_output(layer(*args, **kwargs)), *args[1:]), kwargs) for args, kwargs in inputs]
            finally:
                for h in hooks:
                    h.remove()
            x = {n: torch.cat(v).float() for n, v in feats.items() if v}
            for prev, names in scale_groups(layer):
                s = search_scale(x[names[0]], [modules[n].weight for n in names], cfg)
                fold_scale(modules[prev], [modules[n] for n in names], s)
                for n in names:
                    x[n] = x[n] / s[None, :]
            if quantize:
                for n, lin in linears.items():
                    if cfg.apply_clip and n.rsplit(".", 1)[-1] not in NO_CLIP:
                        lin.weight.copy_(clip_weight(lin.weight, search_clip(x[n], lin.weight, cfg),
                                                     cfg.q_group_size))
                    q = quantize_linear(lin.weight, cfg)
                    lin.weight.copy_(dequantized(q, cfg.q_group_size).to(lin.weight.dtype))
                    out[f"{prefix}.{idx}.{n}"] = q
            inputs = nxt
            if progress is not None:
                progress.advance(1)
            log.info("Awq: decoder layer %d/%d %s", idx + 1, len(layers), "quantized" if quantize else "scaled")
    return out


class Awq(Pass):
    name = "Awq"
    description = ("Quantize an HF Llama-architecture LM's linear weights to int4/int8 with AWQ, calibrated on a "
                   "data config.")
    config_class = AwqConfig
    requires = ("torch", "transformers")
    libraries = ("torch", "transformers")
    accepts: ClassVar[tuple[str, ...]] = ("hf",)
    produces: ClassVar[tuple[str, ...]] = ("hf",)

    def run(self, model: ModelHandle, config: AwqConfig, output_dir: Path, ctx: PassContext) -> ModelHandle:
        return calibrate_and_save(model, config.data_config, config.num_samples, config.q_group_size, ctx, "AWQ",
                                  lambda net, rows, bar: awq_model(net, [r.ids for r in rows], config, bar),
                                  bits=config.w_bit, sym=not config.zero_point, output_dir=output_dir)


register_pass(Awq)
