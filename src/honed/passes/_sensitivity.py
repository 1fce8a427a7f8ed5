"""Measured int4 sensitivity: which MatMuls of an onnxruntime-genai int4 build to keep at int8.

The builder's fixed mix (``last_matmul:int8,mixed_layers:int8``) guesses: the LM head plus llama.cpp's list of
layers. This module measures instead, in PyTorch on the workflow's calibration tokens, how far quantizing one
node group alone to int4 moves the model, and picks the groups to keep at int8 within a size budget.

- A *node group* is what one builder MatMul (or, for q/k/v, the MatMuls the builder may pack into one) computes:
  rows of one or more ``nn.Linear`` weights of the Hugging Face model, named by the builder's graph node names
  (``/model/layers.{i}/attn/qkv_proj/MatMul``, ``.../o_proj/MatMul``, ``.../mlp/{gate,up,down}_proj/MatMul`` or
  the fused ``gate_up_proj``, ``/lm_head/MatMul``).
- The fake quantization is onnxruntime's ``MatMulNBitsQuantizer`` with ``RTNWeightOnlyQuantConfig`` (the builder's
  ``algo_config: rtn``; ``onnxruntime.quantization.neural_compressor.weight_only.quant_tensor`` with dtype
  ``uint``): blocks of ``block_size`` consecutive input features per output row; symmetric: scale
  ``2 * max|w| / (2**bits - 1)`` and zero point ``2**(bits-1)``; asymmetric: scale ``(max - min) / (2**bits - 1)``
  and zero point ``round(-min / scale)``; codes ``clip(round(w / scale + zp), 0, 2**bits - 1)``; the scale is
  computed in float64 and stored as float32, which is what MatMulNBits multiplies by.
- ``kl`` (the direct measure): mean KL(fp32 || group at int4) of the next-token distribution over every
  calibration token, one forward per group (from that group's decoder layer on: the layers before it are
  unchanged, so their outputs are cached).
- ``imatrix`` (a cheap proxy for big models, llama.cpp's importance-matrix idea): the expected squared output
  error of the group's linears, ``sum_ij (W - Q(W))_ij**2 * E[x_j**2]``, from one forward that records each
  linear's mean squared input per feature. Same ranking role, different units (squared activations).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from honed.data.batches import calibration_rows
from honed.errors import UserError
from honed.models.quantized import decoder_layers, fake_quant
from honed.passes.base import PassConfig

log = logging.getLogger("honed")

Method = Literal["kl", "imatrix"]

class SensitivityOptions(PassConfig):
    """The measured-mix fields, for a pass config to inherit (ModelBuilder's ``matmul_mixed_precision: measured``,
    Gptq's ``mixed_precision: measured``)."""

    mixed_precision_budget: float = Field(
        4.75, ge=4, le=8, description="With measured mixed precision: average code bits per weight of the decoder "
        "layers' linears (4: all int4, 8: all int8; block scales excluded, they cost the same); the LM head is int8 "
        "besides. The default spends what llama.cpp's fixed layers (mixed_layers:int8) spend on SmolLM2-135M "
        "(9.6 MiB over all-int4)."
    )
    sensitivity_data_config: str | None = Field(
        None, description="With measured mixed precision: the data config whose rows measure each linear's int4 "
        "sensitivity (default: ModelBuilder: the workflow's first data config; Gptq: its data_config)."
    )
    sensitivity_method: Method = Field(
        "kl", description="With measured mixed precision: 'kl' ranks linears by the mean next-token KL divergence "
        "to the float model with that linear alone at int4 (one partial forward per linear group); 'imatrix' by "
        "the squared output error weighted by the inputs' second moments (one forward in all: for big models)."
    )
    sensitivity_positions: Literal["all", "answer"] = Field(
        "all", description="With measured mixed precision: the positions measured. 'all': every calibration token; "
        "'answer': only the positions that predict each row's answer (the tokens completion-only loss trains on, "
        "e.g. a classification fine-tune's label), so the int8 budget goes where the answers move; rows without a "
        "prompt/answer split are measured at every position."
    )
    sensitivity_samples: int = Field(
        16, ge=1, le=4096, description="With measured mixed precision: calibration rows (each up to the data "
        "config's max_seq_len)."
    )


# Decoder-layer linears by their Hugging Face name -> the builder's node (and the rows of the weight it covers).
_ATTN_QKV = ("q_proj", "k_proj", "v_proj")


@dataclass
class Member:
    """Rows ``[start, stop)`` (output features) of one ``nn.Linear``'s weight; ``stop`` None: to the end."""

    module: str
    start: int = 0
    stop: int | None = None


@dataclass
class NodeGroup:
    """MatMuls of the builder's graph that share one int4/int8 choice.

    ``nodes``: builder node names when the builder packs q/k/v (``packed``) and when it does not (``unpacked``);
    ``members``: the HF weight rows they compute; ``weights``: how many weights (count);
    ``extra_bytes``: what int8 costs over int4 for them (bytes); ``score``: the measured sensitivity (KL in nats
    per token, or the imatrix proxy), filled by ``measure``."""

    name: str
    layer: int | None
    packed: list[str]
    unpacked: list[str]
    members: list[Member]
    weights: int = 0
    extra_bytes: float = 0.0
    score: float = 0.0


def _linear(root: Any, name: str) -> Any:
    return root.get_submodule(name)


def node_groups(model: Any, fuse_gate_up: bool) -> list[NodeGroup]:
    """The builder's quantizable MatMuls of a Llama-like ``model`` as node groups, decoder layers first, the LM
    head last. q/k/v are one group (the builder packs them into ``qkv_proj`` on most targets; either way they
    share a choice here); gate/up are one group when ``fuse_gate_up`` (the builder's ``fuse_mlp_gate_up``).
    A decoder-layer linear of another name is a UserError: its builder node name is unknown."""
    import torch

    prefix, layers = decoder_layers(model)
    groups: list[NodeGroup] = []
    for i, layer in enumerate(layers):
        lin = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        by_leaf: dict[str, str] = {}
        for n in lin:
            leaf = n.rsplit(".", 1)[-1]
            if leaf in by_leaf:
                raise UserError(f"ModelBuilder: matmul_mixed_precision 'measured' found two '{leaf}' linears in "
                                f"decoder layer {i}; use another matmul_mixed_precision for this architecture")
            by_leaf[leaf] = n
        base = f"/model/layers.{i}"
        full = {leaf: f"{prefix}.{i}.{n}" for leaf, n in by_leaf.items()}
        used: set[str] = set()

        def add(name: str, packed: list[str], unpacked: list[str], members: list[Member], idx: int = i) -> None:
            groups.append(NodeGroup(name=name, layer=idx, packed=packed, unpacked=unpacked, members=members))

        if "qkv_proj" in full:  # Phi-3: one HF linear, the builder splits and repacks it
            qkv = lin[by_leaf["qkv_proj"]]
            attn = model.config
            head = getattr(attn, "head_dim", None) or attn.hidden_size // attn.num_attention_heads
            q = attn.num_attention_heads * head
            kv = getattr(attn, "num_key_value_heads", attn.num_attention_heads) * head
            if q + 2 * kv != qkv.out_features:
                raise UserError(f"ModelBuilder: cannot split {full['qkv_proj']} ({qkv.out_features} rows) into "
                                "q/k/v; use another matmul_mixed_precision for this model")
            add(f"layers.{i}.qkv", [f"{base}/attn/qkv_proj/MatMul"],
                [f"{base}/attn/{p}/MatMul" for p in _ATTN_QKV], [Member(full["qkv_proj"])])
            used.add("qkv_proj")
        elif all(p in full for p in _ATTN_QKV):
            add(f"layers.{i}.qkv", [f"{base}/attn/qkv_proj/MatMul"],
                [f"{base}/attn/{p}/MatMul" for p in _ATTN_QKV], [Member(full[p]) for p in _ATTN_QKV])
            used.update(_ATTN_QKV)
        if "o_proj" in full:
            add(f"layers.{i}.o_proj", [f"{base}/attn/o_proj/MatMul"], [f"{base}/attn/o_proj/MatMul"],
                [Member(full["o_proj"])])
            used.add("o_proj")
        if "gate_up_proj" in full:  # Phi-3: gate rows first, then up
            rows = lin[by_leaf["gate_up_proj"]].out_features // 2
            parts = {"gate_proj": Member(full["gate_up_proj"], 0, rows),
                     "up_proj": Member(full["gate_up_proj"], rows, None)}
            used.add("gate_up_proj")
        elif "gate_proj" in full and "up_proj" in full:
            parts = {"gate_proj": Member(full["gate_proj"]), "up_proj": Member(full["up_proj"])}
            used.update(("gate_proj", "up_proj"))
        else:
            parts = {}
        if parts and fuse_gate_up:
            node = [f"{base}/mlp/gate_up_proj/MatMul"]
            add(f"layers.{i}.gate_up_proj", node, node, list(parts.values()))
        for leaf, member in parts.items() if not fuse_gate_up else ():
            node = [f"{base}/mlp/{leaf}/MatMul"]
            add(f"layers.{i}.{leaf}", node, node, [member])
        if "down_proj" in full:
            node = [f"{base}/mlp/down_proj/MatMul"]
            add(f"layers.{i}.down_proj", node, node, [Member(full["down_proj"])])
            used.add("down_proj")
        unknown = sorted(set(full) - used)
        if unknown:
            raise UserError(f"ModelBuilder: matmul_mixed_precision 'measured' does not know the builder's node for "
                            f"{', '.join(unknown)} (decoder layer {i}); use another matmul_mixed_precision")
    head = model.get_output_embeddings()
    if head is not None:
        name = next(n for n, m in model.named_modules() if m is head)
        groups.append(NodeGroup(name="lm_head", layer=None, packed=["/lm_head/MatMul"],
                                unpacked=["/lm_head/MatMul"], members=[Member(name)]))
    return groups


def _rows(model: Any, m: Member) -> Any:
    return _linear(model, m.module).weight[m.start:m.stop]


def price(model: Any, groups: list[NodeGroup], block_size: int, symmetric: bool) -> None:
    """Fill each group's ``weights`` and ``extra_bytes``: int8 over int4 costs 4 bits per weight, plus 4 bits per
    block for the zero point when asymmetric (8- instead of 4-bit zero points; the scales are the same)."""
    for g in groups:
        g.weights = 0
        extra_bits = 0.0
        for m in g.members:
            w = _rows(model, m)
            blocks = w.shape[0] * -(-w.shape[1] // block_size)
            g.weights += w.numel()
            extra_bits += 4 * w.numel() + (4 * blocks if not symmetric else 0)
        g.extra_bytes = extra_bits / 8


@dataclass
class _Cache:
    """Per calibration sample: the decoder layers' keyword arguments (masks, rotary tables) and the hidden states
    entering each layer (``inputs[l]``: (1, seq, hidden) float32), the final normed hidden states, and the fp32
    next-token log-probabilities at the measured positions (positions, vocab)."""

    kwargs: list[dict[str, Any]]
    inputs: list[list[Any]]
    final: list[Any]
    ref_logp: list[Any]


class _Stop(Exception):
    """Stops the model's forward once the first decoder layer's inputs are recorded."""


def _output(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def _final_norm(model: Any, prefix: str) -> Any:
    parent = model.get_submodule(prefix.rsplit(".", 1)[0]) if "." in prefix else model
    return getattr(parent, "norm", None) or getattr(parent, "final_layernorm", None)


def _cache(model: Any, samples: list[Any], masks: list[Any]) -> _Cache:
    import contextlib

    import torch

    prefix, layers = decoder_layers(model)
    norm = _final_norm(model, prefix)
    head = model.get_output_embeddings()
    firsts: list[tuple[tuple, dict]] = []

    def capture(_m: Any, args: tuple, kwargs: dict) -> None:
        firsts.append((args, kwargs))
        raise _Stop

    hook = layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for ids in samples:
            with contextlib.suppress(_Stop):
                model(input_ids=ids, use_cache=False)
    finally:
        hook.remove()
    cache = _Cache(kwargs=[], inputs=[], final=[], ref_logp=[])
    for args, kwargs in firsts:
        h = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        per_layer = []
        for layer in layers:
            per_layer.append(h)
            h = _output(layer(h, **kw))
        f = norm(h) if norm is not None else h
        cache.kwargs.append(kw)
        cache.inputs.append(per_layer)
        cache.final.append(f)
        at = f[0] if masks[len(cache.ref_logp)] is None else f[0][masks[len(cache.ref_logp)]]
        cache.ref_logp.append(torch.log_softmax(head(at).float(), -1))  # at the measured positions only
    return cache


def _kl(ref_logp: Any, logits: Any) -> tuple[float, int]:
    """Sum over positions of KL(ref || softmax(logits)) (nats) and the number of positions."""
    import torch

    logq = torch.log_softmax(logits.float(), -1)
    kl = (ref_logp.exp() * (ref_logp - logq)).sum(-1)
    return float(kl.sum()), kl.numel()


def measure(model: Any, samples: list[Any], groups: list[NodeGroup], block_size: int, symmetric: bool,
            method: Method = "kl", progress: Any = None, masks: list[Any] | None = None) -> None:
    """Fill each group's ``score`` with its int4 sensitivity on ``samples`` (token-id tensors (1, seq)).

    ``kl``: mean KL(fp32 || only this group at int4) of the next-token distribution over the calibration
    positions, in nats per token. ``imatrix``: ``sum_ij dW_ij**2 * E[x_j**2]`` over the group's linears (the
    expected squared output error per token). ``masks``: per sample, the positions measured ((seq,) bool; None:
    all). Weights are restored after each group."""
    import torch

    masks = masks or [None] * len(samples)
    with torch.no_grad():
        if method == "imatrix":
            _imatrix(model, samples, groups, block_size, symmetric, masks)
            return
        prefix, layers = decoder_layers(model)
        norm = _final_norm(model, prefix)
        head = model.get_output_embeddings()
        cache = _cache(model, samples, masks)
        for g in groups:
            saved = []
            try:
                if g.layer is not None:
                    for m in g.members:
                        w = _linear(model, m.module).weight
                        saved.append((w, w.data[m.start:m.stop].clone(), m))
                        w.data[m.start:m.stop] = fake_quant(w.data[m.start:m.stop], 4, block_size,
                                                            symmetric).to(w.dtype)
                    head_w = head.weight
                else:
                    head_w = fake_quant(head.weight, 4, block_size, symmetric).to(head.weight.dtype)
                total, count = 0.0, 0
                for s in range(len(samples)):
                    if g.layer is None:
                        f = cache.final[s]
                    else:
                        h = cache.inputs[s][g.layer]
                        for layer in layers[g.layer:]:
                            h = _output(layer(h, **cache.kwargs[s]))
                        f = norm(h) if norm is not None else h
                    f = f[0] if masks[s] is None else f[0][masks[s]]  # the head only where it is measured
                    kl, n = _kl(cache.ref_logp[s], torch.nn.functional.linear(f, head_w, head.bias))
                    total, count = total + kl, count + n
                g.score = total / max(count, 1)
            finally:
                for w, rows, m in saved:
                    w.data[m.start:m.stop] = rows
            if progress is not None:
                progress.advance(1)


def _imatrix(model: Any, samples: list[Any], groups: list[NodeGroup], block_size: int, symmetric: bool,
             masks: list[Any]) -> None:
    names = {m.module for g in groups for m in g.members}
    sq: dict[str, Any] = {}
    rows: dict[str, int] = {}
    current: list[Any] = [None]  # the mask of the sample being fed

    def hook(name: str) -> Any:
        def add(_m: Any, args: tuple) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            if current[0] is not None:
                x = x[current[0]]
            sq[name] = sq.get(name, 0) + (x * x).sum(0)
            rows[name] = rows.get(name, 0) + x.shape[0]
        return add

    hooks = [_linear(model, n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        for ids, mask in zip(samples, masks, strict=True):
            current[0] = mask
            model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    for g in groups:
        err = 0.0
        for m in g.members:
            w = _rows(model, m).float()
            d = w - fake_quant(w, 4, block_size, symmetric)
            err += float((d * d * (sq[m.module] / max(rows[m.module], 1))).sum())
        g.score = err


def choose(groups: list[NodeGroup], budget_bytes: float) -> list[NodeGroup]:
    """The groups to keep at int8: greedily by score per extra byte, largest first, each that still fits in
    ``budget_bytes`` (a group that does not fit is skipped and smaller ones are tried). The scores are treated
    as additive, and int8's own error as negligible (its step is 17x finer than int4's)."""
    ranked = sorted((g for g in groups if g.extra_bytes > 0), key=lambda g: g.score / g.extra_bytes, reverse=True)
    chosen, spent = [], 0.0
    for g in ranked:
        if spent + g.extra_bytes <= budget_bytes and g.score > 0:
            chosen.append(g)
            spent += g.extra_bytes
    return chosen


def budget_bytes(groups: list[NodeGroup], bits: float) -> float:
    """Bytes int8 may add over all-int4 so that the quantized MatMul weights average ``bits`` code bits per
    weight (4: all int4, 8: all int8; scales excluded, they cost the same either way)."""
    total = sum(g.weights for g in groups)
    return max(bits - 4.0, 0.0) * total / 8


def report(groups: list[NodeGroup], chosen: list[NodeGroup], method: Method, bits: float,
           budget: float, seconds: float, samples: int, tokens: int) -> dict[str, Any]:
    """The JSON written beside the model (``sensitivity.json``): the measure, the budget, the chosen groups and
    every group's score, weights and int8 cost."""
    picked = {g.name for g in chosen}
    return {
        "method": method,
        "units": "mean KL(fp32 || int4 group) in nats per token" if method == "kl"
        else "sum dW^2 * E[x^2] (expected squared output error per token)",
        "budget_bits_per_weight": bits,
        "budget_extra_mib": round(budget / 2**20, 3),
        "spent_extra_mib": round(sum(g.extra_bytes for g in chosen) / 2**20, 3),
        "calibration_samples": samples,
        "calibration_tokens": tokens,
        "seconds": round(seconds, 2),
        "int8": [g.name for g in chosen],
        "groups": [{"name": g.name, "score": g.score, "weights": g.weights,
                    "extra_mib": round(g.extra_bytes / 2**20, 4), "int8": g.name in picked,
                    "score_per_mib": (g.score / (g.extra_bytes / 2**20)) if g.extra_bytes else None}
                   for g in groups],
    }


def select_int8_groups(model: Any, tokenizer: Any, data_config: Any, *, block_size: int, symmetric: bool,
                       budget_bits: float, method: Method, num_samples: int, fuse_gate_up: bool,
                       positions: Literal["all", "answer"] = "all", progress: Any = None,
                       skip: set[str] | frozenset[str] = frozenset()) -> tuple[list[NodeGroup], dict[str, Any]]:
    """Measure ``model`` (a float32 HF causal LM) on up to ``num_samples`` rows of ``data_config`` and return the
    node groups to keep at int8 with the report for ``sensitivity.json``. ``positions`` 'answer': measured at
    the positions that predict each row's answer only (rows without one: everywhere). Groups with a builder node
    in ``skip`` (excluded from quantization, or absent) are neither measured nor priced."""
    import time

    start = time.perf_counter()
    rows = calibration_rows(data_config, tokenizer, num_samples)
    samples = [r.ids for r in rows]
    masks = [r.answer if positions == "answer" and r.answer is not None and bool(r.answer.any()) else None
             for r in rows]
    groups = [g for g in node_groups(model, fuse_gate_up) if skip.isdisjoint(g.packed + g.unpacked)]
    price(model, groups, block_size, symmetric)
    bar = progress("Sensitivity (int4 per linear group)", len(groups)) if progress is not None else None
    try:
        measure(model, samples, groups, block_size, symmetric, method, bar, masks)
    finally:
        if bar is not None:
            bar.close()
    budget = budget_bytes(groups, budget_bits)
    chosen = choose(groups, budget)
    seconds = time.perf_counter() - start
    tokens = sum(int(s.shape[-1]) if m is None else int(m.sum()) for s, m in zip(samples, masks, strict=True))
    log.info("Measured the int4 sensitivity of %d linear groups on %d tokens in %.1f s; %d kept at int8",
             len(groups), tokens, seconds, len(chosen))
    info = report(groups, chosen, method, budget_bits, budget, seconds, len(samples), tokens)
    info["positions"] = positions
    return chosen, info


def write_report(info: dict[str, Any], data_config: str, out: Any, ctx: Any) -> None:
    """``info`` as ``out``/sensitivity.json (with the data config's name) and its figures into ``ctx.metrics``."""
    import json
    from pathlib import Path

    info["data_config"] = data_config
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "sensitivity.json").write_text(json.dumps(info, indent=2))
    ctx.metrics["sensitivity_seconds"] = info["seconds"]
    ctx.metrics["sensitivity_int8_groups"] = len(info["int8"])
    ctx.metrics["sensitivity_int8_extra_mib"] = info["spent_extra_mib"]


def _flag(options: dict[str, Any], key: str, default: bool) -> bool:
    """A builder boolean option as the builder reads it (bools, or strings such as 'true'/'0')."""
    v = options.get(key, default)
    return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes")


def measured_target_options(model: Any, config: Any, ep: str, out: Any, ctx: Any) -> dict[str, Any]:
    """The builder's ``target_options`` for ``matmul_mixed_precision: measured``: the LM head at int8 (as the fixed
    mix keeps it: the builder then reads the embedding from its int8 weights, where an int4 head would leave a
    float embedding of vocab x hidden beside it), and one exact-name int8 override per chosen decoder node (the
    others stay int4), after the nodes_to_exclude of ``config.extra_options`` (structured
    overrides replace the builder's legacy exclusion list, so they are carried over here). Writes
    ``sensitivity.json`` into ``out`` (the genai folder) and the figures into ``ctx.metrics``.

    ``model``: the ModelBuilder input (an ``hf`` handle); ``config``: its ModelBuilderConfig; ``ep``: the
    builder's execution provider."""
    import gc
    from pathlib import Path

    from honed.models.loaders import load_model, load_tokenizer
    from honed.models.quantized import quantization_config

    where = "ModelBuilder: matmul_mixed_precision 'measured'"
    if model.kind != "hf":
        raise UserError(f"{where} measures a full Hugging Face model, not a {model.kind} input; set "
                        "matmul_mixed_precision to 'none' or a fixed mix for adapters")
    if quantization_config(Path(model.path)) is not None:
        raise UserError(f"{where} needs float weights, but {model.path} is already quantized (its codes are kept); "
                        "drop matmul_mixed_precision or the quantizing pass before it")
    name = config.sensitivity_data_config or next(iter(ctx.data_configs), None)
    if name is None:
        raise UserError(f"{where} needs calibration rows; define a data config and set sensitivity_data_config "
                        "to its name")
    rows = ctx.data_config(name, "sensitivity_data_config", "ModelBuilder")
    extra = config.extra_options
    excluded = [n for n in str(extra.get("nodes_to_exclude", "")).split(",") if n]
    pack_qkv = (ep != "dml" and _flag(extra, "fuse_qkv", not _flag(extra, "disable_qkv_fusion", False)))
    net = load_model(model, dtype="float32")
    net_config = net.config
    try:
        chosen, info = select_int8_groups(
            net, load_tokenizer(model), rows, block_size=config.int4_block_size,
            symmetric=config.int4_is_symmetric, budget_bits=config.mixed_precision_budget,
            method=config.sensitivity_method, num_samples=config.sensitivity_samples,
            positions=config.sensitivity_positions, fuse_gate_up=_flag(extra, "fuse_mlp_gate_up", False),
            progress=ctx.task,
            skip={*excluded, "/lm_head/MatMul"})
    finally:
        del net
        gc.collect()
    nodes = [n for g in chosen for n in (g.packed if pack_qkv else g.unpacked)]
    write_report(info, name, out, ctx)
    overrides = [{"match": {"name": n}, "exclude": True} for n in excluded]
    if not config.exclude_lm_head:  # the LM head at int8, which the builder then shares with the embedding
        overrides.append({"match": {"preset": "last_matmul"}, "type": "int8"})
    overrides += [{"match": {"name": n}, "type": "int8"} for n in nodes]
    weights: dict[str, Any] = {"overrides": overrides}
    if getattr(net_config, "tie_word_embeddings", False) and not config.exclude_lm_head:
        # The builder adds Gather to the legacy op types for a tied model, not to structured ones: without it
        # the embedding would stay a float copy beside the int8 head (vocab x hidden x 4 bytes).
        weights["op_types"] = sorted({*str(extra.get("op_types_to_quantize", "MatMul")).split("/"), "MatMul",
                                      "Gather"})
    return {"quant_config": {"weights": weights}}
