"""``honed run``: run a workflow file."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from honed import run
from honed.config.load import load_workflow
from honed.engine.progress import RunDisplay
from honed.engine.runner import RunResult
from honed.report.text import summary_text

# Wide enough for the summary table when the output is piped to a file (rich falls back to 80 columns).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="Run a workflow file (honed's schema or any Olive generation).",
        description="Run a workflow file: every pass in order, each output cached by content.",
        epilog="example:\n  honed run --config examples/emotion/workflow.json --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", required=True, help="Workflow file (JSON or YAML).")
    p.add_argument("--output-dir", help="Overrides engine.output_dir.")
    p.add_argument("--cache-dir", help="Overrides engine.cache_dir.")
    p.add_argument("--dry-run", action="store_true", help="Validate and print the resolved plan; run nothing.")
    p.add_argument("--ray-address", metavar="ADDRESS",
                   help="Run every pass as a Ray task on this cluster ('auto', 'host:port', 'ray://host:10001' or "
                   "'local'), without editing the file; the cache must be storage every node reaches.")
    p.add_argument("--shared-cache", metavar="URL",
                   help="Overrides engine.shared_cache: an s3:// (gs://, az://) URL every machine reaches, a second "
                   "cache tier shared by machines that each keep their own --cache-dir.")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="How much to log; 'debug' also shows tracebacks.")
    p.set_defaults(func=_run)


def print_plan(result: RunResult) -> None:
    console.print(f"[bold]plan[/] ({len(result.plan)} passes; output -> {result.output_dir})")
    for i, step in enumerate(result.plan, 1):
        state = "[green]cached[/]" if step.cached else "[yellow]to run[/]"
        console.print(f"{i}. [bold]{step.name}[/] ({step.type}) {state}  key {step.key}")
        console.print(json.dumps(step.config, indent=2, sort_keys=True), markup=False)


def print_summary(result: RunResult) -> None:
    table = Table(title="honed run", title_justify="left")
    for col in ("pass", "type", "cached", "time (s)", "peak RSS (MB)"):
        table.add_column(col)
    steps = ([(f"{n}/{s.name}", s) for n, r in result.flows.items() for s in r.steps] if result.flows
             else [(s.name, s) for s in result.steps])
    for name, s in steps:
        table.add_row(name, s.type, "yes" if s.cached else "no", f"{s.wall_s:.1f}",
                      "-" if s.peak_rss_mb is None else f"{s.peak_rss_mb:.0f}")
    console.print(table)
    text = summary_text(result.footprints_path)
    if text:
        console.print(text, markup=False, soft_wrap=True)
    if result.flows:
        console.print(f"models: {', '.join(f'{result.output_dir}/{n}/' for n in result.flows)} (one per pass flow)")
    elif result.search:
        console.print(f"models: {result.output_dir}/1/ (best) ... ranked by the search")
    else:
        console.print(f"model: {result.output_dir}  ({result.model.kind if result.model else '-'})")
    console.print(f"footprints: {result.footprints_path}   report: {result.output_dir / 'report.html'}")


def _run(args: argparse.Namespace) -> int:
    wf = load_workflow(args.config)
    display = RunDisplay(quiet=args.dry_run)
    result = run(wf, output_dir=args.output_dir, cache_dir=args.cache_dir, dry_run=args.dry_run, display=display,
                 ray_address=args.ray_address, shared_cache=args.shared_cache)
    if args.dry_run:
        print_plan(result)
    else:
        print_summary(result)
    return 0
