"""How much memory a pass needs, estimated before it loads anything, and how much the machine has.

The weights come from the safetensors headers (exact shapes and stored dtypes, no tensor read), else from
``config.json`` (a decoder-only estimate: embeddings, attention and MLP per layer).  Training adds the
activations of one micro-batch, the adapter with its gradients and AdamW state, and the runtime (torch,
transformers and peft loaded).  ``check_fits`` turns an estimate over the available memory into one
``UserError`` line that names the estimate's parts and what to change, raised before the model loads.

Available memory is ``HONED_MEMORY_LIMIT_GB`` (GiB; for tests and containers) when set, else the smaller of
psutil's available memory and what the cgroup (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) leaves.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from honed.errors import UserError

GIB = 2**30
ENV_LIMIT = "HONED_MEMORY_LIMIT_GB"
RUNTIME_BYTES = 1 * GIB
"""Resident size of a process with torch, transformers and peft imported and a pass's small state (measured
0.6-0.9 GiB on the scale bench's smallest model; rounded up)."""
# Bytes kept for the backward pass per token and layer, in units of the activation dtype's size: about 16
# hidden-size values (norm outputs, q/k/v, attention output, residuals) and 5 intermediate-size ones (gate, up,
# their activation and product, the down projection's input).  Calibrated on bench/scale.py (0.1B-0.5B).
ACT_PER_HIDDEN = 16
ACT_PER_INTERMEDIATE = 5
# The adapter's input kept per adapted linear (fp32 in honed's loop): about 7 hidden-size values and one
# intermediate-size value per token and layer for the 7 projections of a Llama block.
LORA_IN_HIDDEN = 7
LORA_IN_INTERMEDIATE = 1
ADAM_BYTES_PER_PARAM = 16  # fp32 weight, gradient and AdamW's two moments
_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1,
          "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U32": 4, "U64": 8}
_FLOAT_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
MAX_HEADER = 100 * 2**20


@dataclass(frozen=True)
class Tensor:
    """One stored tensor: its safetensors dtype name (BF16, F32, ...) and shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * _SIZES.get(self.dtype, 4)


@dataclass(frozen=True)
class Weights:
    """A model's weights as stored: parameter count, bytes, the dominant float dtype and every tensor."""

    params: int
    stored_bytes: int
    dtype: str
    """The float dtype most of the bytes are stored in (``bfloat16``, ``float16``, ``float32``)."""
    tensors: dict[str, Tensor] = field(default_factory=dict)
    """Name -> tensor; empty when estimated from config.json."""
    config: dict = field(default_factory=dict)

    def bytes_as(self, dtype: str) -> int:
        """Bytes of the float weights held in ``dtype`` (integer tensors keep their size)."""
        if not self.tensors:
            return self.params * _DTYPE_BYTES.get(dtype, 4)
        size = _DTYPE_BYTES.get(dtype, 4)
        return sum(t.numel * size if t.dtype in _FLOAT_NAMES else t.nbytes for t in self.tensors.values())

    def largest_tensor(self) -> int:
        """Parameters of the largest tensor (the transient per-tensor buffers scale with it)."""
        if self.tensors:
            return max((t.numel for t in self.tensors.values()), default=0)
        c = self.config
        return max(int(c.get("vocab_size", 0)) * int(c.get("hidden_size", 0)),
                   3 * int(c.get("hidden_size", 0)) * int(c.get("intermediate_size", 0)))


