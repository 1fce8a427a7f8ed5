"""Load what a handle describes: transformers models and tokenizers, PEFT adapters over a base.

``trust_remote_code`` reaches transformers only when the user's config set it (an adapter inherits
its base model's flag); weights load through safetensors (transformers' default) and never through
pickle.  Local folders load with the hub libraries offline (``honed.util.offline.local_only``): no
network request for a model on disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.util.offline import local_only

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16", "auto": "auto"}


def torch_dtype(name: str | None) -> Any:
    """A torch dtype from its config spelling (fp32, bfloat16, ...); None stays None."""
    import torch

    if name is None or name == "auto":
        return name
    if name not in _DTYPES:
        raise UserError(f"unknown dtype '{name}'; use one of {sorted(_DTYPES)}")
    return getattr(torch, _DTYPES[name])


def trusts_remote_code(handle: ModelHandle) -> bool:
    """True when the user allowed the model's own code to run (an adapter: its base model's flag)."""
    if handle.load_kwargs.get("trust_remote_code"):
        return True
    return handle.kind == "peft" and handle.base is not None and trusts_remote_code(handle.base)


def trust_kwargs(handle: ModelHandle) -> dict[str, Any]:
    """The ``load_kwargs`` an output handle carries over from its source: the trust flag, when set."""
    return {"trust_remote_code": True} if trusts_remote_code(handle) else {}


def carry_trust(handle: ModelHandle, source: ModelHandle) -> ModelHandle:
    """``handle`` (a pass's output) allowed to run model code when ``source`` (its input) was.

    The flag the user set on the input model thus reaches every later pass, whatever the passes
    put in the handles they return.
    """
    if not trusts_remote_code(source):
        return handle
    base = carry_trust(handle.base, source) if handle.base is not None else None
    return handle.model_copy(update={"load_kwargs": {**handle.load_kwargs, "trust_remote_code": True}, "base": base})


@contextlib.contextmanager
def custom_code_errors(path: str | Path) -> Iterator[None]:
    """transformers' refusal to run a folder's code without ``trust_remote_code`` as one UserError line."""
    try:
        yield
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise UserError(
            f"{path} holds custom code (auto_map in its config.json or tokenizer_config.json) that honed runs only "
            "when allowed; read it, then set input_model.load_kwargs.trust_remote_code: true (or "
            "--trust-remote-code) if you trust it"
        ) from None


@contextlib.contextmanager
def _local_load(path: str | Path) -> Iterator[None]:
    """No network for a folder on disk (a hub id that is not downloaded keeps the hub path)."""
    with local_only() if Path(path).exists() else contextlib.nullcontext(), custom_code_errors(path):
        yield


def load_tokenizer_dir(folder: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved in a local folder (ONNX and genai outputs carry one)."""
    from transformers import AutoTokenizer

    with _local_load(folder):
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)


def _hf_kwargs(handle: ModelHandle) -> dict[str, Any]:
    kwargs = dict(handle.load_kwargs)
    kwargs["trust_remote_code"] = trusts_remote_code(handle)
    if "torch_dtype" in kwargs:  # transformers 5 spells it `dtype`
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = torch_dtype(kwargs["dtype"])
    return kwargs


def load_model(handle: ModelHandle, *, dtype: str | None = None, device: str | None = None, **extra: Any) -> Any:
    """A transformers (or PEFT) model for an ``hf`` or ``peft`` handle, in eval mode."""
    import transformers

    if handle.kind == "peft":
        from peft import PeftModel

        if handle.base is None:
            raise UserError(f"adapter {handle.path} has no base model")
        base = load_model(handle.base, dtype=dtype, device=device, **extra)
        with _local_load(handle.path):
            return PeftModel.from_pretrained(base, handle.path, is_trainable=False)
    if handle.kind != "hf":
        raise UserError(f"{handle.path} is a {handle.kind} model; this step needs a Hugging Face model")
    kwargs = _hf_kwargs(handle) | extra
    if dtype is not None:
        kwargs["dtype"] = torch_dtype(dtype)
    auto = transformers.AutoModelForCausalLM
    if handle.task in ("text-classification", "sequence-classification"):
        auto = transformers.AutoModelForSequenceClassification
    elif handle.task in ("feature-extraction", "sentence-similarity"):
        auto = transformers.AutoModel
    import pickle

    from honed.models.quantized import load_dequantized, quantization_config

    try:
        with _local_load(handle.path):
            if quantization_config(handle.path) is not None:  # Olive's int4/int8 format (e.g. from Gptq)
                model = load_dequantized(auto, handle.path, **kwargs)
            else:
                model = auto.from_pretrained(handle.path, **kwargs)
    except pickle.UnpicklingError:  # torch refused a pickle checkpoint (weights_only): say what to do
        raise UserError(f"{handle.path}: holds a pickle checkpoint (pytorch_model.bin) that honed does not load; "
                        "convert it to safetensors (model.save_pretrained(..., safe_serialization=True)) in a "
                        "trusted environment") from None
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_tokenizer(handle: ModelHandle) -> Any:
    """The tokenizer saved with a model (an adapter's own, else its base's)."""
    from transformers import AutoTokenizer

    src = handle
    if handle.kind == "peft" and not (Path(handle.path) / "tokenizer_config.json").exists() and handle.base:
        src = handle.base
    with _local_load(src.path):
        return AutoTokenizer.from_pretrained(src.path, trust_remote_code=trusts_remote_code(handle))


