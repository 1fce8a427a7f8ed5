"""File-system safety: which folders honed must never take over, and writes that land whole or not at all.

honed deletes and overwrites only what it provably created (its own temp names, the files its
manifests record); these helpers are the checks every writer shares.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

MAX_NAME_BYTES = 255
"""Longest file or folder name (one path component) ext4, APFS, NTFS and most filesystems take."""
MAX_PATH_BYTES = 4096
"""Longest path Linux takes (PATH_MAX)."""

# Folders of the operating system: never an output or a cache, nor anything inside the first group.
_SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
                 "/sys", "/usr")
_SYSTEM_DIRS = ("/var", "/opt", "/srv", "/mnt", "/media", "/run", "/home", "/Users", "/tmp", "/var/tmp")


def protected_reason(path: Path) -> str | None:
    """Why ``path`` may not be used as a whole folder honed writes into or cleans, or None.

    Refused: a filesystem root, the home folder or a folder above it, the system's temporary folder
    itself, and the operating system's own folders (``/usr``, ``/etc``, ...). Folders *inside* home or
    the temporary folder are fine.
    """
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    with contextlib.suppress(OSError, RuntimeError):
        p = p.resolve()
    if p == Path(p.anchor):
        return "the filesystem root"
    home = Path.home().resolve()
    if p == home:
        return "your home folder"
    if p in home.parents:
        return "a folder above your home folder"
    if p == Path(tempfile.gettempdir()).resolve():
        return "the system's temporary folder"
    s = p.as_posix()
    if s in _SYSTEM_DIRS or any(s == t or s.startswith(t + "/") for t in _SYSTEM_TREES):
        return "a folder of the operating system"
    return None


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def writable_problem(path: Path) -> str | None:
    """Why honed could not create files in folder ``path`` (or create it), or None.

    Probes with a real temp file in the closest existing folder: permission bits alone say nothing
    for root, and a read-only mount only shows up on a write.
    """
    p = Path(os.path.abspath(path))
    if p.exists() and not p.is_dir():
        return "is a file, not a folder"
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            return f"cannot be created: {parent} is a file"
    probe_dir = nearest_existing(p)
    try:
        fd, name = tempfile.mkstemp(prefix=".honed-probe-", dir=probe_dir)
    except OSError as e:
        why = {errno.EROFS: "is on a read-only file system", errno.EACCES: "is not writable (permission denied)",
               errno.EPERM: "is not writable (operation not permitted)",
               errno.ENOSPC: "has no space left"}.get(e.errno, f"is not writable ({e.strerror})")
        return why if probe_dir == p else f"cannot be created: {probe_dir} {why}"
    os.close(fd)
    os.unlink(name)
    return None


def safe_relative(root: Path, name: str) -> Path | None:
    """``root/name`` when ``name`` is a plain relative path that stays inside ``root`` without
    following a symlink; None for absolute paths, ``..``, NUL bytes or links out."""
    if not isinstance(name, str) or not name or "\0" in name or os.path.isabs(name):
        return None
    parts = Path(name).parts
    if any(part in ("..", ".", "") for part in parts):
        return None
    current = Path(root)
    for part in parts:
        current = current / part
        if current.is_symlink():
            return None
    return current


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` through a temp name in the same folder and one rename: readers see the old file
    or the new one, never half of either."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def path_problem(value: str) -> str | None:
    """Why ``value`` cannot be a path on any filesystem (NUL byte, over-long name), or None.

    Checked before the path touches the filesystem: ``os.stat`` raises ValueError on a NUL byte
    and OSError (ENAMETOOLONG) on a name over 255 bytes, far from the key that caused it.
    """
    if "\0" in value:
        return "contains a NUL byte (\\0); remove it"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_PATH_BYTES:
        return f"is {size} bytes long; a path can be at most {MAX_PATH_BYTES}"
    for part in value.replace("\\", "/").split("/"):
        n = len(part.encode("utf-8", "surrogatepass"))
        if n > MAX_NAME_BYTES:
            return (f"has a file or folder name of {n} bytes ('{part[:20]}...'); a name can be at most "
                    f"{MAX_NAME_BYTES} bytes")
    return None


def user_path(value: str | os.PathLike[str], key: str) -> Path:
    """An absolute path from a user's setting: ``~`` expanded, relative to the working directory.

    Raises:
        UserError: the value holds a NUL byte or a name longer than the file system allows.
    """
    from honed.errors import UserError

    text = os.fspath(value)
    if not text.strip():
        raise UserError(f"{key}: empty path; name a folder, e.g. ./models")
    problem = path_problem(text)
    if problem:
        raise UserError(f"{key}: the path {problem}")
    return Path(os.path.abspath(os.path.expanduser(text)))
