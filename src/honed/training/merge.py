"""Merge a PEFT adapter into its base model and save a standalone Hugging Face folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.loaders import custom_code_errors, load_model, load_tokenizer, torch_dtype, trust_kwargs
from honed.util.context import PassContext
from honed.util.offline import local_only

log = logging.getLogger("honed")


def base_dtype(handle: ModelHandle) -> str:
    """The dtype a Hugging Face folder's weights are stored in (config ``dtype``/``torch_dtype``), else fp32."""
    cfg = Path(handle.path) / "config.json"
    if cfg.exists():
        data = json.loads(cfg.read_text())
        name = data.get("dtype") or data.get("torch_dtype")
        if name in ("float32", "float16", "bfloat16"):
            return name
    return "float32"


def check_finite(model: Any, key: str, adapter: str) -> None:
    """UserError naming the first merged weight that holds NaN or inf (a diverged adapter)."""
    import torch

    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise UserError(
                    f"{key}: merged weight '{name}' holds NaN or inf values (the adapter in {adapter} diverged); "
                    "retrain it with a lower training_args.learning_rate or check the data"
                )


def merge_adapter(handle: ModelHandle, config: Any, output_dir: Path, ctx: PassContext) -> ModelHandle:
    """Fold the adapter into an unquantized fp32 copy of its base, then save in the base's dtype.

    Merging in fp32 keeps the result as close as possible to the adapter model; a QLoRA adapter
    thus merges into the dequantized (original) base.  ``ctx.metrics['merge_max_abs_diff']`` is the
    largest logit difference between the adapter model and the merged one on a short probe.
    """
    import torch
    from peft import PeftModel

    if handle.kind != "peft" or handle.base is None:
        raise UserError(f"MergeAdapterWeights needs a PEFT adapter with its base model; got a {handle.kind} model")
    base_handle = handle.base
    # A quantization request in the base's load arguments would merge into a quantized base: drop it.
    load_kwargs = {k: v for k, v in base_handle.load_kwargs.items() if k not in ("quantization_config",
                                                                                 "load_in_4bit", "load_in_8bit")}
    base_handle = base_handle.model_copy(update={"load_kwargs": load_kwargs})
    out_dtype = config.torch_dtype or base_dtype(base_handle)
    from honed.models.quantized import quantization_config

    if quantization_config(base_handle.path) is not None:
        log.warning("%s: the adapter %s was trained against the quantized base %s; the merged float model is "
                    "that model, but quantizing it again rounds the merged weights off the grid the adapter "
                    "learned. To ship what was trained, put ModelBuilder straight after the LoRA pass",
                    ctx.pass_name, handle.path, base_handle.path)
    base = load_model(base_handle, dtype="float32")
    with local_only(), custom_code_errors(handle.path):
        model = PeftModel.from_pretrained(base, handle.path, is_trainable=False).eval()
    tokenizer = load_tokenizer(handle)
    probe = torch.tensor([list(range(1, min(17, base.config.vocab_size)))])
    with torch.no_grad():
        before = model(input_ids=probe).logits
        merged = model.merge_and_unload()
        after = merged(input_ids=probe).logits
    diff = float((before - after).abs().max())
    ctx.metrics["merge_max_abs_diff"] = diff
    merged = merged.to(torch_dtype(out_dtype))
    check_finite(merged, f"passes.{ctx.pass_name}", handle.path)  # after the cast: fp16 may overflow to inf
    out = output_dir / "model"
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    gen = Path(base_handle.path) / "generation_config.json"
    if gen.exists() and not (out / "generation_config.json").exists():
        (out / "generation_config.json").write_text(gen.read_text())
    attributes = {k: v for k, v in handle.attributes.items() if k not in ("adapter", "base_quantization")}
    attributes["merged_adapter"] = handle.attributes.get("adapter", "lora")
    return ModelHandle(
        kind="hf", path=str(out), task=handle.task,
        load_kwargs=trust_kwargs(handle), attributes=attributes,
    )
