"""``honed report DIR``: rebuild report.html from an output folder's footprints.json."""

from __future__ import annotations

import argparse

from rich.console import Console

from honed.engine.outputs import write_report
from honed.report.text import summary_text

console = Console(highlight=False)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="Rebuild report.html (self-contained) from a run's output folder.",
        description="Rebuild OUTPUT_DIR/report.html from OUTPUT_DIR/footprints.json and print the summary table.",
        epilog="example:\n  honed report models/", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("output_dir", metavar="DIR", help="The output_dir of a finished `honed run`.")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    path = write_report(args.output_dir)
    text = summary_text(path.parent / "footprints.json")
    if text:
        console.print(text, markup=False)
    console.print(f"report: {path}")
    return 0