def read_header(path: Path) -> dict[str, Tensor]:
    """The tensors a safetensors file holds, from its JSON header alone (no tensor data is read).

    Raises UserError for a file too short or with a header that is not safetensors."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise UserError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER:
            raise UserError(f"{path}: not a safetensors file (header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise UserError(f"{path}: not a safetensors file ({e})") from None
    return {name: Tensor(str(v["dtype"]), tuple(int(d) for d in v["shape"]))
            for name, v in header.items() if name != "__metadata__"}


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face folder: the index's shards, else ``*.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def _config(folder: Path) -> dict:
    cfg = folder / "config.json"
    data = json.loads(cfg.read_text()) if cfg.is_file() else {}
    return data.get("text_config", data) if isinstance(data.get("text_config"), dict) else data


def _config_params(c: dict) -> int:
    """A decoder-only model's parameters from its config: embeddings (+ an untied head), per layer the
    attention (q, k, v, o) and a gated MLP (gate, up, down) and two norms, and the final norm."""
    h = int(c.get("hidden_size", 0))
    inter = int(c.get("intermediate_size", 4 * h))
    layers = int(c.get("num_hidden_layers", 0))
    vocab = int(c.get("vocab_size", 0))
    heads = int(c.get("num_attention_heads", 1)) or 1
    kv = int(c.get("num_key_value_heads", heads))
    head_dim = int(c.get("head_dim") or h // heads)
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    mlp = 3 * h * inter
    embed = vocab * h * (1 if c.get("tie_word_embeddings", False) else 2)
    return embed + layers * (attn + mlp + 2 * h) + h


def weights(folder: str | Path) -> Weights:
    """The weights of a Hugging Face folder, from safetensors headers, else estimated from config.json.

    Raises UserError when neither is there."""
    folder = Path(folder)
    files = safetensors_files(folder)
    cfg = _config(folder)
    if files:
        tensors: dict[str, Tensor] = {}
        for f in files:
            tensors.update(read_header(f))
        by_dtype: dict[str, int] = {}
        for t in tensors.values():
            if t.dtype in _FLOAT_NAMES:
                by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.nbytes
        dtype = _FLOAT_NAMES[max(by_dtype, key=lambda k: by_dtype[k])] if by_dtype else "float32"
        return Weights(params=sum(t.numel for t in tensors.values()),
                       stored_bytes=sum(t.nbytes for t in tensors.values()), dtype=dtype, tensors=tensors,
                       config=cfg)
    if not cfg:
        raise UserError(f"{folder}: no safetensors weights and no config.json to estimate its size from")
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    dtype = dtype if dtype in _DTYPE_BYTES else "float32"
    params = _config_params(cfg)
    return Weights(params=params, stored_bytes=params * _DTYPE_BYTES[dtype], dtype=dtype, config=cfg)


def adapter_params(w: Weights, targets: list[str] | None, r: int) -> int:
    """LoRA parameters for rank ``r`` on the 2-D weights whose module name ends in one of ``targets``
    (every 2-D weight inside the decoder layers when None): r x (in + out) each."""
    if w.tensors:
        total = 0
        for name, t in w.tensors.items():
            if len(t.shape) != 2 or not name.endswith(".weight"):
                continue
            leaf = name[: -len(".weight")].rsplit(".", 1)[-1]
            if (targets is None and ".layers." in name) or (targets is not None and leaf in targets):
                total += r * (t.shape[0] + t.shape[1])
        return total
    c = w.config
    h, inter = int(c.get("hidden_size", 0)), int(c.get("intermediate_size", 0))
    return int(c.get("num_hidden_layers", 0)) * r * (8 * h + 3 * (h + inter))


@dataclass
class Estimate:
    """What a pass needs: named parts in bytes; ``what`` names the pass and model (``LoRA on <model>``)."""

    what: str
    parts: dict[str, int]
    labels: dict[str, str] = field(default_factory=dict)
    """Extra words after a part's GiB (e.g. its dtype: ``weights 7.6 bf16``)."""

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        """``needs about 18.2 GiB (weights 7.6 bf16 + activations 6.0 + ...)``."""
        inner = " + ".join(f"{k} {v / GIB:.1f}" + (f" {self.labels[k]}" if k in self.labels else "")
                           for k, v in self.parts.items())
        return f"needs about {self.total / GIB:.1f} GiB ({inner})"


def short(dtype: str) -> str:
    """``bf16`` for ``bfloat16`` and so on."""
    return _SHORT.get(dtype, dtype)


def lora_estimate(what: str, w: Weights, *, held_dtype: str, compute_dtype: str, tokens: int, r: int,
                  targets: list[str] | None, four_bit: bool = False, processes: int = 1) -> Estimate:
    """LoRA-family training on CPU: the base held in ``held_dtype`` (4-bit linears for QLoRA), the activations of
    ``tokens`` tokens per micro-batch computed in ``compute_dtype``, the adapter with AdamW state, the runtime;
    everything but the runtime once per process."""
    c = w.config
    h = int(c.get("hidden_size", 0))
    inter = int(c.get("intermediate_size", 4 * h))
    layers = int(c.get("num_hidden_layers", 0))
    vocab = int(c.get("vocab_size", 0))
    if four_bit:  # 4-bit codes plus a scale per 64 weights for the linears, the rest in the compute dtype
        lin = sum(t.numel for n, t in w.tensors.items() if len(t.shape) == 2 and ".layers." in n)
        held = int(lin * 0.5625) + (w.params - lin) * _DTYPE_BYTES.get(compute_dtype, 4)
    else:
        held = w.bytes_as(held_dtype)
    act_b = _DTYPE_BYTES.get(compute_dtype, 4)
    act = tokens * layers * ((ACT_PER_HIDDEN * h + ACT_PER_INTERMEDIATE * inter) * act_b
                             + (LORA_IN_HIDDEN * h + LORA_IN_INTERMEDIATE * inter) * 4)
    act += tokens * vocab * 4 * 2  # fp32 logits and their gradient (the worst case: a label at every position)
    if held_dtype != compute_dtype and not four_bit:  # one linear upcast at a time (and its backward copy)
        act += 2 * w.largest_tensor() * _DTYPE_BYTES.get(compute_dtype, 4)
    opt = adapter_params(w, targets, r) * ADAM_BYTES_PER_PARAM
    parts = {"weights": held * processes, "activations": act * processes, "adapter and optimizer": opt * processes,
             "runtime": RUNTIME_BYTES * processes}
    label = "4-bit" if four_bit else short(held_dtype)
    return Estimate(what, parts, {"weights": label + (f" x {processes} processes" if processes > 1 else "")})


