"""Gptq: calibrated int4/int8 weight-only quantization of a Hugging Face causal LM.

GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", arXiv:2210.17323; reference code IST-DASLab/gptq): each linear layer's weights are rounded one
input column at a time, and the rounding error of each column is spread over the columns not yet rounded, in
proportion to the inverse Hessian ``H = 2 X X^T`` of the layer's calibration inputs ``X``. Decoder layers are
processed in order, each fed the outputs of the already-quantized layers before it.

The output is a Hugging Face folder in Olive's quantized format (``honed.models.quantized``): ModelBuilder
turns it into an onnxruntime-genai folder whose MatMulNBits weights are these codes, unchanged, and honed's
PyTorch runtime evaluates its dequantized weights.

Why honed's own ~100 lines and not a library: the maintained GPTQ libraries either need CUDA kernels to build or
quantize (gptqmodel, auto-gptq, which is archived), or write formats the onnxruntime-genai builder does not read
(llm-compressor's compressed-tensors); Olive's Gptq is likewise its own code on PyTorch weights.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from honed.data.batches import CalibrationRow, calibration_rows
from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.loaders import load_model, load_tokenizer, trust_kwargs
from honed.models.quantized import (
    decoder_layers,
    dequantize_codes,
    quant_params,
    quantize_codes,
    save_checkpoint,
)
from honed.passes._fidelity import FidelityOptions, record_fidelity
from honed.passes._sensitivity import SensitivityOptions, select_int8_groups, write_report
from honed.passes.base import Pass, PassContext, register_pass

log = logging.getLogger("honed")


class GptqConfig(FidelityOptions, SensitivityOptions):
    """GPTQ options (Olive's Gptq names and defaults; mixed_precision and the sensitivity fields are honed's)."""

    bits: Literal[4, 8] = Field(4, description="Bits per weight.")
    group_size: Literal[16, 32, 64, 128, 256] = Field(
        128, description="Input features per group sharing one scale and zero point (MatMulNBits block size)."
    )
    sym: StrictBool = Field(False, description="Symmetric codes (zero point fixed at 2**(bits-1)); false: "
                                                "asymmetric, a zero point per group.")
    damp_percent: float = Field(0.01, gt=0, le=1, description="Dampening added to the Hessian's diagonal, as a "
                                                              "fraction of its mean (numerical stability).")
    desc_act: StrictBool | None = Field(
        None, description="Act-order (columns in decreasing Hessian diagonal). Not supported with groups: only "
        "None or false (Olive, too, allows it only with group_size -1, which MatMulNBits cannot hold)."
    )

    @field_validator("desc_act")
    @classmethod
    def _no_act_order(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("desc_act true is not supported with groups (MatMulNBits has no column permutation); "
                             "remove it")
        return v
    true_sequential: StrictBool = Field(
        False, description="Quantize the linears of a decoder layer in groups, in the order the layer runs them "
        "(q/k/v, then o, then gate/up, then down), each group calibrated on inputs that the earlier groups' "
        "quantized weights produced (auto-gptq's default); false: all linears of a layer from one pass (Olive's "
        "Gptq). True costs one extra forward pass per group."
    )
    lm_head: StrictBool = Field(False, description="Quantize the LM head too (else ModelBuilder rounds it, "
                                                   "by default to int8).")
    data_config: str = Field(description="Name of the data config whose rows calibrate the Hessians (Olive's "
                             "default, wikitext-2 from the hub, is not fetched: name your own).")
    num_samples: int = Field(128, gt=0, description="Calibration rows (fewer when the data config's "
                             "max_samples says so).")
    block_size: int = Field(128, gt=0, description="Columns updated together (speed only; the result is the "
                            "same up to float rounding).")
    answer_weight: float = Field(
        0, ge=0, le=1000, description="Extra weight in the Hessians of the positions that predict each calibration "
        "row's answer (the tokens completion-only loss trains on, e.g. the label of a classification fine-tune; "
        "text_template rows with a prompt field and an answer field): each such position counts 1 + answer_weight "
        "times. 0: every position alike (GPTQ as published). Rows without a prompt/answer split count alike either "
        "way."
    )
    mixed_precision: Literal["none", "measured"] = Field(
        "none", description="'measured' (bits 4): before quantizing, measure how far rounding each decoder "
        "layer's linear group (q/k/v, o, gate/up, down) alone to int4 moves the model on sensitivity_data_config "
        "(default: data_config), as ModelBuilder's matmul_mixed_precision 'measured' does, and quantize the "
        "costliest groups to 8 bits instead (GPTQ too) within mixed_precision_budget; the choice goes to "
        "sensitivity.json and the checkpoint's per-module overrides, which ModelBuilder builds unchanged. "
        "bench/fidelity.py measures what it buys."
    )

    @model_validator(mode="after")
    def _measured_needs_int4(self) -> GptqConfig:
        if self.mixed_precision == "measured" and self.bits != 4:
            raise ValueError("mixed_precision 'measured' keeps some linears at 8 bits among 4-bit ones; set bits 4")
        return self


@dataclass
class QuantizedLinear:
    """Integer codes (out, in) in [0, 2**bits), scales and zero points (out, in / group_size) of one linear;
    ``bits`` None: the pass's width."""

    codes: Any
    scales: Any
    zeros: Any
    bits: int | None = None


