"""Content hashes of files and folders.

Cache keys use what a file contains, not its name. A multi-GB model is hashed once and its digest
remembered in ``<cache>/hashes.sqlite`` (inside the cache it serves, so cleaning the cache forgets
it too), keyed by the file's path and its full stat: size, mtime, ctime, inode and device. ctime
cannot be set back by a user, so an in-place edit that restores the mtime is still seen. A file
changed within the last two seconds is never remembered (a later edit in the same clock tick would
keep its stat: git's "racily clean" problem), so it is hashed again next time: content when in doubt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from honed.util.fs import protected_reason

log = logging.getLogger("honed")

_CHUNK = 1 << 22
_RACY_S = 2.0
_MEMO: Path | None = None


def use_memo(cache_root: Path | None) -> None:
    """Remember digests in ``cache_root/hashes.sqlite`` from now on (None: remember nothing)."""
    global _MEMO
    _MEMO = Path(cache_root) / "hashes.sqlite" if cache_root is not None else None


def _db() -> sqlite3.Connection | None:
    """The memo, or None when there is none; a damaged memo is only a cache of hashes: it is rebuilt."""
    if _MEMO is None or not _MEMO.parent.is_dir():
        return None
    for attempt in range(2):
        try:
            con = sqlite3.connect(_MEMO, timeout=30)
            con.execute("create table if not exists h2 (path text primary key, stat text, sha text)")
            con.execute("select count(*) from h2 where path = ''").fetchone()
            return con
        except sqlite3.DatabaseError:
            if attempt or not _MEMO.is_file():
                return None  # not a file we may replace (a folder): hash without a memo
            log.warning("%s is damaged; remembering hashes afresh", _MEMO)
            _MEMO.unlink()
    return None


def _stat_key(st: Any) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read now (no memo)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_file(path: Path) -> str:
    """sha256 of a file's bytes (remembered by full stat in the current cache's memo)."""
    path = Path(path).resolve()
    st = path.stat()
    con = _db()
    if con is None:
        return sha256_file(path)
    try:
        with con:
            row = con.execute("select stat, sha from h2 where path=?", (str(path),)).fetchone()
            if row and row[0] == _stat_key(st):
                return row[1]
            sha = sha256_file(path)
            after = path.stat()
            settled = time.time() - _RACY_S
            if _stat_key(after) == _stat_key(st) and max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 < settled:
                con.execute("insert or replace into h2 values (?,?,?)", (str(path), _stat_key(st), sha))
        return sha
    except sqlite3.DatabaseError:  # damaged under us: the content hash needs no memo
        return sha256_file(path)
    finally:
        con.close()


def hash_path(path: Path) -> str:
    """Hash of a file, or of a folder's files (relative names and contents)."""
    path = Path(path)
    if path.is_file():
        return hash_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + hash_file(f).encode() + b"\n")
    return h.hexdigest()


def hash_json(obj: Any) -> str:
    """Stable hash of a JSON-able value."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def with_content_hashes(obj: Any) -> Any:
    """A copy of ``obj`` where every string naming an existing local path also carries its content hash.

    Pass and data configs hold absolute paths (resolved at load), so data files, user scripts and
    calibration sets enter cache keys by content, without each pass listing them.
    """
    if isinstance(obj, dict):
        return {k: with_content_hashes(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [with_content_hashes(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("/") and len(obj) < 4096 and "\0" not in obj:
        p = Path(obj)
        if p.is_dir() and protected_reason(p):
            return obj  # "/" or a system folder in a free-text field: never walk the whole disk
        if p.exists():
            return {"path": obj, "sha256": hash_path(p)}
        import glob

        if glob.has_magic(obj):
            return {"glob": obj, "files": {f: hash_path(Path(f)) for f in sorted(glob.glob(obj, recursive=True))}}
    return obj
