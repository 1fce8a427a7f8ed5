"""The content-addressed cache of pass outputs.

Layout under the cache root::

    .honed-cache                 marks the folder as a honed cache (honed cleans only such folders)
    entries/<key>/model/...      the pass output (renamed into place only when complete)
    entries/<key>/handle.json    the output ModelHandle, paths relative to the cache root
    entries/<key>/meta.json      pass, config, input id, time taken, and each output file's size + sha256
    tmp/<key>.<pid>.<rand>/      a pass being written; never read
    work/<key>/                  checkpoints of an unfinished pass (resume after a kill)
    locks/<key>.lock             held while a key is computed, so two runs never build it twice
    hashes.sqlite                remembered content hashes (see honed.util.hashing)

A failed pass leaves nothing under ``entries``; a killed one leaves a ``tmp`` folder that the
next run removes. An entry that cannot be read, or whose files no longer match the sizes and
hashes recorded when it was committed, is a miss: it is set aside and the pass runs again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from pydantic import ValidationError

from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.util.fs import atomic_write_text, protected_reason, writable_problem
from honed.util.hashing import hash_file, sha256_file, use_memo

log = logging.getLogger("honed")

ROOT_TOKEN = "{cache}"
MARKER = ".honed-cache"
CACHE_FORMAT = 1
_SUBDIRS = ("entries", "tmp", "work", "locks")
# Every name a honed cache holds at its top level (older versions wrote no marker).
_KNOWN = {*_SUBDIRS, "gguf", "data", "evals", "studies", "envs", "hashes.sqlite", "hashes.sqlite-journal", MARKER}
# Temp names honed itself creates under tmp/: "<key>.<pid>.<mkdtemp suffix>" and "<key>.rm.<ns>".
_TMP_NAME = re.compile(r"^[0-9a-f]{32}\.(\d+\.[A-Za-z0-9_]{8}|rm\.\d+)$")
_KEY = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Entry:
    key: str
    path: Path
    handle: ModelHandle
    meta: dict[str, Any]


def _stat_sig(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Size, sha256 and stat of every file under ``folder`` (relative POSIX names)."""
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = f.stat()
        out[f.relative_to(folder).as_posix()] = {"size": st.st_size, "sha256": hash_file(f), "stat": _stat_sig(st)}
    return out


def damage(folder: Path, records: dict[str, dict[str, Any]]) -> str | None:
    """What no longer matches ``records`` in ``folder``, or None.

    Cheap when nothing changed: a file whose size, mtime, ctime and inode are those recorded at commit
    is trusted; any other is hashed again.
    """
    for rel, rec in records.items():
        f = folder / rel
        try:
            st = f.stat()
        except OSError:
            return f"{rel} is missing"
        if st.st_size != rec["size"]:
            return f"{rel} has {st.st_size} bytes, {rec['size']} were stored"
        if _stat_sig(st) != rec.get("stat") and sha256_file(f) != rec["sha256"]:
            return f"{rel} does not match its stored sha256"
    return None


def open_problem(root: Path) -> str | None:
    """Why ``root`` cannot be used as a cache folder, or None."""
    reason = protected_reason(root)
    if reason:
        return f"{root} is {reason}; give honed a folder of its own, e.g. ./cache"
    problem = writable_problem(root)
    if problem:
        return f"{root} {problem}"
    if root.is_dir() and not (root / MARKER).exists():
        names = {p.name for p in root.iterdir() if not p.name.startswith(".honed-probe-")}
        # An older honed wrote no marker but always made all four folders; anything else is not ours.
        legacy = set(_SUBDIRS) <= names and names <= _KNOWN
        foreign = sorted(names - _KNOWN) or ([] if legacy or not names else sorted(names))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            return (f"{root} is a folder that is not a honed cache (it holds {shown}); give an empty or new "
                    "folder so honed never touches your files")
    return None