def merge_estimate(what: str, w: Weights, adapter_bytes: int) -> Estimate:
    """The streamed merge: one tensor at a time in fp32 (read, delta, sum, cast: about 4 copies of the
    largest tensor), the adapter, the runtime."""
    return Estimate(what, {"largest tensor x 4 fp32": 4 * 4 * w.largest_tensor(), "adapter": adapter_bytes,
                           "runtime": RUNTIME_BYTES})


BUILDER_FP32_COPIES = 1.5
"""The onnxruntime-genai builder (0.18, int4 RTN) keeps about 1.5 fp32 copies of the weights besides the source
it loads: bench/scale.py measured 4.0x (0.5B) and 3.9x (1.5B) the bf16 bytes plus the runtime."""


def build_estimate(what: str, w: Weights) -> Estimate:
    """The genai builder: the source loaded once in its stored dtype, the fp32 copies the builder makes while it
    writes the graph (``BUILDER_FP32_COPIES``), the runtime."""
    return Estimate(what, {"weights": w.bytes_as(w.dtype),
                           "builder copies": int(BUILDER_FP32_COPIES * w.bytes_as("float32")),
                           "runtime": RUNTIME_BYTES}, {"weights": short(w.dtype), "builder copies": "fp32"})


def _cgroup_room() -> int | None:
    """Bytes the cgroup's limit leaves (limit - usage), or None when unlimited or unknown."""
    for limit_f, usage_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                             ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                              "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_f).read_text().strip()
            usage = Path(usage_f).read_text().strip()
        except OSError:
            continue
        if not limit.isdigit() or int(limit) >= 2**60:  # "max" or v1's "no limit" value
            return None
        return max(int(limit) - (int(usage) if usage.isdigit() else 0), 0)
    return None


def available_memory() -> tuple[int, str]:
    """Bytes a pass may use and where the figure comes from (the env var, the cgroup, or psutil).

    Raises UserError when ``HONED_MEMORY_LIMIT_GB`` is set but not a positive number."""
    raw = os.environ.get(ENV_LIMIT, "").strip()
    if raw:
        try:
            gb = float(raw)
        except ValueError:
            gb = -1.0
        if not gb > 0 or gb != gb or gb == float("inf"):
            raise UserError(f"{ENV_LIMIT}={raw!r}: give the memory honed may use in GiB, e.g. 12")
        return int(gb * GIB), ENV_LIMIT
    import psutil

    avail = int(psutil.virtual_memory().available)
    room = _cgroup_room()
    if room is not None and room < avail:
        return room, "the cgroup's memory.max"
    return avail, "available"


def shortfall(estimate: Estimate) -> str | None:
    """None when the estimate fits the memory there is (``available_memory``), else what says it does not:
    ``needs about 18.2 GiB (...), the machine has 12.0 GiB available``."""
    have, source = available_memory()
    if estimate.total <= have:
        return None
    where = f"{ENV_LIMIT} allows {have / GIB:.1f} GiB" if source == ENV_LIMIT else (
        f"the machine has {have / GIB:.1f} GiB available" + (" (cgroup limit)" if source != "available" else ""))
    return f"{estimate.describe()}, {where}"


def check_fits(estimate: Estimate, fix: str) -> None:
    """UserError (one line: the estimate, the memory there is, ``fix``) when the estimate exceeds it."""
    short_of = shortfall(estimate)
    if short_of is not None:
        raise UserError(f"{estimate.what}: {short_of}; {fix}")


def held_bytes(w: Weights, held: str, compute: str) -> int:
    """Bytes of ``w`` loaded for inference as ``honed.models.loaders.hold_as_stored`` holds it: the linear layers'
    weights in ``held``, embeddings and 1-D tensors (norms, biases) in ``compute`` (``upcast_linears`` casts them)
    when the two differ; integer tensors as stored."""
    if held == compute or not w.tensors:
        return w.bytes_as(held)
    h, c = _DTYPE_BYTES.get(held, 4), _DTYPE_BYTES.get(compute, 4)
    total = 0
    for name, t in w.tensors.items():
        if t.dtype not in _FLOAT_NAMES:
            total += t.nbytes
        else:
            total += t.numel * (c if len(t.shape) < 2 or "embed" in name else h)
    return total


