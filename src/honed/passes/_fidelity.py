"""Fidelity of a quantized build to its source, recorded in the pass's metrics (footprints.json, the report).

A pass that quantizes calls ``record_fidelity(source, output, config, ctx)`` after writing its output: both models
score the same rows of a data config teacher-forced (``honed.models.fidelity``), and ``kl_mean``, ``kl_p99``,
``top1_agreement``, ``perplexity`` and ``source_perplexity`` go into ``ctx.metrics``.  Its config takes the fields
of ``FidelityOptions`` (a mixin, or the two fields declared with ``fidelity_data_config_field`` /
``fidelity_samples_field``, so each is described once).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.passes.base import PassConfig, PassContext

log = logging.getLogger("honed")


def fidelity_data_config_field() -> Any:
    return Field(
        None, description="Data config whose rows (formatted like training rows, cut to its max_seq_len) score the "
        "output against the pass input: KL(input || output) of the next-token distributions (kl_mean, kl_p99, "
        "nats), top1_agreement, perplexity and source_perplexity go into the pass's metrics. Unset: the workflow's "
        "first data config, for an int4/int8 build only (skipped, with an info line, when there is none)."
    )


def fidelity_samples_field() -> Any:
    return Field(32, ge=0, description="Rows of fidelity_data_config to score (fewer when the data has fewer or "
                 "its max_samples says so); 0 turns the fidelity measurement off.")


class FidelityOptions(PassConfig):
    """The fidelity fields, for a pass config to inherit."""

    fidelity_data_config: str | None = fidelity_data_config_field()
    fidelity_samples: int = fidelity_samples_field()

    def uses_first_data_config(self) -> bool:
        return self.fidelity_samples > 0 and self.fidelity_data_config is None


def _data_config(config: Any, ctx: PassContext, quantized: bool) -> Any:
    """The data config to score on, or None (with an info line saying why nothing is measured)."""
    name = getattr(config, "fidelity_data_config", None)
    if getattr(config, "fidelity_samples", 0) == 0:
        log.info("%s: fidelity_samples is 0; the output is not compared with the input", ctx.pass_name)
        return None
    if name is not None:
        return ctx.data_config(name, "fidelity_data_config")
    if not quantized:
        return None
    if not ctx.data_configs:
        log.info("%s: no data config, so the quantized output is not compared with the input; set "
                 "fidelity_data_config to measure its KL divergence", ctx.pass_name)
        return None
    first = next(iter(ctx.data_configs.values()))
    log.info("%s: fidelity measured on data config '%s' (the workflow's first; fidelity_data_config picks "
             "another)", ctx.pass_name, first.name)
    return first


def token_sequences(data_config: Any, tokenizer: Any, limit: int, cache_dir: Any = None) -> list[list[int]]:
    """Token ids of up to ``limit`` rows of ``data_config`` (cut to its max_seq_len): rows a user's functions
    tokenized as they are, else the formatted text tokenized with the tokenizer's special tokens."""
    from honed.data.batches import calibration_texts, token_samples

    pre = data_config.pre_process_data_config
    limit = min(limit, pre.max_samples or limit)
    given = token_samples(data_config, limit, tokenizer)
    if given is None:
        texts = calibration_texts(data_config, limit, tokenizer, cache_dir)
        given = [tokenizer(*(t if isinstance(t, tuple) else (t,)), truncation=True,
                           max_length=pre.max_seq_len)["input_ids"] for t in texts]
    return [list(ids[: pre.max_seq_len]) for ids in given if len(ids) >= 2]


def _held_dtype(handle: ModelHandle, stored: str) -> str:
    """The dtype ``open_runtime`` holds an HF model's weights in: a ``torch_dtype`` its load_kwargs name, else the
    stored one."""
    named = handle.load_kwargs.get("torch_dtype") or handle.load_kwargs.get("dtype")
    if isinstance(named, str) and named != "auto":
        from honed.models.loaders import torch_dtype

        return str(torch_dtype(named)).removeprefix("torch.")
    return stored


