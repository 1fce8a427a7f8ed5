"""Merge a PEFT adapter into its base model and save a standalone Hugging Face folder.

A plain LoRA adapter over a float safetensors base is merged streamed (``merge_streamed``): one tensor at a
time is read from the base's files, the adapter's delta added in fp32, the result cast to the output dtype and
appended to a safetensors shard, so the pass holds about four fp32 copies of the largest tensor, never the model.
Any other adapter (DoRA, modules_to_save, rank or alpha patterns, an Olive-quantized base, checkpoint names that
differ from the module names) is merged in memory by peft (``merge_in_memory``), as before.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.loaders import custom_code_errors, load_model, load_tokenizer, torch_dtype, trust_kwargs
from honed.models.memory import GIB, Tensor, read_header, safetensors_files
from honed.models.shards import SHARD_BYTES, ShardWriter, dtype_size, read_tensor, tensor_offsets
from honed.models.shards import ST_NAMES as _ST
from honed.models.shards import TORCH_NAMES as _TORCH
from honed.util.context import PassContext
from honed.util.offline import local_only

log = logging.getLogger("honed")

PROBE_MAX_BYTES = 64 * 2**20
"""The logit probe (``merge_max_abs_diff``) loads the adapter model and then the merged one in fp32: only for
models up to this size in fp32 (bytes), so it never makes a big merge hold the model."""
_PREFIX = "base_model.model."


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
            _check_tensor(name, t, key, adapter)


def _check_tensor(name: str, t: Any, key: str, adapter: str) -> None:
    import torch

    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise UserError(
            f"{key}: merged weight '{name}' holds NaN or inf values (the adapter in {adapter} diverged); "
            "retrain it with a lower training_args.learning_rate or check the data"
        )


def _base_without_quantization(handle: ModelHandle) -> ModelHandle:
    base_handle = handle.base
    assert base_handle is not None
    # A quantization request in the base's load arguments would merge into a quantized base: drop it.
    load_kwargs = {k: v for k, v in base_handle.load_kwargs.items() if k not in ("quantization_config",
                                                                                 "load_in_4bit", "load_in_8bit")}
    return base_handle.model_copy(update={"load_kwargs": load_kwargs})


def merge_adapter(handle: ModelHandle, config: Any, output_dir: Path, ctx: PassContext) -> ModelHandle:
    """Fold the adapter into its base (in fp32) and save the result in the base's dtype (``config.torch_dtype``
    overrides); streamed when ``stream_plan`` allows, else in memory.

    Merging in fp32 keeps the result as close as possible to the adapter model; a QLoRA adapter
    thus merges into the dequantized (original) base.  ``ctx.metrics['merge_max_abs_diff']`` is the
    largest logit difference between the adapter model and the merged one on a short probe (for models up to
    ``PROBE_MAX_BYTES`` in fp32); ``ctx.metrics['merge_streamed']`` says which way it merged.
    Raises UserError for a handle that is not an adapter over a base, or merged weights with NaN or inf.
    """
    if handle.kind != "peft" or handle.base is None:
        raise UserError(f"MergeAdapterWeights needs a PEFT adapter with its base model; got a {handle.kind} model")
    base_handle = _base_without_quantization(handle)
    out_dtype = config.torch_dtype or base_dtype(base_handle)
    out_dtype = str(torch_dtype(out_dtype)).removeprefix("torch.")
    from honed.models.quantized import quantization_config

    if quantization_config(base_handle.path) is not None:
        log.warning("%s: the adapter %s was trained against the quantized base %s; the merged float model is "
                    "that model, but quantizing it again rounds the merged weights off the grid the adapter "
                    "learned. To ship what was trained, put ModelBuilder straight after the LoRA pass",
                    ctx.pass_name, handle.path, base_handle.path)
    out = output_dir / "model"
    plan = stream_plan(handle)
    _preflight(handle, base_handle, plan, ctx.pass_name)
    if isinstance(plan, str):
        log.info("%s: merging in memory (%s)", ctx.pass_name, plan)
        merge_in_memory(handle, base_handle, out_dtype, out, ctx)
    else:
        merge_streamed(plan, out_dtype, out, f"passes.{ctx.pass_name}", handle.path)
        _copy_side_files(Path(base_handle.path), out)
        load_tokenizer(handle).save_pretrained(str(out))
        if plan.fp32_bytes <= PROBE_MAX_BYTES:
            ctx.metrics["merge_max_abs_diff"] = probe_difference(handle, base_handle, out)
    ctx.metrics["merge_streamed"] = not isinstance(plan, str)
    gen = Path(base_handle.path) / "generation_config.json"
    if gen.exists() and not (out / "generation_config.json").exists():
        (out / "generation_config.json").write_text(gen.read_text())
    attributes = {k: v for k, v in handle.attributes.items() if k not in ("adapter", "base_quantization")}
    attributes["merged_adapter"] = handle.attributes.get("adapter", "lora")
    return ModelHandle(
        kind="hf", path=str(out), task=handle.task,
        load_kwargs=trust_kwargs(handle), attributes=attributes,
    )


def _preflight(handle: ModelHandle, base_handle: ModelHandle, plan: StreamPlan | str, name: str) -> None:
    """UserError before loading when the merge would not fit: streamed, a few fp32 copies of the largest
    tensor; in memory, the base in fp32 twice (the model and peft's merged copy before the cast)."""
    from honed.models.memory import Estimate, check_fits, merge_estimate, weights

    if not Path(base_handle.path).is_dir():
        return
    w = weights(base_handle.path)
    what = f"MergeAdapterWeights ({name}) on {base_handle.path}"
    if isinstance(plan, str):
        est = Estimate(what, {"weights x 2": 2 * w.bytes_as("float32"), "runtime": GIB}, {"weights x 2": "fp32"})
        check_fits(est, f"it merges in memory ({plan}); a plain LoRA adapter merges streamed, or use a machine "
                        "with more memory")
    else:
        est = merge_estimate(what, w, plan.adapter_file.stat().st_size * 2)
        check_fits(est, "use a machine with more memory")


def merge_in_memory(handle: ModelHandle, base_handle: ModelHandle, out_dtype: str, out: Path,
                    ctx: PassContext) -> None:
    """peft's merge: the base loaded in fp32, the adapter applied and merged, the model cast and saved."""
    import torch
    from peft import PeftModel

    base = load_model(base_handle, dtype="float32")
    with local_only(), custom_code_errors(handle.path):
        model = PeftModel.from_pretrained(base, handle.path, is_trainable=False).eval()
    tokenizer = load_tokenizer(handle)
    probe = torch.tensor([list(range(1, min(17, base.config.vocab_size)))])
    with torch.no_grad():
        before = model(input_ids=probe).logits
        merged = model.merge_and_unload()
        after = merged(input_ids=probe).logits
    ctx.metrics["merge_max_abs_diff"] = float((before - after).abs().max())
    merged = merged.to(torch_dtype(out_dtype))
    check_finite(merged, f"passes.{ctx.pass_name}", handle.path)  # after the cast: fp16 may overflow to inf
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


# ----------------------------------------------------------------------------- streamed


@dataclass
class StreamPlan:
    """A plain LoRA adapter over a float safetensors base: where each tensor is and which get a delta."""

    base: Path
    adapter_file: Path
    config: dict[str, Any]
    tensors: dict[str, tuple[Path, int, Tensor]]
    """Base tensor name -> (file, byte offset of its data, header entry), in file and offset order."""
    lora: dict[str, tuple[str, str]]
    """Base weight name -> (lora_A key, lora_B key) in the adapter file."""
    scaling: float
    fp32_bytes: int


def stream_plan(handle: ModelHandle) -> StreamPlan | str:
    """The plan for a streamed merge of ``handle``, or why it must merge in memory."""
    from honed.models.quantized import quantization_config

    assert handle.base is not None
    base, adapter = Path(handle.base.path), Path(handle.path)
    cfg_file, adapter_file = adapter / "adapter_config.json", adapter / "adapter_model.safetensors"
    if not cfg_file.is_file() or not adapter_file.is_file() or not base.is_dir():
        return "no adapter_model.safetensors beside adapter_config.json, or no local base folder"
    cfg = json.loads(cfg_file.read_text())
    base_cfg = json.loads((base / "config.json").read_text()) if (base / "config.json").is_file() else {}
    if quantization_config(base) is not None or base_cfg.get("quantization_config"):
        return "a quantized base"
    if cfg.get("peft_type") != "LORA" or cfg.get("use_dora") or cfg.get("fan_in_fan_out"):
        return "not a plain LoRA adapter"
    for key in ("modules_to_save", "rank_pattern", "alpha_pattern", "layer_replication", "trainable_token_indices"):
        if cfg.get(key):
            return f"adapter_config {key}"
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        return "a LoRA bias"
    files = safetensors_files(base)
    if not files:
        return "no safetensors weights in the base folder"
    tensors = {name: (f, off, t) for f in files for name, off, t in tensor_offsets(f)}
    if any(t.dtype not in _TORCH for _, _, t in tensors.values()):
        return "a tensor dtype the streamed merge does not read"
    lora: dict[str, tuple[str, str]] = {}
    adapter_tensors = read_header(adapter_file)
    for key in adapter_tensors:
        if not key.startswith(_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            return f"adapter tensor '{key}'"
        module = key[len(_PREFIX):].rsplit(".lora_", 1)[0]
        a, b = f"{_PREFIX}{module}.lora_A.weight", f"{_PREFIX}{module}.lora_B.weight"
        name = f"{module}.weight"
        if a not in adapter_tensors or b not in adapter_tensors or name not in tensors:
            return f"no base weight '{name}' for adapter tensor '{key}'"
        w, ta, tb = tensors[name][2], adapter_tensors[a], adapter_tensors[b]
        if len(w.shape) != 2 or (tb.shape[0], ta.shape[1]) != w.shape:
            return f"adapter tensor '{key}' does not fit '{name}' {list(w.shape)}"
        lora[name] = (a, b)
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    fp32 = sum(t.numel * 4 for _, _, t in tensors.values())
    return StreamPlan(base, adapter_file, cfg, tensors, lora, scaling, fp32)


def merge_streamed(plan: StreamPlan, out_dtype: str, out: Path, key: str, adapter: str) -> int:
    """Write the merged model into ``out`` tensor by tensor: each base tensor read alone, a LoRA target's delta
    ``(B @ A) * scaling`` added in fp32 (peft's maths), float tensors cast to ``out_dtype``; shards of at most
    ``SHARD_BYTES`` with an index when there are several, and ``config.json`` with the new dtype.  Returns the
    bytes of weights written.  Raises UserError naming the first merged tensor with NaN or inf."""
    import torch
    from safetensors.torch import load_file

    lora = load_file(str(plan.adapter_file))  # megabytes: r x (in + out) per adapted linear
    target = _ST[out_dtype]
    layout: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, (_, _, t) in plan.tensors.items():
        st = target if t.dtype in ("F64", "F32", "F16", "BF16") else t.dtype
        nbytes = t.numel * dtype_size(st)
        if layout[-1] and size + nbytes > SHARD_BYTES:
            layout.append([])
            size = 0
        layout[-1].append((name, st, t.shape))
        size += nbytes

    def make(name: str) -> Any:
        path, offset, t = plan.tensors[name]
        w = read_tensor(path, offset, t)
        if not w.is_floating_point():
            return w
        if name in plan.lora:
            a_key, b_key = plan.lora[name]
            w32 = w.float()
            del w
            with torch.no_grad():
                w32 += (lora[b_key].float() @ lora[a_key].float()) * plan.scaling
            w = w32
        w = w.to(getattr(torch, out_dtype))
        _check_tensor(name, w, key, adapter)  # after the cast: fp16 may overflow to inf
        return w

    written = ShardWriter(out, layout).write(make)
    cfg = json.loads((plan.base / "config.json").read_text())
    cfg.pop("torch_dtype", None)
    cfg["dtype"] = out_dtype
    tmp = out / ".config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / "config.json")
    return written


def _copy_side_files(base: Path, out: Path) -> None:
    """The base's model code (``*.py`` a trust_remote_code config names) beside the merged weights."""
    for f in base.glob("*.py"):
        shutil.copy2(f, out / f.name)


def probe_difference(handle: ModelHandle, base_handle: ModelHandle, out: Path) -> float:
    """Largest logit difference on a 16-token probe between the adapter model and the merged folder, both in
    fp32, loaded one after the other."""
    import torch
    from peft import PeftModel

    base = load_model(base_handle, dtype="float32")
    probe = torch.tensor([list(range(1, min(17, base.config.vocab_size)))])
    with local_only(), custom_code_errors(handle.path), torch.no_grad():
        before = PeftModel.from_pretrained(base, handle.path, is_trainable=False).eval()(input_ids=probe).logits
    del base
    merged = load_model(ModelHandle(kind="hf", path=str(out), load_kwargs=trust_kwargs(handle)), dtype="float32")
    with torch.no_grad():
        after = merged(input_ids=probe).logits
    return float((before - after).abs().max())