def fidelity_estimate(what: str, w: Weights, held: str, compute: str, output_bytes: int,
                      extra_bytes: int = 0) -> Estimate:
    """A fidelity check (``honed.passes._fidelity``): the source model held for inference (``held_bytes``; plus
    ``extra_bytes``, an adapter), the output model (``output_bytes``: its ONNX files, or its weights), the runtime;
    the activations of one row are small beside them."""
    label = short(held) + (f", computed in {short(compute)}" if compute != held else "")
    return Estimate(what, {"source": held_bytes(w, held, compute) + extra_bytes, "output": output_bytes,
                           "runtime": RUNTIME_BYTES}, {"source": label})


CODES_COPIES = 2
"""The genai builder reading an Olive-format checkpoint (``honed.models.rtn``'s streamed RTN codes) holds the
checkpoint's tensors about twice: as loaded, and serialized into the protobuf its ``to_nbits`` step works on; the
float embedding besides in fp32, twice (bench/scale.py, 0.5B-3.8B)."""


def codes_bytes(w: Weights, block_size: int) -> int:
    """About how many bytes an int4 RTN checkpoint of ``w`` holds (``honed.models.rtn``): per decoder-layer matrix
    4-bit codes, a float32 scale and a 4-bit zero point per block of ``block_size``; an untied LM head at 8 bits;
    every other tensor as stored."""
    per4, per8 = 0.5 + 4.5 / block_size, 1 + 5 / block_size
    if not w.tensors:
        c = w.config
        h, vocab = int(c.get("hidden_size", 0)), int(c.get("vocab_size", 0))
        head = 0 if c.get("tie_word_embeddings", False) else vocab * h
        lin = w.params - vocab * h - head
        return int(lin * per4 + head * per8) + vocab * h * _DTYPE_BYTES.get(w.dtype, 4)
    total = 0
    for name, t in w.tensors.items():
        if len(t.shape) == 2 and ".layers." in name:
            total += int(t.numel * per4)
        elif name == "lm_head.weight":
            total += int(t.numel * per8)
        else:
            total += t.nbytes
    return total


def codes_build_estimate(what: str, w: Weights, checkpoint_bytes: int) -> Estimate:
    """The genai builder on streamed RTN codes (``honed.models.rtn``): the checkpoint (``checkpoint_bytes``: codes,
    scales, zero points and the tensors kept as stored) ``CODES_COPIES`` times, the float embedding in fp32 twice (a
    tied one, which the builder rounds as the LM head, twice more), the runtime.  The streaming itself holds one
    tensor and its rounding temporaries: less."""
    c = w.config
    embed = int(c.get("vocab_size", 0)) * int(c.get("hidden_size", 0)) * 4
    tied = bool(c.get("tie_word_embeddings", False)) or (bool(w.tensors) and "lm_head.weight" not in w.tensors)
    return Estimate(what, {"codes x 2": CODES_COPIES * checkpoint_bytes,
                           "fp32 embedding x 2": (4 if tied else 2) * embed, "runtime": RUNTIME_BYTES})


def preflight_build(folder: str | Path, what: str, checkpoint_bytes: int | None = None, why_not_streamed: str = "",
                    block_size: int = 32) -> None:
    """ModelBuilder's check.  ``checkpoint_bytes`` given: the build reads honed's streamed RTN codes of that size
    (``codes_build_estimate``); else the builder rounds the float weights itself (``build_estimate``: about 4x the
    bf16 bytes), and ``why_not_streamed`` says why the streamed codes are not used (the refusal names it, with what
    they would need).  Raises UserError when the estimate does not fit."""
    w = weights(folder)
    if checkpoint_bytes is not None:
        check_fits(codes_build_estimate(what, w, checkpoint_bytes), "build on a machine with more memory")
        return
    fix = ("store the model in bf16 (MergeAdapterWeights torch_dtype: bfloat16) or build on a machine with more "
           "memory" if w.dtype == "float32" else "build on a machine with more memory")
    if why_not_streamed:
        streamed = codes_build_estimate(what, w, codes_bytes(w, block_size))
        fix = (f"{fix}, or let honed round int4 itself, streamed (about {streamed.total / GIB:.1f} GiB): precision "
               f"int4 on cpu, int4_algo_config unset or 'rtn', a fixed matmul_mixed_precision and no extra_options; "
               f"here {why_not_streamed}")
    check_fits(build_estimate(what, w), fix)
