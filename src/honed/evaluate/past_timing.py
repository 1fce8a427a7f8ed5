"""Timing a decoding step with tokens already in the KV cache (Olive's TransformersTokenDummyDataContainer).

Olive's TransformersDummyDataset feeds ``seq_len`` new tokens plus a random ``past_seq_len``-token KV
cache (olive/data/component/dataset.py).  Here the cache is built once, untimed, by running the past
tokens through the model; each timed call then feeds the new tokens (attention mask over past + new,
positions continuing after the past) and puts the cache back to its past length, so every call
measures the same step:

* HF: ``Cache.crop(-seq_len)`` after the call (transformers 5's cache API: a negative count removes
  that many tokens);
* ONNX: the past ``present`` outputs are reused as inputs, never modified (``OnnxSession.step``);
* genai: ``Generator.append_tokens`` then ``rewind_to(past)`` (onnxruntime-genai).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from honed.errors import UserError


class TimedBatch(list):
    """A timed batch (the new token ids) that carries the call to time instead of a plain forward."""

    call: Callable[[], Any]


def with_past(backend: Any, past: list[list[int]], new: list[list[int]]) -> TimedBatch:
    """``new`` as a TimedBatch whose ``call`` runs one step after ``past`` (rows of equal length) cached."""
    batch = TimedBatch(new)
    if backend.kind in ("hf", "peft"):
        batch.call = _hf_step(backend, past, new)
    elif backend.kind == "onnx":
        batch.call = _onnx_step(backend, past, new)
    elif backend.kind == "genai":
        batch.call = _genai_step(backend, past, new)
    else:
        raise UserError(f"past_seq_len: a {backend.kind} model cannot be timed with a KV cache; set past_seq_len: 0")
    return batch


def _hf_step(backend: Any, past: list[list[int]], new: list[list[int]]) -> Callable[[], Any]:
    import torch

    if backend.is_classifier:
        raise UserError("past_seq_len: a sequence classifier has no KV cache; set past_seq_len: 0")
    dev = backend.device
    past_t = torch.tensor(past, device=dev)
    new_t = torch.tensor(new, device=dev)
    n_past, n_new = past_t.shape[1], new_t.shape[1]
    mask = torch.ones((new_t.shape[0], n_past + n_new), dtype=torch.long, device=dev)
    positions = torch.arange(n_past, n_past + n_new, device=dev).expand(new_t.shape[0], -1)
    # transformers 5.24 renamed past_key_values to cache (the old name still works, with a warning)
    name = "cache" if "cache" in inspect.signature(backend.model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        out = backend.model(input_ids=past_t, attention_mask=mask[:, :n_past], use_cache=True)
    cache = getattr(out, name, None)
    if cache is None:
        raise UserError(f"past_seq_len: {type(backend.model).__name__} returns no KV cache; set past_seq_len: 0")

    def step() -> None:
        with torch.inference_mode():
            backend.model(input_ids=new_t, attention_mask=mask, position_ids=positions, use_cache=True, **{name: cache})
        cache.crop(-n_new)  # transformers 5: a negative count removes that many tokens

    try:  # once untimed: a cache that cannot be rewound (sliding window past its size) says so here
        step()
    except (AttributeError, RuntimeError, ValueError) as e:
        raise UserError(f"past_seq_len: {type(cache).__name__}, this model's KV cache, cannot be rewound between timed "
                        f"calls ({str(e)[:120]}); set past_seq_len: 0") from e
    if cache.get_seq_length() != n_past:
        raise UserError(f"past_seq_len: {type(cache).__name__} did not rewind to {n_past} tokens; set past_seq_len: 0")
    return step


def _onnx_step(backend: Any, past: list[list[int]], new: list[list[int]]) -> Callable[[], Any]:
    import numpy as np

    sess = backend.session
    if not sess.past_names:
        raise UserError(f"past_seq_len: {sess.path} has no past_key_values inputs (exported without a KV cache); "
                        "set past_seq_len: 0 or export with one (ModelBuilder, OnnxConversion use_past)")
    past_a = np.array(past, dtype=np.int64)
    new_a = np.array(new, dtype=np.int64)
    _, cache = sess.step(past_a, np.ones_like(past_a), None)
    mask = np.ones((new_a.shape[0], past_a.shape[1] + new_a.shape[1]), dtype=np.int64)
    return lambda: sess.step(new_a, mask, cache)


def _genai_step(backend: Any, past: list[list[int]], new: list[list[int]]) -> Callable[[], Any]:
    n_past = len(past[0])
    gens = []
    for row in past:  # one generator per row, as the genai backend's forward does
        gen = backend._generator(n_past + len(new[0]) + 1)
        gen.append_tokens(row)
        gens.append(gen)

    def step() -> None:
        for gen, row in zip(gens, new, strict=True):
            gen.append_tokens(row)
            gen.rewind_to(n_past)

    return step
