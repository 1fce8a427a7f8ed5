"""Safetensors read and written one tensor at a time: what the streamed merge and the streamed int4 rounding share.

Reads are plain file reads at the offsets the header gives (``read_tensor``), not mmaps: the pages of a mapping
count as the process's resident memory for as long as it stays open, so a pass that maps a 7 GiB checkpoint and
touches each tensor once ends up "holding" all of it.  ``ShardWriter`` knows every tensor's dtype and shape up
front, writes the header, appends each tensor's bytes as it is made and drops it, and renames each shard into
place when it is whole.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from honed.errors import UserError
from honed.models.memory import GIB, Tensor

SHARD_BYTES = 2 * GIB
"""Largest output shard (bytes); a model under it is one ``model.safetensors``."""
TORCH_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
               "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
"""safetensors dtype name -> torch dtype name, for the dtypes honed streams."""
ST_NAMES = {v: k for k, v in TORCH_NAMES.items()}

Layout = list[list[tuple[str, str, tuple[int, ...]]]]
"""Shards, each a list of (tensor name, safetensors dtype, shape) in write order."""


def tensor_offsets(path: Path) -> Iterator[tuple[str, int, Tensor]]:
    """(name, absolute data offset, entry) of every tensor in a safetensors file, in data order."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    start = 8 + n
    items = [(k, v) for k, v in header.items() if k != "__metadata__"]
    for name, v in sorted(items, key=lambda kv: kv[1]["data_offsets"][0]):
        yield name, start + int(v["data_offsets"][0]), Tensor(str(v["dtype"]), tuple(int(d) for d in v["shape"]))


def read_tensor(path: Path, offset: int, t: Tensor) -> Any:
    """One tensor read with a plain file read (no mmap: its pages would count as the process's memory).

    Raises UserError when the file ends before the tensor does."""
    import torch

    buf = bytearray(t.nbytes)
    with open(path, "rb") as f:
        f.seek(offset)
        if f.readinto(buf) != len(buf):
            raise UserError(f"{path}: truncated (tensor at byte {offset} ends past the file)")
    dtype = getattr(torch, TORCH_NAMES[t.dtype])
    if not buf:
        return torch.empty(t.shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(t.shape)


def dtype_size(st_dtype: str) -> int:
    """Bytes per element of a safetensors dtype name."""
    import torch

    return getattr(torch, TORCH_NAMES[st_dtype]).itemsize


def plan_shards(tensors: list[tuple[str, str, tuple[int, ...]]], shard_bytes: int = SHARD_BYTES) -> Layout:
    """``tensors`` (name, safetensors dtype, shape), in order, cut into shards of at most ``shard_bytes`` each
    (a larger tensor gets a shard of its own)."""
    layout: Layout = [[]]
    size = 0
    for name, st, shape in tensors:
        nbytes = math.prod(shape) * dtype_size(st)
        if layout[-1] and size + nbytes > shard_bytes:
            layout.append([])
            size = 0
        layout[-1].append((name, st, shape))
        size += nbytes
    return layout


class ShardWriter:
    """Write safetensors shards tensor by tensor: the header is known up front (names, dtypes, shapes), so each
    tensor's bytes are appended as it is made and dropped.  Each shard is written to a temp name and renamed."""

    def __init__(self, folder: Path, layout: Layout) -> None:
        self.folder, self.layout = folder, layout
        n = len(layout)
        self.names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                                                           for i in range(n)]

    def write(self, make: Any) -> int:
        """Write every shard; ``make(name)`` returns the tensor (in its planned dtype and shape).  Returns the
        bytes of tensor data written and writes ``model.safetensors.index.json`` for several shards."""
        self.folder.mkdir(parents=True, exist_ok=True)
        weight_map: dict[str, str] = {}
        total = 0
        for fname, shard in zip(self.names, self.layout, strict=True):
            header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
            pos = 0
            for name, st_dtype, shape in shard:
                nbytes = math.prod(shape) * dtype_size(st_dtype)
                header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
                pos += nbytes
                weight_map[name] = fname
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)
            tmp = self.folder / f".{fname}.tmp"
            with open(tmp, "wb") as f:
                f.write(struct.pack("<Q", len(raw)) + raw)
                for name, st_dtype, shape in shard:
                    t = make(name)
                    if ST_NAMES[str(t.dtype).removeprefix("torch.")] != st_dtype or tuple(t.shape) != tuple(shape):
                        raise RuntimeError(f"tensor {name}: made {t.dtype} {tuple(t.shape)}, planned {st_dtype} "
                                           f"{tuple(shape)}")
                    if t.numel():
                        f.write(memoryview(t.contiguous().reshape(-1).view(_u8()).numpy()))
                    del t
            os.replace(tmp, self.folder / fname)
            total += pos
        if len(self.names) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            tmp = self.folder / ".model.safetensors.index.json.tmp"
            tmp.write_text(json.dumps(index, indent=2))
            os.replace(tmp, self.folder / "model.safetensors.index.json")
        return total


def _u8() -> Any:
    import torch

    return torch.uint8
