"""footprints.json: the provenance of every model a run touched."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StepRecord:
    """One pass as it happened: config, input and output ids, cache hit, time, memory, metrics."""

    name: str
    type: str
    config: dict[str, Any]
    input_id: str
    output_id: str
    cached: bool | None = None
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Footprints:
    source: str | None
    generation: str
    honed_version: str
    input_model: dict[str, Any]
    steps: list[StepRecord]
    output_model: dict[str, Any]
    created: float = field(default_factory=time.time)
    evaluation: dict[str, Any] | None = None
    """Metrics of the input and output models and the goal checks (see honed.evaluate)."""
    search: dict[str, Any] | None = None
    """Every trial of a search, the Pareto front and the ranking (see honed.search)."""
    flows: dict[str, Any] | None = None
    """With Olive's ``pass_flows``: per flow, its output folder (under this one), model, steps and evaluation."""


def read_footprints(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def model_contents(handle: Any) -> dict[str, Any]:
    """What a model's files hold, read from the files (not from any pass config): weight bytes per precision
    (``weight_bytes``, and ``weight_mib`` in MiB); for ONNX/genai node counts per op type (``op_counts``) and
    the ai.onnx opset; for a quantized Hugging Face checkpoint its ``quantization``. A PEFT adapter, a hub id
    or files that cannot be parsed give ``{}``."""
    import logging

    from google.protobuf.message import DecodeError

    from honed.errors import UserError
    from honed.passes._onnx_common import load_graph_only, onnx_file, op_counts, weight_bytes

    if handle is not None and handle.kind == "hf":
        return _hf_contents(Path(handle.path))
    if handle is None or handle.kind not in ("onnx", "genai"):
        return {}
    try:
        folder = Path(handle.path)
        files = sorted(folder.glob("*.onnx")) if handle.kind == "genai" and folder.is_dir() else [onnx_file(handle)]
        weights: dict[str, int] = {}
        ops: dict[str, int] = {}
        opsets: set[int] = set()
        for f in files:
            m = load_graph_only(f)
            for k, v in weight_bytes(m).items():
                weights[k] = weights.get(k, 0) + v
            for k, v in op_counts(m).items():
                ops[k] = ops.get(k, 0) + v
            opsets |= {o.version for o in m.opset_import if o.domain in ("", "ai.onnx")}
    except (OSError, DecodeError, UserError) as e:
        logging.getLogger("honed").debug("cannot describe %s: %s", handle.path, e)
        return {}
    weights = dict(sorted(weights.items(), key=lambda kv: -kv[1]))
    return {
        "weight_bytes": weights,
        "weight_mib": {k: round(v / 2**20, 4) for k, v in weights.items()},
        "op_counts": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "opset": min(opsets) if len(opsets) == 1 else sorted(opsets),
    }


_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_SAFETENSORS_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _hf_contents(folder: Path) -> dict[str, Any]:
    """A local Hugging Face folder's weight bytes per precision, read from the safetensors headers; the codes
    of an Olive-format quantized checkpoint count as ``int<bits>`` (their packed zero points as uint8, as in ONNX) and its ``quantization`` is named."""
    import math
    import struct

    from honed.models.quantized import layer_bits, quantization_config

    qc = quantization_config(folder) if folder.is_dir() else None
    weights: dict[str, int] = {}
    quantized = 0
    try:
        for f in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            with f.open("rb") as fh:
                header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                size = math.prod(info["shape"]) * _SAFETENSORS_BYTES.get(info["dtype"], 1)
                kind = _SAFETENSORS_NAMES.get(info["dtype"], info["dtype"].lower())
                if qc is not None and name.endswith(".qweight"):  # zero points stay uint8, as ONNX stores them
                    kind = f"int{layer_bits(qc, name.rsplit('.', 1)[0])[0]}"
                    quantized += 1
                weights[kind] = weights.get(kind, 0) + size
    except (OSError, ValueError, KeyError, struct.error):
        return {}
    if not weights:
        return {}
    weights = dict(sorted(weights.items(), key=lambda kv: -kv[1]))
    out: dict[str, Any] = {"weight_bytes": weights, "weight_mib": {k: round(v / 2**20, 4) for k, v in weights.items()}}
    if qc is not None:
        out["quantization"] = {"format": qc["quant_method"], "algorithm": qc.get("algorithm"), "bits": qc["bits"],
                               "group_size": qc["group_size"], "symmetric": qc.get("symmetric"),
                               "quantized_linears": quantized}
    return out


def describe_output(handle: Any) -> dict[str, Any]:
    """The ``output_model`` entry of footprints.json: the handle plus ``contents`` read from its files."""
    if handle is None:
        return {}
    described = handle.model_dump(mode="json")
    contents = model_contents(handle)
    if contents:
        described["contents"] = contents
    return described


def step_contents(handle: Any) -> dict[str, Any]:
    """A pass's footprint addition: ``{"model_contents": ...}`` when its files could be described, else ``{}``."""
    contents = model_contents(handle)
    return {"model_contents": contents} if contents else {}
