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
