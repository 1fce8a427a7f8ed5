"""The content-addressed cache of pass outputs.

Layout under the cache root::

    entries/<key>/model/...      the pass output (renamed into place only when complete)
    entries/<key>/handle.json    the output ModelHandle, paths relative to the cache root
    entries/<key>/meta.json      pass, config, input id, time taken
    tmp/<key>.<pid>.<rand>/      a pass being written; never read
    work/<key>/                  checkpoints of an unfinished pass (resume after a kill)
    locks/<key>.lock             held while a key is computed, so two runs never build it twice

A failed pass leaves nothing under ``entries``; a killed one leaves a ``tmp`` folder that the
next run removes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from honed.models.handle import ModelHandle

ROOT_TOKEN = "{cache}"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


@dataclass
class Entry:
    key: str
    path: Path
    handle: ModelHandle
    meta: dict[str, Any]


class Cache:
    """Pass outputs by key. Safe for several processes at once (file locks, atomic renames)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        for sub in ("entries", "tmp", "work", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def entry_dir(self, key: str) -> Path:
        return self.root / "entries" / key

    def work_dir(self, key: str) -> Path:
        return self.root / "work" / key

    def lock(self, key: str) -> FileLock:
        return FileLock(str(self.root / "locks" / f"{key}.lock"))

    def get(self, key: str) -> Entry | None:
        """The finished entry for ``key``, or None."""
        d = self.entry_dir(key)
        try:
            raw = json.loads((d / "handle.json").read_text())
            meta = json.loads((d / "meta.json").read_text())
        except FileNotFoundError:
            return None
        handle = ModelHandle.model_validate(raw).rebased(ROOT_TOKEN, str(self.root))
        return Entry(key, d, handle, meta)

    @contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        """A fresh temp folder for a pass's output; renamed into ``entries/<key>`` by ``commit``."""
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.{os.getpid()}.", dir=self.root / "tmp"))
        try:
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, key: str, tmp: Path, handle: ModelHandle, meta: dict[str, Any]) -> Entry:
        """Store a finished output: metadata first inside tmp, then one atomic rename."""
        encoded = handle.rebased(str(tmp), f"{ROOT_TOKEN}/entries/{key}").rebased(str(self.root), ROOT_TOKEN)
        encoded = encoded.model_dump(mode="json")
        _write_json(tmp / "handle.json", encoded)
        _write_json(tmp / "meta.json", meta)
        dest = self.entry_dir(key)
        if dest.exists():  # another process finished it first; keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        shutil.rmtree(self.work_dir(key), ignore_errors=True)
        entry = self.get(key)
        if entry is None:  # pragma: no cover - would mean the rename did not happen
            raise RuntimeError(f"cache entry {key} missing right after commit")
        return entry

    def clean_stale(self) -> int:
        """Remove temp folders of runs that died (their key lock is free)."""
        removed = 0
        for tmp in (self.root / "tmp").iterdir():
            key = tmp.name.split(".", 1)[0]
            try:
                with self.lock(key).acquire(timeout=0):
                    shutil.rmtree(tmp, ignore_errors=True)
                    removed += 1
            except Timeout:
                continue
        return removed

    def entries(self) -> list[Entry]:
        out = []
        for d in sorted((self.root / "entries").iterdir()):
            e = self.get(d.name)
            if e is not None:
                out.append(e)
        return sorted(out, key=lambda e: e.meta.get("created", 0))

    def size(self, entry: Entry) -> int:
        return sum(f.stat().st_size for f in entry.path.rglob("*") if f.is_file())

    def remove(self, key: str) -> bool:
        """Delete one entry unless a run is computing it right now."""
        try:
            with self.lock(key).acquire(timeout=0):
                d = self.entry_dir(key)
                if not d.exists():
                    return False
                trash = self.root / "tmp" / f"{key}.rm.{time.time_ns()}"
                os.replace(d, trash)
                shutil.rmtree(trash, ignore_errors=True)
                shutil.rmtree(self.work_dir(key), ignore_errors=True)
                return True
        except Timeout:
            return False