def gptq_linear(weight: Any, hessian: Any, cfg: GptqConfig, bits: int | None = None) -> QuantizedLinear:
    """GPTQ of one weight (out, in) given its Hessian (in, in) to ``bits`` (default ``cfg.bits``); the algorithm
    of the paper's Algorithm 1 with lazy batch updates of ``cfg.block_size`` columns and per-group parameters
    found on the updated weights."""
    import torch

    bits = bits or cfg.bits

    W = weight.detach().clone().float()
    H = hessian.clone()
    cols = W.shape[1]
    dead = torch.diag(H) == 0  # inputs that were always zero: their weights do not matter
    H[dead, dead] = 1
    W[:, dead] = 0
    H += cfg.damp_percent * torch.mean(torch.diag(H)) * torch.eye(cols)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    G = cfg.group_size
    block = max(cfg.block_size // G, 1) * G  # blocks hold whole groups
    codes = torch.zeros_like(W)
    scales = torch.zeros(W.shape[0], cols // G)
    zeros = torch.zeros_like(scales)
    for b1 in range(0, cols, block):
        b2 = min(b1 + block, cols)
        W1, Hinv1 = W[:, b1:b2].clone(), Hinv[b1:b2, b1:b2]
        err = torch.zeros_like(W1)
        for i in range(b2 - b1):
            if (b1 + i) % G == 0:
                g = (b1 + i) // G
                scales[:, g], zeros[:, g] = quant_params(W1[:, i:i + G], bits, cfg.sym)
            w, d = W1[:, i], Hinv1[i, i]
            q = quantize_codes(w[:, None], scales[:, g], zeros[:, g], bits)[:, 0]
            codes[:, b1 + i] = q
            e = (w - (q - zeros[:, g]) * scales[:, g]) / d
            W1[:, i:] -= e[:, None] @ Hinv1[i, i:][None, :]
            err[:, i] = e
        W[:, b2:] -= err @ Hinv[b1:b2, b2:]
    return QuantizedLinear(codes.to(torch.uint8), scales, zeros.to(torch.uint8), bits)


def dequantized(q: QuantizedLinear, group_size: int) -> Any:
    """The float weight (out, in) that ``q`` stands for (the checkpoint format's own formula)."""
    return dequantize_codes(q.codes.float(), q.scales, q.zeros.float(), group_size)


class _Captured(Exception):
    """Stops the model's forward once the first decoder layer's inputs are recorded."""


class _Hessian:
    """Running ``2/n * sum x x^T`` over the rows fed to one linear (Olive's and the reference's update)."""

    def __init__(self, n_in: int) -> None:
        import torch

        self.H = torch.zeros(n_in, n_in)
        self.n = 0

    def add(self, x: Any, weight: Any = None) -> None:
        """Add the rows of ``x`` (..., in); ``weight`` (rows,): each row's weight (None: 1 each)."""
        import torch

        x = x.reshape(-1, x.shape[-1]).float()
        w = torch.ones(x.shape[0]) if weight is None else weight.reshape(-1).float()
        total = float(w.sum())
        if total <= 0:
            return
        self.H *= self.n / (self.n + total)
        self.n += total
        x = x * torch.sqrt(2 * w / self.n)[:, None]
        self.H += x.T @ x


def _run_order(layer: Any, inputs: list[tuple[tuple, dict]], linears: dict[str, Any]) -> list[list[str]]:
    """The layer's linears in the order it calls them, grouped by shared input (q/k/v, o, gate/up, down)."""
    seen: list[tuple[str, int]] = []
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: seen.append((n, id(a[0])))) for n, m in linears.items()]
    try:
        layer(*inputs[0][0], **inputs[0][1])
    finally:
        for h in hooks:
            h.remove()
    groups: list[list[str]] = []
    last = None
    for name, x in seen:
        if any(name in g for g in groups):
            continue
        if x == last:
            groups[-1].append(name)
        else:
            groups.append([name])
        last = x
    return groups + [[n] for n in linears if not any(n in g for g in groups)]