# ---------------------------------------------------------------- a model held as stored, computed wider


class _UpcastLinearFn:
    """Namespace for the autograd function, built on first use (torch is imported lazily)."""

    fn: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls.fn is None:
            import torch
            import torch.nn.functional as F

            class Fn(torch.autograd.Function):
                @staticmethod
                def forward(ctx: Any, x: Any, weight: Any, bias: Any) -> Any:
                    ctx.save_for_backward(weight)  # the stored (bf16) weight: no fp32 copy outlives the call
                    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

                @staticmethod
                def backward(ctx: Any, gy: Any) -> tuple[Any, None, None]:
                    (weight,) = ctx.saved_tensors
                    gx = gy @ weight.to(gy.dtype) if ctx.needs_input_grad[0] else None
                    return gx, None, None

            cls.fn = Fn
        return cls.fn


def _upcast_forward(self: Any, x: Any) -> Any:
    import torch.nn.functional as F

    if x.dtype == self.weight.dtype:
        return F.linear(x, self.weight, self.bias)
    if self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad):
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
    return _UpcastLinearFn.get().apply(x, self.weight, self.bias)


def upcast_linears(model: Any, compute: str) -> int:
    """Hold ``model``'s linear weights as they are and compute them in ``compute``: every other float parameter
    and buffer (norms, embeddings) is cast to ``compute``, and each ``nn.Linear`` becomes a subclass whose
    forward upcasts its weight for the call only (a frozen weight's backward upcasts it again rather than keeping
    the copy).  Returns how many linears were switched."""
    import torch

    dtype = torch_dtype(compute)
    linear_cls: dict[type, type] = {}
    n = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            cls = linear_cls.setdefault(type(module), type("UpcastLinear", (torch.nn.Linear,),
                                                            {"forward": _upcast_forward}))
            module.__class__ = cls
            n += 1
            continue
        if isinstance(module, torch.nn.Linear):
            continue
        for p in module.parameters(recurse=False):
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
        for name, b in module.named_buffers(recurse=False):
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                setattr(module, name, b.to(dtype))
    return n


def cpu_compute_dtype(stored: str) -> str:
    """The dtype a model whose weights are stored in ``stored`` computes in on this CPU: bf16 where the CPU
    multiplies it natively (``honed.util.cpus.cpu_has_fast_bf16``, ``HONED_CPU_BF16``), else fp32; fp16 always
    fp32 (emulated on CPUs); fp32 as it is."""
    from honed.util.cpus import cpu_has_fast_bf16

    if stored == "bfloat16" and cpu_has_fast_bf16():
        return "bfloat16"
    return "float32" if stored in ("bfloat16", "float16", "float32") else stored


def hold_as_stored(model: Any) -> tuple[str, str]:
    """Keep a loaded CPU model's linear weights in their stored dtype and compute them in
    ``cpu_compute_dtype``: a bf16/fp16 model on a CPU without native bf16 gets ``upcast_linears`` (each linear
    upcasts its weight for the call only; norms and embeddings are cast), so it never holds an fp32 copy of its
    weights nor runs emulated bf16 GEMMs.  Returns (held, compute) dtype names."""
    import torch

    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.is_floating_point()]
    if not linears:
        return "float32", "float32"
    held = str(linears[0].dtype).removeprefix("torch.")
    compute = cpu_compute_dtype(held)
    if compute != held:
        upcast_linears(model, compute)
    return held, compute