class Cache:
    """Pass outputs by key. Safe for several processes at once (file locks, atomic renames).

    Raises:
        UserError: ``root`` is a file, read-only, a protected folder, or a non-empty folder that is
            not a honed cache (honed never cleans folders it did not create).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.expanduser(str(root))).resolve()
        problem = open_problem(self.root)
        if problem:
            raise UserError(f"engine.cache_dir (or --cache-dir): {problem}")
        for sub in _SUBDIRS:
            if (self.root / sub).exists() and not (self.root / sub).is_dir():
                raise UserError(f"engine.cache_dir (or --cache-dir): {self.root / sub} should be a folder of the "
                                "cache but is a file; move it away")
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if not (self.root / MARKER).exists():
            atomic_write_text(self.root / MARKER, json.dumps({"format": CACHE_FORMAT}) + "\n")
        use_memo(self.root)

    def entry_dir(self, key: str) -> Path:
        return self.root / "entries" / key

    def work_dir(self, key: str) -> Path:
        return self.root / "work" / key

    def lock(self, key: str) -> FileLock:
        return FileLock(str(self.root / "locks" / f"{key}.lock"))

    def _read(self, key: str) -> tuple[Entry | None, str | None]:
        """(entry, None) when usable; (None, why) when present but damaged; (None, None) when absent."""
        d = self.entry_dir(key)
        if not d.exists():
            return None, None
        try:
            raw = json.loads((d / "handle.json").read_text())
            meta = json.loads((d / "meta.json").read_text())
            handle = ModelHandle.model_validate(raw).rebased(ROOT_TOKEN, str(self.root))
        except (OSError, ValueError, RecursionError, ValidationError) as e:
            return None, f"unreadable ({type(e).__name__})"
        if not isinstance(meta, dict):
            return None, "unreadable (meta.json is not a mapping)"
        records = meta.get("files")
        if records is not None and not (isinstance(records, dict) and all(
                isinstance(r, dict) and isinstance(r.get("size"), int) and isinstance(r.get("sha256"), str)
                for r in records.values())):
            return None, "unreadable (meta.json's file records are malformed)"
        if records is not None:
            why = damage(d / "model", records)
            if why:
                return None, why
        return Entry(key, d, handle, meta), None

    def get(self, key: str) -> Entry | None:
        """The finished, intact entry for ``key``, or None (absent or damaged: either way a miss)."""
        return self._read(key)[0]

    def repair(self, key: str) -> str | None:
        """Set aside a damaged entry (call with the key's lock held); return what was wrong, or None."""
        entry, why = self._read(key)
        if entry is None and why is not None:
            self._discard(key)
            log.warning("cache entry %s was damaged (%s); computing it again", key, why)
        return why

    def _discard(self, key: str) -> None:
        d = self.entry_dir(key)
        trash = self.root / "tmp" / f"{key}.rm.{time.time_ns()}"
        os.replace(d, trash)
        shutil.rmtree(trash, ignore_errors=True)

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
        """Store a finished output: metadata (with each file's size and sha256) inside tmp, then one
        atomic rename. Call with the key's lock held."""
        encoded = handle.rebased(str(tmp), f"{ROOT_TOKEN}/entries/{key}").rebased(str(self.root), ROOT_TOKEN)
        meta = {**meta, "files": file_records(tmp / "model")}
        atomic_write_text(tmp / "handle.json", json.dumps(encoded.model_dump(mode="json"), indent=2, sort_keys=True))
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2, sort_keys=True, default=str))
        dest = self.entry_dir(key)
        if dest.exists() and self.get(key) is None:
            self._discard(key)  # damaged: ours replaces it
        if dest.exists():  # another process finished it first; keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        shutil.rmtree(self.work_dir(key), ignore_errors=True)
        entry, why = self._read(key)
        if entry is None:
            raise OSError(f"cache entry {key} unreadable right after commit ({why}); check the disk under {self.root}")
        return entry

    def clean_stale(self) -> int:
        """Remove temp folders of runs that died (their key lock is free). Only names honed creates
        are touched; anything else under tmp/ is left alone."""
        removed = 0
        for tmp in (self.root / "tmp").iterdir():
            if not _TMP_NAME.match(tmp.name) or tmp.is_symlink() or not tmp.is_dir():
                continue
            key = tmp.name.split(".", 1)[0]
            try:
                with self.lock(key).acquire(timeout=0):
                    shutil.rmtree(tmp, ignore_errors=True)
                    removed += 1
            except Timeout:
                continue
        return removed

    def entries(self) -> list[Entry]:
        """Every intact entry, oldest first (damaged ones are skipped; see ``damaged``)."""
        out = []
        for d in sorted((self.root / "entries").iterdir()):
            e = self.get(d.name) if _KEY.match(d.name) and d.is_dir() else None
            if e is not None:
                out.append(e)
        return sorted(out, key=lambda e: e.meta.get("created", 0) if isinstance(e.meta.get("created"), int | float)
                      else 0)

    def damaged(self) -> dict[str, str]:
        """Keys of entries that cannot be used, with the reason."""
        out = {}
        for d in sorted((self.root / "entries").iterdir()):
            if _KEY.match(d.name):
                entry, why = self._read(d.name)
                if entry is None and why:
                    out[d.name] = why
        return out

    def size(self, entry: Entry) -> int:
        return sum(f.stat().st_size for f in entry.path.rglob("*") if f.is_file())

    def remove(self, key: str) -> bool:
        """Delete one entry unless a run is computing it right now."""
        if not _KEY.match(key):
            return False
        try:
            with self.lock(key).acquire(timeout=0):
                if not self.entry_dir(key).exists():
                    return False
                self._discard(key)
                shutil.rmtree(self.work_dir(key), ignore_errors=True)
                return True
        except Timeout:
            return False
