"""The ``honed`` command: thin subcommands over the Python API.

Every ``honed/cli/cmd_*.py`` module adds its subcommands through ``register(subparsers)``.
This module owns the one mapping from exceptions to exit codes: bad input (UserError) prints
one line and exits 2; a failing pass exits 1 naming the pass; tracebacks only with
``--log-level debug``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from rich.console import Console
from rich.markup import escape

import honed
from honed.errors import ConfigError, HonedError, UserError

err_console = Console(stderr=True, highlight=False)
log = logging.getLogger("honed")

EPILOG = """examples:
  honed run --config workflow.json            run a workflow (Olive configs work too)
  honed run --config workflow.json --dry-run  show the resolved plan, run nothing
  honed passes                                list every pass
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="honed", description="Fine-tune, compress and compile language models, and measure the result.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"honed {honed.__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="How much to log; 'debug' also shows tracebacks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import honed.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"honed.cli.{info.name}").register(sub)
    return parser


class _LowerLevel(logging.Formatter):
    """``warning: ...`` lines. Formats a copy: the record is shared with every other handler (a test's log
    capture, a user's own handler), which must still see ``WARNING``."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = record.levelname.lower()
        return super().format(record)


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LowerLevel("%(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    log.setLevel(level.upper())
    # Library progress bars would interleave with honed's own; keep transformers/datasets quiet.
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    if level != "debug":
        # bitsandbytes warns at import about an optional CPU kernel package it can do without.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        transformers.utils.logging.set_verbosity_error()
        datasets.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # --log-level may come after the subcommand too; pick it up wherever it is.
    level = "info"
    for i, a in enumerate(argv):
        if a == "--log-level" and i + 1 < len(argv):
            level = argv[i + 1]
        elif a.startswith("--log-level="):
            level = a.split("=", 1)[1]
    _setup_logging(level if level in ("debug", "info", "warning", "error") else "info")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        if level == "debug":
            log.exception("config error")
        for p in e.problems:
            err_console.print(f"[red]error:[/] {escape(e.source + ': ' if e.source else '')}{escape(str(p))}",
                              soft_wrap=True)
        return 2
    except UserError as e:
        if level == "debug":
            log.exception("user error")
        err_console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        return 2
    except HonedError as e:
        if level == "debug":
            log.exception("failure")
        err_console.print(f"[red]error:[/] {escape(str(e))} (rerun with --log-level debug for the traceback)",
                          soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]; finished passes stay cached, rerun to continue")
        return 130
    except Exception as e:  # the CLI boundary: a bug, not bad input; say so in one line
        if level == "debug":
            raise
        err_console.print(f"[red]internal error:[/] {type(e).__name__}: {escape(str(e))} "
                          "(rerun with --log-level debug)",
                          soft_wrap=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
