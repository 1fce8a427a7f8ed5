"""One autograd node per LoRA layer: ``y = x W^T + b + s * dropout(x) A^T B^T``.

Why: peft builds a LoRA layer's output from separate ops (base linear, dropout, A, B, a multiply by
the scaling, an add), and autograd keeps a node and a full-size intermediate for each.  On a CPU
the extra full passes over ``[tokens, features]`` tensors and the per-op overhead cost a tenth of a
SmolLM2 step.  Here the scaled LoRA product is accumulated straight into the base output by one
``addmm_`` and the backward pass computes exactly the three gradients it needs (x, A, B).  The maths is
peft's; ``tests/test_fused_lora.py`` checks outputs and gradients against it.

Only plain LoRA layers on CPU qualify (one active adapter, an ``nn.Linear`` base, no DoRA, no LoRA
bias); any other layer, and any call with extra arguments, runs peft's forward.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from honed.training.dropout import SPARSE_MAX_P, sparse_dropout


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                b: torch.Tensor, scaling: float, p: float) -> torch.Tensor:
        # The adapter may be kept in a wider dtype than the base (peft's autocast_adapter_dtype: a bf16
        # base, fp32 A and B): as in peft, the LoRA branch and the sum run in the adapter's dtype.
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        keep = 1.0 / (1.0 - p) if p > 0 else 1.0
        xd, dropped = sparse_dropout(x2.to(a.dtype), p) if p > 0 else (x2.to(a.dtype), None)
        y = F.linear(x2, weight, bias).to(a.dtype)
        h = xd @ a.t()
        y.addmm_(h, b.t(), alpha=scaling)
        ctx.save_for_backward(weight, a, b, xd, h, dropped)
        ctx.scaling, ctx.keep, ctx.shape = scaling, keep, shape
        return y.view(*shape[:-1], y.shape[-1]).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, a, b, xd, h, dropped = ctx.saved_tensors
        gy2 = gy.reshape(-1, gy.shape[-1])
        gyl = gy2.to(a.dtype)
        gh = gyl @ (b * ctx.scaling)  # [tokens, r]
        ga = gb = gx = None
        if ctx.needs_input_grad[4]:
            gb = torch.mm(gyl.t(), h).mul_(ctx.scaling)
        if ctx.needs_input_grad[3]:
            ga = torch.mm(gh.t(), xd)
        if ctx.needs_input_grad[0]:
            lora_gx = gh @ a
            if dropped is not None:
                lora_gx.mul_(ctx.keep).view(-1).index_fill_(0, dropped, 0)
            if lora_gx.dtype == weight.dtype:
                gx = torch.addmm(lora_gx, gy2, weight)
            else:
                gx = torch.mm(gy2.to(weight.dtype), weight).add_(lora_gx.to(weight.dtype))
            gx = gx.view(ctx.shape)
        # The base weight and bias are frozen (checked before the call): no gradient for them.
        return gx, None, None, ga, gb, None, None


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft ``lora.Linear.forward`` for the plain case; anything else goes to peft's own."""
    adapters = [n for n in self.active_adapters if n in self.lora_A]
    if args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1:
        return self._honed_peft_forward(x, *args, **kwargs)
    name = adapters[0]
    base, a, b = self.base_layer, self.lora_A[name].weight, self.lora_B[name].weight
    drop = self.lora_dropout[name]
    p = drop.p if isinstance(drop, torch.nn.Dropout) and drop.training else 0.0
    if (name in self.lora_variant or base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad)
            or x.dtype != base.weight.dtype or a.dtype != b.dtype or x.device.type != "cpu" or p > SPARSE_MAX_P):
        return self._honed_peft_forward(x, *args, **kwargs)
    return _LoraLinear.apply(x, base.weight, base.bias, a, b, float(self.scaling[name]), float(p))


def _eligible(module: Any) -> bool:
    from peft.tuners.lora.layer import Linear as LoraLinear

    return (type(module) is LoraLinear and type(module.base_layer) is torch.nn.Linear
            and not getattr(module, "fan_in_fan_out", False)
            and all(getattr(m, "bias", None) is None for m in module.lora_B.values())
            and all(isinstance(d, (torch.nn.Dropout, torch.nn.Identity)) for d in module.lora_dropout.values()))


@contextlib.contextmanager
def fused_lora(model: Any) -> Iterator[int]:
    """Run the plain LoRA layers of ``model`` through :class:`_LoraLinear` inside the block; yields how many."""
    patched = []
    for module in model.modules():
        if _eligible(module) and "forward" not in vars(module):
            module._honed_peft_forward = module.forward
            module.forward = types.MethodType(_fused_forward, module)
            patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
            del module._honed_peft_forward
