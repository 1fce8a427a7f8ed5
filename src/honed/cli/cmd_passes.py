"""``honed passes``: every registered pass, what it does, and whether it can run here."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from honed.passes.base import all_passes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("passes", help="List every pass with a one-line description and its dependencies.",
                       epilog="example:\n  honed passes", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=_list)


def _list(args: argparse.Namespace) -> int:
    table = Table(title="passes", title_justify="left")
    for col in ("type", "description", "takes", "optional deps"):
        table.add_column(col)
    for name, cls in all_passes().items():
        missing = cls.missing_requirements()
        deps = "-" if not cls.requires else ("[red]missing: " + ", ".join(missing) + "[/]" if missing
                                              else "[green]installed[/]")
        table.add_row(name, cls.description, "/".join(cls.accepts), deps)
    Console().print(table)
    return 0
