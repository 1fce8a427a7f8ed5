"""Content hashes of files and folders, remembered by (path, size, mtime, inode).

Cache keys use what a file contains, not its name; a multi-GB model is hashed once and the
digest is reused until the file changes on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

_CHUNK = 1 << 22


def _db_path() -> Path:
    root = Path(os.environ.get("HONED_HOME", Path.home() / ".cache" / "honed"))
    root.mkdir(parents=True, exist_ok=True)
    return root / "hashes.sqlite"


def _db() -> sqlite3.Connection:
    con = sqlite3.connect(_db_path(), timeout=30)
    con.execute("create table if not exists h (path text primary key, size int, mtime int, ino int, sha text)")
    return con


def hash_file(path: Path) -> str:
    """sha256 of a file's bytes (memoized by stat)."""
    path = Path(path).resolve()
    st = path.stat()
    with _db() as con:
        row = con.execute("select size, mtime, ino, sha from h where path=?", (str(path),)).fetchone()
        if row and tuple(row[:3]) == (st.st_size, st.st_mtime_ns, st.st_ino):
            return row[3]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        sha = h.hexdigest()
        con.execute("insert or replace into h values (?,?,?,?,?)", (str(path), st.st_size, st.st_mtime_ns, st.st_ino, sha))
    return sha


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
    if isinstance(obj, str) and obj.startswith("/") and len(obj) < 4096:
        p = Path(obj)
        if p.exists():
            return {"path": obj, "sha256": hash_path(p)}
        import glob

        if glob.has_magic(obj):
            return {"glob": obj, "files": {f: hash_path(Path(f)) for f in sorted(glob.glob(obj, recursive=True))}}
    return obj
