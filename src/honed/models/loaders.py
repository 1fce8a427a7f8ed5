"""Load what a handle describes: transformers models and tokenizers, PEFT adapters over a base.

``trust_remote_code`` reaches transformers only when the user's config set it; weights load
through safetensors (transformers' default) and never through pickle.
"""

from __future__ import annotations

from typing import Any

from honed.errors import UserError
from honed.models.handle import ModelHandle

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


def _hf_kwargs(handle: ModelHandle) -> dict[str, Any]:
    kwargs = dict(handle.load_kwargs)
    kwargs["trust_remote_code"] = bool(kwargs.get("trust_remote_code", False))
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
    model = auto.from_pretrained(handle.path, **kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_tokenizer(handle: ModelHandle) -> Any:
    """The tokenizer saved with a model (an adapter's own, else its base's)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    src = handle
    if handle.kind == "peft" and not (Path(handle.path) / "tokenizer_config.json").exists() and handle.base:
        src = handle.base
    trust = bool(src.load_kwargs.get("trust_remote_code", False))
    return AutoTokenizer.from_pretrained(src.path, trust_remote_code=trust)
