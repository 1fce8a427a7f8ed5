"""``honed systems``: every registered system, what it is, and whether its dependencies are installed."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from honed.systems.base import all_systems


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("systems", help="List every system passes can run on, and whether it can run here.",
                       epilog="example:\n  honed systems", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=_list)


def _list(args: argparse.Namespace) -> int:
    table = Table(title="systems", title_justify="left")
    for col in ("type", "description", "keys", "optional deps"):
        table.add_column(col)
    for name, cls in all_systems().items():
        missing = cls.missing_requirements()
        deps = "-" if not cls.requires else (f"[red]missing: {', '.join(missing)}[/] ({escape(cls.install)})" if missing
                                              else "[green]installed[/]")
        keys = ", ".join(k for k in cls.config_class.model_fields if k != "type")
        table.add_row(name, cls.description, keys, deps)
    Console(width=160).print(table)
    return 0