def _model_bytes(handle: ModelHandle) -> int:
    """Bytes an output model takes once loaded, about: an ONNX or genai folder's ``*.onnx*`` files (graph and
    external data), an HF folder's weights as stored; 0 when unknown."""
    from honed.models.memory import weights

    path = Path(handle.path)
    if handle.kind in ("onnx", "genai"):
        files = [path] if path.is_file() else list(path.glob("*.onnx*"))
        return sum(f.stat().st_size for f in files if f.is_file())
    if handle.kind == "hf" and path.is_dir():
        try:
            return weights(path).stored_bytes
        except UserError:
            return 0
    return 0


def memory_shortfall(source: ModelHandle, output: ModelHandle, ctx: PassContext) -> str | None:
    """What the fidelity check would need beyond the memory there is (``honed.models.memory.shortfall``: the
    source held as ``open_runtime`` holds it on a CPU, the output, the runtime), or None when it fits, runs on a
    GPU, or the source's size is unknown (a hub id not on disk)."""
    if ctx.host.torch_device != "cpu" or source.kind not in ("hf", "peft"):
        return None
    from honed.models.loaders import cpu_compute_dtype
    from honed.models.memory import fidelity_estimate, shortfall, weights

    base = source.base if source.kind == "peft" and source.base is not None else source
    if not Path(base.path).is_dir():
        return None
    try:
        w = weights(base.path)
    except UserError:
        return None
    adapter = 0
    if base is not source:
        adapter = sum(f.stat().st_size for f in Path(source.path).glob("*.safetensors"))
    held = _held_dtype(base, w.dtype)
    est = fidelity_estimate(f"{ctx.pass_name}: fidelity check", w, held, cpu_compute_dtype(held),
                            _model_bytes(output), adapter)
    return shortfall(est)


def record_fidelity(source: ModelHandle, output: ModelHandle, config: Any, ctx: PassContext,
                    quantized: bool = True) -> dict[str, float] | None:
    """Score ``output`` against ``source`` (the pass input, in its stored dtype; a PEFT adapter applied) on the
    rows ``_data_config`` picks and put the numbers in ``ctx.metrics``; returns them, or None when skipped.
    ``quantized`` False (e.g. an fp32 build) measures only when the config names ``fidelity_data_config``.
    Skipped with one warning line, before anything loads, when both models will not fit the memory there is
    (``memory_shortfall``); a progress bar counts the rows."""
    data = _data_config(config, ctx, quantized)
    if data is None:
        return None
    ep = output.attributes.get("execution_provider")
    if output.kind in ("genai", "onnx") and ep not in (None, "cpu", ctx.host.ep_short):
        log.info("%s: the output is built for %s, which this host does not run; fidelity not measured",
                 ctx.pass_name, ep)
        return None
    short_of = memory_shortfall(source, output, ctx)
    if short_of is not None:
        log.warning("%s: fidelity check skipped: it %s; set fidelity_samples: 0 to build without it, or measure "
                    "fidelity on a smaller model", ctx.pass_name, short_of)
        return None
    from honed.models.fidelity import compare_models
    from honed.models.runtime import open_runtime

    src = open_runtime(source, ctx.host)  # dtype None: held as stored (bf16), computed per the CPU's bf16 policy
    try:
        seqs = token_sequences(data, src.tokenizer, config.fidelity_samples, ctx.cache_dir)
        if not seqs:
            raise UserError(f"{ctx.pass_name}: data config '{data.name}' gave no rows of two or more tokens to "
                            "measure fidelity on; point fidelity_data_config at rows of text")
        bar = ctx.task(f"{ctx.pass_name}: fidelity rows", len(seqs))
        try:
            result = compare_models(src, output, seqs, ctx.host, bar=bar)
        finally:
            bar.close()
    finally:
        src.close()
    values = {"kl_mean": result.kl_mean, "kl_p99": result.kl_p99, "top1_agreement": result.top1_agreement,
              "perplexity": result.perplexity, "source_perplexity": result.reference_perplexity}
    ctx.metrics.update(values)
    log.info("%s: fidelity to the input on %d rows (%d positions of '%s'): KL mean %.4g nats, p99 %.4g, top-1 "
             "agreement %.3f, perplexity %.4g (input %.4g)", ctx.pass_name, result.sequences, result.positions,
             data.name, result.kl_mean, result.kl_p99, result.top1_agreement, result.perplexity,
             result.reference_perplexity)
    return values
