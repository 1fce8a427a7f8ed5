"""What the fine-tuning passes do: pick dtype/device, load data and model, train, save.

Kept apart from ``honed.passes`` so the pass modules stay light to import (the registry
imports every pass module; torch is imported only when a pass runs).  With
``training_args.num_processes`` > 1 the pass launches that many processes (``honed.training.distributed``),
each of which runs these same functions, loading the model and the tokenized data itself; rank 0 saves.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.models.loaders import load_model, load_tokenizer, torch_dtype, trust_kwargs
from honed.models.loaders import upcast_linears as upcast_linears  # the bf16-held LoRA base's per-layer fp32
from honed.training import distributed as ddp
from honed.training.loop import Callback, train
from honed.util.context import PassContext
from honed.util.cpus import cpu_has_fast_bf16 as cpu_has_fast_bf16  # the CPU bf16 policy (HONED_CPU_BF16)

log = logging.getLogger("honed")

# Every linear layer of the decoder blocks, by architecture (LoRA's usual best choice for accuracy).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
}


# ----------------------------------------------------------------------------- device and dtype


def default_dtype(device: str) -> str:
    """The dtype this device trains fastest in without losing accuracy."""
    import torch

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


def stored_dtype(model: ModelHandle) -> str:
    """The float dtype most of a local folder's weight bytes are stored in (safetensors headers, else its
    config), ``float32`` when unknown."""
    from honed.models.memory import weights

    if not Path(model.path).is_dir():
        return "float32"
    try:
        return weights(model.path).dtype
    except UserError:
        return "float32"


def held_dtype(device: str, compute: str, stored: str, *, chosen: bool, variant: str) -> str:
    """The dtype the frozen base of a LoRA run is held in, given the dtype it computes in.

    The rule: on a CPU computing in fp32 (no native bf16) a plain LoRA base stored in bf16/fp16 stays in that
    dtype and each linear layer computes in fp32 on an upcast copy of its weight (``upcast_linears``).  Measured
    on a 0.5B-shape layer (hidden 1024, MLP 4096, 512 tokens, 1 Zen 4 core, forward + input gradient): fp32
    647 ms, bf16 stored + fp32 per layer 654 ms (1.01x), bf16 emulated without AVX512-BF16 1403 ms (2.2x) and
    with AVX2 only 29 s (45x): the per-layer upcast costs about 1% and halves the weights' memory.  An explicit
    ``torch_dtype``, QLoRA/LoftQ/DoRA, a GPU, and a CPU with native bf16 hold the base in the compute dtype.
    """
    if chosen or variant != "lora" or not device.startswith("cpu") or compute != "float32":
        return compute
    return stored if stored in ("bfloat16", "float16") else compute


def training_device(ctx: PassContext) -> str:
    """``cuda`` when the host is a GPU and torch sees one; else ``cpu``."""
    import torch

    if ctx.host.device == "gpu":
        if not torch.cuda.is_available():
            raise UserError("host accelerator is 'gpu' but torch sees no CUDA device; set the host device to cpu")
        return "cuda"
    return "cpu"


_SPELLED = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_VARIANT_NAMES = {"lora": "LoRA", "dora": "DoRA", "qlora": "QLoRA", "loftq": "LoftQ"}


def preflight_memory(model: ModelHandle, config: Any, ctx: PassContext, *, variant: str) -> None:
    """Before anything loads: a UserError when the run's estimated memory (``honed.models.memory.lora_estimate``:
    the base as it will be held, the activations of ``per_device_train_batch_size x max_seq_len`` tokens, the
    adapter with AdamW state, the runtime; once per local process) exceeds what the machine has.  CPU training
    of a local folder only (a GPU run's weights live on the GPU)."""
    from honed.models.memory import check_fits, lora_estimate, weights

    if ctx.host.device == "gpu" or not Path(model.path).is_dir():
        return
    w = weights(model.path)
    quantized = variant in ("qlora", "loftq")
    qa = getattr(config, "quantization_aware", None)
    chosen = _SPELLED.get(config.torch_dtype, config.torch_dtype) if config.torch_dtype else None
    compute = chosen or ("float32" if qa is not None else default_dtype("cpu"))
    held = held_dtype("cpu", compute, w.dtype, chosen=chosen is not None or qa is not None, variant=variant)
    data = ctx.data_configs.get(config.train_data_config)
    seq = data.pre_process_data_config.max_seq_len if data is not None else 1024
    args = config.training_args
    targets = config.target_modules if isinstance(config.target_modules, list) else (
        DEFAULT_TARGETS.get(w.config.get("model_type", "")) or None)
    processes = args.num_processes if ctx.launcher != "ray" else 1
    name = _VARIANT_NAMES.get(variant, variant)
    est = lora_estimate(f"{name} on {model.path}", w, held_dtype=held, compute_dtype=compute,
                        tokens=seq * args.per_device_train_batch_size, r=config.r, targets=targets,
                        four_bit=quantized, processes=processes)
    fix = ("use a smaller max_seq_len / per_device_train_batch_size, or a machine with more memory" if quantized
           else "use QLoRA (type: QLoRA) or a smaller max_seq_len / per_device_train_batch_size")
    check_fits(est, fix)


# ----------------------------------------------------------------------------- data


def load_splits(config: Any, tokenizer: Any, ctx: PassContext) -> tuple[Any, Any]:
    """Train and eval token rows from the data configs the pass names."""
    import honed.data as data

    def named(name: str, key: str) -> Any:
        if name not in ctx.data_configs:
            near = difflib.get_close_matches(name, list(ctx.data_configs), n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"defined: {sorted(ctx.data_configs) or 'none'}"
            raise UserError(f"passes.{ctx.pass_name}.{key}: no data config named '{name}'; {hint}")
        return ctx.data_configs[name]

    train_cfg = named(config.train_data_config, "train_data_config")
    eval_cfg = named(config.eval_data_config, "eval_data_config") if config.eval_data_config else None
    splits = data.build_datasets(
        train_cfg, tokenizer, cache_dir=ctx.cache_dir / "data", eval_dataset_size=config.eval_dataset_size,
        eval_config=eval_cfg, seed=config.training_args.effective_data_seed,
    )
    return splits.train, splits.eval


def pad_id(tokenizer: Any) -> int:
    """Padding id; padded positions are masked, so eos serves when the tokenizer has no pad."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


# ----------------------------------------------------------------------------- target modules


def linear_module_names(model: Any) -> list[str]:
    """Distinct leaf names of the model's linear layers, output head excluded."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: set[str] = set()
    for full, mod in model.named_modules():
        is_linear = isinstance(mod, torch.nn.Linear) or type(mod).__name__ in ("Linear4bit", "Linear8bitLt")
        if is_linear and mod is not head:
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_target_modules(model: Any, wanted: Sequence[str] | str | None, key: str) -> list[str]:
    """The target modules to adapt: checked against the model, or the architecture's default.

    None of them in the model is an error listing the model's linear layers; some missing is a warning.
    """
    available = linear_module_names(model)
    if wanted is None or wanted == "all-linear":
        model_type = getattr(model.config, "model_type", "")
        default = [m for m in DEFAULT_TARGETS.get(model_type, []) if m in available]
        return default or available
    matched = [m for m in wanted if m in available]
    unmatched = [m for m in wanted if m not in available]
    if not matched:
        raise UserError(
            f"{key}: none of {list(wanted)} is a linear layer of this model; its linear layers are "
            f"{available}"
        )
    if unmatched:
        log.warning("%s: %s match no layer of this model (linear layers: %s); adapting only %s",
                    key, unmatched, available, matched)
    return matched


# ----------------------------------------------------------------------------- passes


def _model_type(handle: ModelHandle) -> str:
    import json

    cfg = Path(handle.path) / "config.json"
    if cfg.exists():
        return json.loads(cfg.read_text()).get("model_type", "")
    return ""


def _load_for_training(model: ModelHandle, dtype: str, device: str, quant: Any = None) -> Any:
    """The base model in ``dtype`` with SDPA attention (4-bit through bitsandbytes when ``quant``)."""
    extra: dict[str, Any] = {"attn_implementation": "sdpa"}
    if quant is not None:
        extra["quantization_config"] = quant
        extra["device_map"] = {"": device}
        return load_model(model, dtype=dtype, **extra)
    return load_model(model, dtype=dtype, device=device, **extra)


def _bnb_config(config: Any, dtype: str) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.quant_type,
        bnb_4bit_use_double_quant=config.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(config.compute_dtype or dtype),
    )


def _safetensors_of(handle: ModelHandle) -> str:
    """The model's safetensors path LoftQ reads the original weights from."""
    p = Path(handle.path)
    if (p / "model.safetensors").exists() or (p / "model.safetensors.index.json").exists():
        return str(p)
    raise UserError(f"LoftQ needs the base model's safetensors weights in {p}")


def sort_adapter_config(adapter_dir: Path, lora: Any) -> None:
    """Rewrite peft's adapter_config.json with the lists it made from sets sorted.

    peft writes a set field (``target_modules``) in hash order, which changes with PYTHONHASHSEED:
    the cached adapter would differ from process to process.  Same formatting as peft's own.
    """
    import json

    path = adapter_dir / "adapter_config.json"
    data = json.loads(path.read_text())
    for key, value in data.items():
        if isinstance(getattr(lora, key, None), (set, frozenset)) and isinstance(value, list):
            data[key] = sorted(value, key=str)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def finetune_adapter(
    model: ModelHandle, config: Any, output_dir: Path, ctx: PassContext, *, variant: str,
    callbacks: Sequence[Callback] = (),
) -> ModelHandle:
    """Train a LoRA/DoRA/QLoRA/LoftQ adapter; return a ``peft`` handle over ``model``.

    ``callbacks`` run in every process of a data-parallel run, so there they must pickle.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    if _launching(config):
        return _launch("adapter", model, config, output_dir, ctx, variant, callbacks)
    device = training_device(ctx)
    dtype = config.torch_dtype or default_dtype(device)
    args = config.training_args
    tokenizer = load_tokenizer(model)
    train_rows, eval_rows = load_splits(config, tokenizer, ctx)
    quantized = variant in ("qlora", "loftq")
    if variant == "loftq" and device != "cuda":
        raise UserError(
            f"passes.{ctx.pass_name}: LoftQ runs only on CUDA (peft computes its initialisation there); "
            "use QLoRA on this host, or set the host device to gpu"
        )

    qa = getattr(config, "quantization_aware", None)
    if qa is not None and config.torch_dtype is None:
        dtype = "float32"  # the int4 kernels ship fp32 activations; train what they compute
    held = held_dtype(device, dtype, stored_dtype(model) if not quantized and qa is None else dtype,
                      chosen=config.torch_dtype is not None or qa is not None, variant=variant)
    with _threads():
        base = _load_for_training(model, held, device, _bnb_config(config, dtype) if quantized else None)
        if held != dtype:
            n = upcast_linears(base, dtype)
            log.info("%s: base held in %s (as stored), %d linear layers compute in %s one at a time",
                     ctx.pass_name, held, n, dtype)
        targets = resolve_target_modules(base, config.target_modules, f"passes.{ctx.pass_name}.target_modules")
        if qa is not None:
            from honed.training.quantization_aware import quantize_base, save_quantized_base

            rounded = quantize_base(base, qa, f"passes.{ctx.pass_name}.quantization_aware")
            quantized_base = output_dir / "base"
            if ddp.is_main():
                save_quantized_base(base, rounded, qa, tokenizer, quantized_base)
            del rounded
        if quantized:
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=args.gradient_checkpointing)
        elif args.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.enable_input_require_grads()
        torch.manual_seed(args.seed)
        lora = LoraConfig(
            r=config.r, lora_alpha=config.alpha, lora_dropout=config.lora_dropout, target_modules=targets,
            modules_to_save=config.modules_to_save, use_rslora=config.use_rslora,
            use_dora=variant == "dora", task_type="CAUSAL_LM", bias="none",
        )
        peft_model = get_peft_model(base, lora)
        if variant == "loftq":
            from peft import replace_lora_weights_loftq

            for _ in range(config.loftq_iter):
                replace_lora_weights_loftq(peft_model, model_path=_safetensors_of(model))
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        run_id = {"variant": variant, "base": model.id or model.path, "lora": lora.to_dict(), "dtype": dtype}
        if held != dtype:
            run_id["held"] = held
        result = train(
            peft_model, train_rows, args, work_dir=ctx.work_dir, pad_token_id=pad_id(tokenizer),
            eval_data=eval_rows, device=device, progress=_progress(ctx), eval_progress=_progress(ctx, "eval loss"),
            callbacks=callbacks, run_id=run_id, key=f"passes.{ctx.pass_name}",
        )
    adapter_dir = output_dir / "adapter"
    if ddp.is_main():
        peft_model.save_pretrained(str(adapter_dir))
        sort_adapter_config(adapter_dir, lora)
        tokenizer.save_pretrained(str(adapter_dir))
    ctx.metrics.update(result.metrics)
    ctx.metrics["log_history"] = result.state.log_history
    ctx.metrics["trainable_params"] = trainable
    attributes = dict(model.attributes)
    attributes.update({"adapter": variant, "target_modules": targets, "train_dtype": dtype})
    if held != dtype:
        attributes["base_held_dtype"] = held
    if quantized:
        attributes["base_quantization"] = f"bnb-4bit-{config.quant_type}" + ("-dq" if config.double_quant else "")
    del peft_model, base
    if qa is not None:  # the adapter's base is the rounded one it trained on
        attributes["base_quantization"] = f"int{qa.bits}-rtn-g{qa.group_size}" + ("-sym" if qa.sym else "")
        model = ModelHandle(kind="hf", path=str(quantized_base), task=model.task, load_kwargs=trust_kwargs(model),
                            attributes={**model.attributes, "quantization": f"int{qa.bits}-rtn"})
    return ModelHandle(kind="peft", path=str(adapter_dir), base=model, task=model.task,
                       load_kwargs=trust_kwargs(model), attributes=attributes)


def finetune_full(
    model: ModelHandle, config: Any, output_dir: Path, ctx: PassContext, callbacks: Sequence[Callback] = ()
) -> ModelHandle:
    """Train every weight (optionally not the embeddings); return an ``hf`` handle to the saved model.

    ``callbacks`` run in every process of a data-parallel run, so there they must pickle.
    """
    if _launching(config):
        return _launch("full", model, config, output_dir, ctx, "full", callbacks)
    device = training_device(ctx)
    dtype = config.torch_dtype or default_dtype(device)
    args = config.training_args
    tokenizer = load_tokenizer(model)
    train_rows, eval_rows = load_splits(config, tokenizer, ctx)
    with _threads():
        net = _load_for_training(model, dtype, device)
        if args.gradient_checkpointing:
            net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for p in net.parameters():
            p.requires_grad_(True)
        if config.freeze_embeddings:
            net.get_input_embeddings().weight.requires_grad_(False)
        run_id = {"variant": "full", "base": model.id or model.path, "dtype": dtype,
                  "freeze_embeddings": config.freeze_embeddings}
        result = train(
            net, train_rows, args, work_dir=ctx.work_dir, pad_token_id=pad_id(tokenizer), eval_data=eval_rows,
            device=device, progress=_progress(ctx), eval_progress=_progress(ctx, "eval loss"), callbacks=callbacks,
            run_id=run_id, key=f"passes.{ctx.pass_name}",
        )
    out = output_dir / "model"
    if ddp.is_main():
        net.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    ctx.metrics.update(result.metrics)
    ctx.metrics["log_history"] = result.state.log_history
    return ModelHandle(kind="hf", path=str(out), task=model.task,
                       load_kwargs=trust_kwargs(model),
                       attributes=dict(model.attributes))


# ----------------------------------------------------------------------------- several processes


def _launching(config: Any) -> bool:
    """True in the pass's own process when the run asks for several (a launched worker is already in a group)."""
    return config.training_args.num_processes > 1 and ddp.world_size() == 1


def _launch(
    kind: str, model: ModelHandle, config: Any, output_dir: Path, ctx: PassContext, variant: str,
    callbacks: Sequence[Callback],
) -> ModelHandle:
    """Run the pass in ``num_processes`` processes; the handle rank 0 saved, with the run's metrics in ``ctx``.

    The data is tokenized here first: a data error stops the run in this process, and the workers read the
    tokenized cache rather than racing to write it.  Workers get no progress bar (rank 0 logs the steps).
    """
    args = config.training_args
    key = f"passes.{ctx.pass_name}.training_args"
    backend = ddp.backend_for(args.ddp_backend, training_device(ctx), key, args.num_processes)
    load_splits(config, load_tokenizer(model), ctx)
    job = (kind, model, config, output_dir, dataclasses.replace(ctx, progress=None, metrics={}), variant,
           tuple(callbacks))
    options = {"num_processes": args.num_processes, "backend": backend, "timeout_s": args.ddp_timeout,
               "key": f"passes.{ctx.pass_name}"}
    if ctx.launcher == "ray":  # Ray Train over the cluster; results come back as JSON files on the shared cache
        raw = ddp.launch_ray(_json_worker, job, scratch_root=ctx.work_dir, **options)
        results = [(ModelHandle.model_validate(h), m) for h, m in raw]
    else:
        results = ddp.launch(_worker, job, **options)
    handle, metrics = results[0]
    metrics["peak_memory_mb"] = max(m.get("peak_memory_mb", 0.0) for _, m in results)  # per process
    metrics["num_processes"] = args.num_processes
    metrics["launcher"] = ctx.launcher  # local: torch's elastic launcher; ray: Ray Train over the cluster
    ctx.metrics.update(metrics)
    return handle


def _worker(
    kind: str, model: ModelHandle, config: Any, output_dir: Path, ctx: PassContext, variant: str,
    callbacks: tuple[Callback, ...],
) -> tuple[ModelHandle, dict[str, Any]]:
    """One launched process: the pass's own function, inside the process group; its handle and metrics."""
    if kind == "full":
        handle = finetune_full(model, config, output_dir, ctx, callbacks=callbacks)
    else:
        handle = finetune_adapter(model, config, output_dir, ctx, variant=variant, callbacks=callbacks)
    return handle, ctx.metrics


def _json_worker(*job: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``_worker`` with a JSON-able result, for Ray Train workers."""
    handle, metrics = _worker(*job)
    return handle.model_dump(mode="json"), metrics


def _threads() -> Any:
    from honed.training.loop import physical_core_threads

    return physical_core_threads()


def _progress(ctx: PassContext, what: str = "training") -> Any:
    """A bar factory the loop calls once it knows the number of steps (or, for ``eval loss``, of batches)."""
    return lambda total: ctx.task(f"{ctx.pass_name}: {what}", total)