def _layer_output(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def gptq_model(model: Any, samples: list[Any], cfg: GptqConfig, progress: Any = None,
               bits: dict[str, int] | None = None, weights: list[Any] | None = None) -> dict[str, QuantizedLinear]:
    """Quantize every ``nn.Linear`` in the decoder layers of ``model`` (and its LM head when ``cfg.lm_head``)
    on the token-id tensors ``samples`` (each (1, seq)) to ``cfg.bits``, or to ``bits[module name]`` where given;
    each linear's weight is replaced by its dequantized value in place. ``weights``: per sample, each position's
    weight in the Hessians ((seq,) floats, or None for 1 each). Returns the codes by module name."""
    import torch

    weights = weights or [None] * len(samples)
    current: list[Any] = [None]  # the weight of the sample being fed, read by the Hessian hooks

    prefix, layers = decoder_layers(model)
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
            linears = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
            groups = _run_order(layer, inputs, linears) if cfg.true_sequential else [list(linears)]
            for group in groups:
                stats = {n: _Hessian(linears[n].in_features) for n in group}
                hooks = [linears[n].register_forward_pre_hook(lambda m, a, h=stats[n]: h.add(a[0], current[0]))
                         for n in group]
                for (args, kwargs), w in zip(inputs, weights, strict=True):
                    current[0] = w
                    layer(*args, **kwargs)
                for h in hooks:
                    h.remove()
                for n in group:
                    name = f"{prefix}.{idx}.{n}"
                    q = gptq_linear(linears[n].weight, stats[n].H, cfg, (bits or {}).get(name))
                    linears[n].weight.copy_(dequantized(q, cfg.group_size).to(linears[n].weight.dtype))
                    out[name] = q
            inputs = [((_layer_output(layer(*args, **kwargs)), *args[1:]), kwargs) for args, kwargs in inputs]
            if progress is not None:
                progress.advance(1)
            log.info("Gptq: decoder layer %d/%d quantized", idx + 1, len(layers))
        if cfg.lm_head:
            head = model.get_output_embeddings()
            norm = _final_norm(model, prefix)
            stats = _Hessian(head.in_features)
            for (args, _), w in zip(inputs, weights, strict=True):
                stats.add(norm(args[0]) if norm is not None else args[0], w)
            q = gptq_linear(head.weight, stats.H, cfg)
            head.weight = torch.nn.Parameter(dequantized(q, cfg.group_size).to(head.weight.dtype))  # unties
            out["lm_head"] = q
    return out


def _final_norm(model: Any, layers_prefix: str) -> Any:
    """The norm applied between the last decoder layer and the LM head (``model.norm`` in Llama-like models)."""
    parent = model.get_submodule(layers_prefix.rsplit(".", 1)[0]) if "." in layers_prefix else model
    return getattr(parent, "norm", None) or getattr(parent, "final_layernorm", None)


GROUP_SIZES = (16, 32, 64, 128, 256)


def _check_group_size(model: ModelHandle, group_size: int, pass_name: str) -> None:
    """UserError, before the model loads, when ``group_size`` does not divide the linears' input sizes (hidden
    and intermediate size in config.json); the message lists the group sizes that do."""
    from transformers import AutoConfig

    from honed.models.loaders import trusts_remote_code

    cfg = AutoConfig.from_pretrained(model.path, trust_remote_code=trusts_remote_code(model))
    sizes = {k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size") if isinstance(getattr(cfg, k, None), int)}
    if all(n % group_size == 0 for n in sizes.values()):
        return
    fits = [g for g in GROUP_SIZES if all(n % g == 0 for n in sizes.values())]
    shown = ", ".join(f"{k} {v}" for k, v in sizes.items())
    raise UserError(f"{pass_name}: group_size {group_size} does not divide the model's {shown}; set group_size to "
                    f"{' or '.join(map(str, fits)) or 'another value'}")


class Gptq(Pass):
    name = "Gptq"
    description = "Quantize an HF causal LM's linear weights to int4/int8 with GPTQ, calibrated on a data config."
    config_class = GptqConfig
    requires = ("torch", "transformers")
    libraries = ("torch", "transformers")
    accepts: ClassVar[tuple[str, ...]] = ("hf",)
    produces: ClassVar[tuple[str, ...]] = ("hf",)

    def run(self, model: ModelHandle, config: GptqConfig, output_dir: Path, ctx: PassContext) -> ModelHandle:
        sensitivity = config.sensitivity_data_config or config.data_config
        if config.mixed_precision == "measured":
            ctx.data_config(sensitivity, "sensitivity_data_config", "Gptq")

        def quantize(net: Any, rows: list[CalibrationRow], bar: Any) -> dict[str, QuantizedLinear]:
            widths: dict[str, int] = {}
            if config.mixed_precision == "measured":  # measured on the float model, before any rounding
                chosen, info = select_int8_groups(
                    net, load_tokenizer(model), ctx.data_configs[sensitivity], block_size=config.group_size,
                    symmetric=config.sym, budget_bits=config.mixed_precision_budget,
                    method=config.sensitivity_method, num_samples=config.sensitivity_samples,
                    positions=config.sensitivity_positions, fuse_gate_up=True, progress=ctx.task,
                    skip={"/lm_head/MatMul"})  # one width per HF linear
                widths = {m.module: 8 for g in chosen for m in g.members}
                write_report(info, sensitivity, output_dir, ctx)
            weights = [None if r.answer is None or not config.answer_weight else 1 + config.answer_weight * r.answer
                       for r in rows]
            return gptq_model(net, [r.ids for r in rows], config, bar, widths, weights)

        out = calibrate_and_save(model, config.data_config, config.num_samples, config.group_size, ctx, "GPTQ",
                                 quantize, bits=config.bits, sym=config.sym, output_dir=output_dir)
        record_fidelity(model, out, config, ctx)  # the fp32 working copy is freed: both models load to compare
        return out


def calibrate_and_save(model: ModelHandle, data_config: str, num_samples: int, group_size: int, ctx: PassContext,
                       label: str, quantize: Callable[[Any, list[CalibrationRow], Any], dict[str, QuantizedLinear]], *,
                       bits: int, sym: bool, output_dir: Path) -> ModelHandle:
    """What Gptq and Awq share: check the data config and group size, load the fp32 model and ``num_samples``
    calibration rows, ``quantize(model, rows, progress bar)`` it layer by layer, and write the codes as a
    quantized checkpoint; the handle of ``output_dir``. Raises UserError for an undefined data config or a
    group size that does not divide the linears."""
    rows = ctx.data_config(data_config, "data_config")
    _check_group_size(model, group_size, ctx.pass_name)
    tok = load_tokenizer(model)
    net = load_model(model, dtype="float32")
    samples = calibration_rows(rows, tok, num_samples)
    bar = ctx.task(f"{label} layers", len(decoder_layers(net)[1]))
    try:
        quantized = quantize(net, samples, bar)
    finally:
        bar.close()
    save_checkpoint(net, tok, {m: (q.codes, q.scales, q.zeros, q.bits or bits) for m, q in quantized.items()},
                    bits=bits, group_size=group_size, sym=sym, algorithm=label.lower(), out=output_dir)
    ctx.metrics["calibration_samples"] = len(samples)
    ctx.metrics["quantized_linears"] = len(quantized)
    return ModelHandle(kind="hf", path=str(output_dir), task=model.task, load_kwargs=trust_kwargs(model),
                       attributes={**model.attributes, "quantization": f"int{bits}-{label.lower()}"})


register_pass(Gptq)
