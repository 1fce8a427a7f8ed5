"""The output folder: the final model's files directly in it, plus footprints.json and report.html.

When the last pass is ModelBuilder, ``onnxruntime_genai.Model(output_dir)`` works on it as is.

Safety rules (the output folder may also hold the user's own files, or the cache):

* honed overwrites or deletes only files it wrote: those listed in ``.honed-manifest.json`` whose
  size and mtime are still what honed left. A name in the manifest that is absolute, climbs out with
  ``..`` or goes through a symlink is ignored. A file honed would write over that it did not write
  stops the run (exit 2) before anything is written, naming the file.
* The filesystem root, the home folder, system folders and files are refused as output folders.
* The new files are first written whole into a hidden staging folder inside the output folder (where
  a full disk or a kill leaves the old output untouched and the staging folder is removed), then a
  journal is written and each file is renamed into place; a run killed during those renames is
  finished by the next write (the journal is replayed), so the folder never stays half old, half new.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from filelock import FileLock

from honed.engine.footprints import Footprints
from honed.errors import UserError
from honed.models.handle import ModelHandle
from honed.util.fs import atomic_write_text, protected_reason, safe_relative, writable_problem

log = logging.getLogger("honed")

MANIFEST = ".honed-manifest.json"
JOURNAL = ".honed-commit.json"
STAGING_PREFIX = ".honed-staging-"
_KEY = "engine.output_dir (or --output-dir)"


def check_output_dir(out: Path, cache_root: Path | None = None) -> None:
    """Refuse an output folder honed must not write into, before any pass runs.

    Raises:
        UserError: ``out`` is a protected folder (root, home, system), a file, not writable, the cache
            folder, or inside the cache folder.
    """
    reason = protected_reason(out)
    if reason:
        raise UserError(f"{_KEY}: {out} is {reason}; give a folder of its own, e.g. ./models")
    problem = writable_problem(out)
    if problem:
        raise UserError(f"{_KEY}: {out} {problem}; give a writable folder")
    if cache_root is not None:
        o, c = Path(os.path.abspath(out)), Path(os.path.abspath(cache_root))
        if o == c:
            raise UserError(f"{_KEY}: engine.output_dir and engine.cache_dir are both {o}; give them different folders")
        if c in o.parents:
            raise UserError(f"{_KEY}: {o} is inside the cache {c}; put the output beside the cache, not in it")


def _model_files(model: ModelHandle) -> dict[str, Path]:
    src = Path(model.path)
    if src.is_file():
        return {f.name: f for f in model.files()}
    return {f.relative_to(src).as_posix(): f for f in model.files()}


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def owned_files(out: Path) -> dict[str, Path]:
    """Files in ``out`` honed wrote and nobody changed since: the only ones it may replace or delete."""
    try:
        raw = json.loads((out / MANIFEST).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError):
        log.warning("%s is unreadable; honed treats every file in %s as yours", out / MANIFEST, out)
        return {}
    # Format 2 maps each name to [size, mtime_ns]. Format 1 (honed 0.1) was a list of names, and
    # report.html was written beside it unlisted.
    if isinstance(raw, list):
        records: Any = {n: None for n in raw if isinstance(n, str)}
        if "footprints.json" in records:
            records["report.html"] = None
    else:
        records = raw.get("files", {}) if isinstance(raw, dict) else {}
    owned: dict[str, Path] = {}
    for name, stamp in (records.items() if isinstance(records, dict) else []):
        path = safe_relative(out, name)
        if path is None:
            log.warning("%s lists '%s', which is not a file inside %s; ignored", out / MANIFEST, name, out)
            continue
        if not path.is_file():
            continue
        if stamp is not None and _stamp(path) != stamp:
            continue  # changed since honed wrote it: it is the user's now
        owned[name] = path
    return owned


def _conflicts(out: Path, names: list[str], owned: dict[str, Path]) -> list[str]:
    """Names honed is about to write that would replace something it does not own."""
    bad = []
    for name in names:
        path = safe_relative(out, name)
        if path is None:
            bad.append(name)
            continue
        if (path.exists() or path.is_symlink()) and name not in owned:
            bad.append(name)
            continue
        for parent in path.relative_to(out).parents:
            if str(parent) != "." and (out / parent).exists() and not (out / parent).is_dir():
                bad.append(parent.as_posix())
    return sorted(set(bad))


def recover(out: Path) -> None:
    """Finish a write that was killed while renaming files into place, and drop honed's own leftovers
    (dead staging folders, writability probes, temp copies of its bookkeeping files).

    The journal is not trusted beyond what it can prove: a listed file is recorded as honed's only if it
    is still in the staging folder or carries the size and mtime the staged copy had; a stale file is
    deleted only if the current manifest says honed wrote it.
    """
    journal = out / JOURNAL
    if journal.is_file():
        try:
            plan = json.loads(journal.read_text())
            staging = safe_relative(out, plan["staging"])
            files = {str(k): v for k, v in dict(plan["files"]).items()}
            remove = [str(n) for n in plan["remove"]]
        except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
            plan = None
        if plan is not None and staging is not None and staging.name.startswith(STAGING_PREFIX):
            _place(out, staging, files, remove)
        journal.unlink(missing_ok=True)
    for d in out.glob(STAGING_PREFIX + "*"):
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)
    for f in [*out.glob(".honed-probe-*"), *out.glob(f".{MANIFEST}.*.tmp"), *out.glob(f".{JOURNAL}.*.tmp")]:
        if f.is_file() and not f.is_symlink():
            f.unlink()


def _place(out: Path, staging: Path, files: dict[str, list[int]], remove: list[str]) -> None:
    """Rename staged files into place, delete the stale ones honed owns, record the new manifest.

    ``files`` maps each name to the [size, mtime_ns] of its staged copy (renames keep both).
    """
    owned = owned_files(out)
    placed = {}
    for name, stamp in files.items():
        src, dest = staging / name, safe_relative(out, name)
        if dest is None:
            continue
        if src.is_file() and not src.is_symlink():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        if dest.is_file() and (_stamp(dest) == stamp or name in owned):
            placed[name] = _stamp(dest)
    for name in remove:
        if name in owned and name not in placed:
            owned[name].unlink(missing_ok=True)
    atomic_write_text(out / MANIFEST, json.dumps({"format": 2, "files": placed}, indent=1, sort_keys=True))


def write_output_dir(model: ModelHandle | None, out: Path, footprints: Footprints,
                     report: Callable[[dict[str, Any]], str] | None = None) -> list[str]:
    """Put the final model, ``footprints.json`` and (with ``report``) ``report.html`` into ``out``.

    ``report`` renders the footprints (as a dict) to HTML. Returns the names written.

    Raises:
        UserError: ``out`` is refused (see ``check_output_dir``), holds files honed did not write under
            names it would write, or the disk is full (the previous output is then left intact).
    """
    out = Path(out)
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    # Two runs writing one folder take turns; the lock lives in the temp folder, not among the user's files.
    tag = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:24]
    with FileLock(str(Path(tempfile.gettempdir()) / f"honed-output-{tag}.lock")):
        return _write(model, out, footprints, report)


def _write(model: ModelHandle | None, out: Path, footprints: Footprints,
           report: Callable[[dict[str, Any]], str] | None) -> list[str]:
    recover(out)
    owned = owned_files(out)
    files = _model_files(model) if model is not None and Path(model.path).exists() else {}
    names = sorted({*files, "footprints.json", *(["report.html"] if report else [])})
    bad = _conflicts(out, names, owned)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UserError(f"{_KEY}: {out} holds {shown}, which honed did not write and would overwrite; "
                        "move them away or choose another output folder (nothing was written)")
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        for rel, src in files.items():
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        text = json.dumps(asdict(footprints), indent=2, default=str)
        (staging / "footprints.json").write_text(text)
        if report:
            (staging / "report.html").write_text(report(json.loads(text)), encoding="utf-8")
        plan = {"staging": staging.name, "files": {n: _stamp(staging / n) for n in names},
                "remove": sorted(set(owned) - set(names))}
        atomic_write_text(out / JOURNAL, json.dumps(plan, sort_keys=True))
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{_KEY}: no space left on the device holding {out}; free some space and rerun "
                            "(the previous output is intact; passes stay cached)") from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _place(out, staging, plan["files"], plan["remove"])
    (out / JOURNAL).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    return names


def remove_output(out: Path) -> bool:
    """Delete what honed wrote in ``out`` (and ``out`` itself once empty); user files stay. True when
    ``out`` is gone."""
    recover(out)
    owned = owned_files(out)
    for path in owned.values():
        path.unlink()
    (out / MANIFEST).unlink(missing_ok=True)
    parents = {p for path in owned.values() for p in path.relative_to(out).parents if str(p) != "."}
    for d in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        if (out / d).is_dir() and not any((out / d).iterdir()):
            (out / d).rmdir()
    if not any(out.iterdir()):
        out.rmdir()
        return True
    return False


def rewrite_owned(out: Path, name: str, text: str) -> Path:
    """Replace one file honed wrote in ``out`` (``honed report`` regenerating report.html) and keep the
    manifest's record of it current.

    Raises:
        UserError: a file of that name exists that honed did not write.
    """
    out = Path(out)
    owned = owned_files(out)
    path = safe_relative(out, name)
    if path is None or ((path.exists() or path.is_symlink()) and name not in owned):
        raise UserError(f"{out / name} was not written by honed; move it away to let honed write its own")
    atomic_write_text(path, text)
    try:
        raw = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        raw = None
    records = raw["files"] if isinstance(raw, dict) and isinstance(raw.get("files"), dict) else \
        {n: _stamp(p) for n, p in owned.items()}
    records[name] = _stamp(path)
    atomic_write_text(out / MANIFEST, json.dumps({"format": 2, "files": records}, indent=1, sort_keys=True))
    return path


def write_report(out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` from ``out_dir/footprints.json``; return its path."""
    out = Path(out_dir)
    fp_path = out / "footprints.json"
    if not fp_path.is_file():
        raise UserError(f"{out} has no footprints.json; give the output_dir of a finished `honed run`")
    try:
        fp = json.loads(fp_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{fp_path}: unreadable ({type(e).__name__}); rerun `honed run` to write it again") from None
    from honed.report.html import build_html

    return rewrite_owned(out, "report.html", build_html(fp, f"honed report - {out.name}"))
