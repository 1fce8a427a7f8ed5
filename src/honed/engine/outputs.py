"""The output folder: the final model's files directly in it, plus footprints.json.

When the last pass is ModelBuilder, ``onnxruntime_genai.Model(output_dir)`` works on it as is.
Each file is copied to a temp name and renamed into place; files a previous run wrote and this
one does not are removed (tracked in ``.honed-manifest.json``), and nothing else is touched, so
an output folder may also hold the cache or the user's own files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from honed.engine.footprints import Footprints
from honed.models.handle import ModelHandle

MANIFEST = ".honed-manifest.json"


def _model_files(model: ModelHandle) -> dict[str, Path]:
    src = Path(model.path)
    if src.is_file():
        return {f.name: f for f in model.files()}
    return {f.relative_to(src).as_posix(): f for f in model.files()}


def write_output_dir(model: ModelHandle, out: Path, cache_root: Path, footprints: Footprints) -> list[str]:
    """Copy the final model into ``out`` and write footprints.json; return the names written."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST
    old = set(json.loads(manifest.read_text())) if manifest.exists() else set()
    files = _model_files(model) if Path(model.path).exists() else {}
    for rel, src in files.items():
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.honed-tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    footprints.write(out / "footprints.json")
    written = sorted([*files, "footprints.json"])
    for stale in old - set(written):
        (out / stale).unlink(missing_ok=True)
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text(json.dumps(written))
    os.replace(tmp, manifest)
    return written
