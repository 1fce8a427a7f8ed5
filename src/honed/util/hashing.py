"""Content hashes of files and folders, and ``cache_key``: the one key function of every honed cache.

Cache keys use what a file contains, not its name. A multi-GB model is hashed once and its digest
remembered in ``<cache>/hashes.sqlite`` (inside the cache it serves, so cleaning the cache forgets
it too), keyed by the file's path and its full stat: size, mtime, ctime, inode and device. ctime
cannot be set back by a user, so an in-place edit that restores the mtime is still seen. A file
changed within the last two seconds is never remembered (a later edit in the same clock tick would
keep its stat: git's "racily clean" problem), so it is hashed again next time: content when in doubt.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import logging
import platform
import sqlite3
import time
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from honed.util.fs import protected_reason
from honed.util.version import __version__

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
    """A copy of ``obj`` where every string naming an existing local path becomes its name and content hash.

    Pass and data configs hold absolute paths (resolved at load), so data files, user scripts and
    calibration sets enter cache keys by content, without each pass listing them; the folder they lie in does
    not (a moved file keeps the key), their name does (a suffix can choose a format).
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
            return {"name": p.name, "sha256": hash_path(p)}
        import glob

        if glob.has_magic(obj):
            return {"glob": obj, "files": {f: hash_path(Path(f)) for f in sorted(glob.glob(obj, recursive=True))}}
    return obj


# ----------------------------------------------------------------------------- the cache key

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""The honed package folder: where ``code_fingerprint`` reads module sources."""


def cache_key(kind: str, *, inputs: Any, config: Any, code: str, environment: Mapping[str, str]) -> str:
    """The key of an entry in any honed cache (pass outputs, evaluations, tokenized data): 32 hex characters
    of the SHA-256 of

    - ``kind``: which cache (``pass:LoRA``, ``evaluation``, ``tokenized``);
    - ``inputs``: identities of what the step reads, by content (model ids, data fingerprints);
    - ``config``: the step's resolved settings, with every file they name replaced by its content hash;
    - ``code``: ``code_fingerprint`` of the module that does the work;
    - ``environment``: what the interpreter that runs the step has (``environment``).

    Change any of these and the step reruns; anything else (paths, mtimes, the rest of honed) keeps the key.
    """
    return hash_json({"kind": kind, "inputs": inputs, "config": with_content_hashes(config), "code": code,
                      "environment": dict(environment)})[:32]


def _module_file(root: Path, name: str) -> Path | None:
    """Source file of honed module ``name`` under ``root``; None for names that are not modules."""
    parts = name.split(".")[1:]
    if not parts:
        return root / "__init__.py"
    for cand in (root.joinpath(*parts[:-1], parts[-1] + ".py"), root.joinpath(*parts, "__init__.py")):
        if cand.is_file():
            return cand
    return None


def _honed_imports(path: Path) -> set[str]:
    """Every honed module ``path`` imports, at the top or inside functions (type-only imports too: a
    conservative key reruns more, never less)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("honed"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("honed"))
    return names


@cache
def code_fingerprint(module: str, root: Path = PACKAGE_ROOT) -> str:
    """SHA-256 of the source of honed module ``module`` and of every honed module it imports, transitively
    (the package ``__init__`` files on the way included). As the layers point one way, a pass's fingerprint
    covers the layers below it only: editing the engine, the config translation or the CLI keeps every key."""
    seen: dict[str, bytes] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(root, name) if name.startswith("honed") else None
        if path is None:
            seen[name] = b""
            continue
        seen[name] = path.read_bytes()
        todo.extend(_honed_imports(path))
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(name.encode() + b"\0" + hashlib.sha256(seen[name]).digest())
    return h.hexdigest()


def library_versions(distributions: Iterable[str]) -> dict[str, str]:
    """Python's version (``python``) and the installed version of each distribution in this interpreter
    ("absent" when it is not installed). For onnxruntime and onnxruntime-genai, which install under a name per
    hardware, an absent name reports the flavours that provide its import instead (``onnxruntime-gpu 1.31.1``), so
    that upgrading a GPU build changes the cache keys as upgrading the CPU build does."""
    from honed.util.runtime_flavour import FLAVOURS, installed_flavours

    out = {"python": platform.python_version()}
    for dist in sorted(set(distributions)):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            package = next((p for p, names in FLAVOURS.items() if dist in names), None)
            found = installed_flavours(package) if package else {}
            out[dist] = ", ".join(f"{d} {v}" for d, v in sorted(found.items())) or "absent"
    return out


def environment(libraries: Mapping[str, str], interpreter: str = "local") -> dict[str, str]:
    """The ``environment`` term of a cache key: honed's version, the interpreter that runs the step
    (``local``, or a system's identity) and Python's and the libraries' versions as that interpreter reports
    them (``library_versions`` here; a PythonEnvironment system asks its own interpreter)."""
    return {"honed": __version__, "interpreter": interpreter, **{f"lib:{k}": v for k, v in sorted(libraries.items())}}
