"""``honed cache ls|clean``: what the cache holds, and removing it."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from honed.engine.cache import MARKER, Cache
from honed.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="List or clean the cache of pass outputs.",
                       epilog="examples:\n  honed cache ls --cache-dir cache\n  honed cache clean --cache-dir cache",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    ls = csub.add_parser("ls", help="List cached pass outputs (newest last).",
                         epilog="example:\n  honed cache ls --cache-dir cache",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("--cache-dir", default="cache", help="Cache folder (engine.cache_dir).")
    ls.set_defaults(func=_ls)
    clean = csub.add_parser("clean", help="Remove cached outputs (all, or older than --older-than days).",
                            epilog="example:\n  honed cache clean --cache-dir cache --older-than 30",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    clean.add_argument("--cache-dir", default="cache", help="Cache folder (engine.cache_dir).")
    clean.add_argument("--older-than", type=float, help="Only entries created more than this many days ago.")
    clean.set_defaults(func=_clean)


def _open(path: str) -> Cache:
    root = Path(path).expanduser()
    if not (root / MARKER).is_file() and not (root / "entries").is_dir():
        raise UserError(f"--cache-dir {root}: not a honed cache (no {MARKER} marker); give the engine.cache_dir "
                        "of a workflow")
    return Cache(root)


def _ls(args: argparse.Namespace) -> int:
    cache = _open(args.cache_dir)
    table = Table(title=f"cache {cache.root}", title_justify="left")
    for col in ("key", "pass", "type", "kind", "size (MB)", "time (s)", "created"):
        table.add_column(col)
    for e in cache.entries():
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.meta.get("created", 0)))
        table.add_row(e.key, e.meta.get("pass", "?"), e.meta.get("type", "?"), e.handle.kind,
                      f"{cache.size(e) / 2**20:.1f}", f"{e.meta.get('wall_s', 0):.1f}", created)
    Console().print(table)
    for key, why in cache.damaged().items():
        Console(stderr=True, highlight=False).print(f"[yellow]warning:[/] entry {key} is damaged ({why}); "
                                                     "the next run that needs it computes it again")
    return 0


def _clean(args: argparse.Namespace) -> int:
    cache = _open(args.cache_dir)
    cutoff = time.time() - args.older_than * 86400 if args.older_than is not None else None
    removed = sum(
        cache.remove(e.key) for e in cache.entries() if cutoff is None or e.meta.get("created", 0) < cutoff
    )
    removed += sum(cache.remove(key) for key in cache.damaged())
    stale = cache.clean_stale()
    studies = 0
    if cutoff is None:  # a full clean forgets searches too: their trials' results point at removed entries
        for journal in sorted((cache.root / "studies").glob("*.journal")):
            journal.unlink()
            shutil.rmtree(journal.with_suffix(".runs"), ignore_errors=True)  # its runs' heartbeat files
            studies += 1
    Console().print(f"removed {removed} entries, {studies} search studies and {stale} unfinished temp folders "
                    f"from {cache.root}")
    return 0
