"""The plain-text table printed at the end of every run: metrics before -> after, or the trials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def metrics_table(evaluation: dict[str, Any]) -> str:
    """metric | input | <each evaluated pass> | output | change | goal."""
    before, after = evaluation.get("input") or {}, evaluation.get("output") or {}
    stages = evaluation.get("passes") or {}
    goals = {g["metric"]: g for g in evaluation.get("goals", [])}
    rows = []
    for key in dict.fromkeys([*before, *(k for r in stages.values() for k in r), *after]):
        b, a = before.get(key), after.get(key)
        change = f"{(a - b):+.4g}" if isinstance(a, int | float) and isinstance(b, int | float) else "-"
        g = goals.get(key)
        goal = "-" if g is None else (("met " if g["met"] else "MISSED ") + (">=" if g["higher_is_better"] else "<=")
                                      + f" {g['bound']:.4g}")
        rows.append([key, fmt(b), *(fmt(r.get(key)) for r in stages.values()), fmt(a), change, goal])
    return _table(["metric", "input", *(f"after {n}" for n in stages), "output", "change", "goal"], rows)


def _where(t: dict[str, Any]) -> str:
    """The node and process that ran a trial ('-' when unknown: its worker died)."""
    return f"{t['node']}:{t['pid']}" if t.get("node") else "-"


def _note(t: dict[str, Any]) -> str:
    if t.get("state") == "running":
        return "running elsewhere"
    note = "error" if t.get("error") else ""
    if (t.get("attempts") or 1) > 1:
        note = f"{note} ({t['attempts']} attempts)".strip()
    return note


def trials_table(search: dict[str, Any]) -> str:
    """One row per trial: rank, Pareto, parameters, objective values; and where it ran when trials ran in more
    than one node or process (concurrent trials, or several runs joined to one study)."""
    keys = [o["metric"] for o in search.get("objectives", [])]
    places = {_where(t) for t in search["trials"] if t.get("node")}
    rows = []
    for t in sorted(search["trials"], key=lambda t: t.get("rank") or 10**9):
        params = ", ".join(f"{k.removeprefix('passes.')}={v}" for k, v in t.get("params", {}).items())
        metrics = t.get("metrics") or {}
        rows.append([fmt(t.get("rank")), str(t["index"]), "*" if t.get("pareto") else "",
                     "yes" if t.get("goals_met") else "no", params, *(fmt(metrics.get(k)) for k in keys),
                     *([_where(t)] if len(places) > 1 else []), _note(t)])
    return _table(["rank", "trial", "pareto", "goals", "params", *keys, *(["node"] if len(places) > 1 else []), ""],
                  rows)


FIDELITY_COLUMNS = (("kl_mean", "KL mean (nats)"), ("kl_p99", "KL p99 (nats)"), ("top1_agreement", "top-1 agreement"),
                    ("perplexity", "perplexity"), ("source_perplexity", "input perplexity"))
"""Step metrics a quantizing pass records about its output against its input (``honed.passes._fidelity``)."""


def fidelity_rows(steps: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: pass | KL mean | KL p99 | top-1 agreement | perplexity | input perplexity, one row per step
    that measured its output's fidelity to its input (no rows when none did)."""
    rows = [[str(s.get("name")), *(fmt((s.get("metrics") or {}).get(k)) for k, _ in FIDELITY_COLUMNS)]
            for s in steps if "kl_mean" in (s.get("metrics") or {})]
    return ["pass", *(label for _, label in FIDELITY_COLUMNS)], rows


def flows_rows(flows: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows comparing pass flows: flow | model kind | output metrics (one column per metric)."""
    keys = list(dict.fromkeys(k for f in flows.values() for k in ((f.get("evaluation") or {}).get("output") or {})))
    rows = []
    for name, f in flows.items():
        out = (f.get("evaluation") or {}).get("output") or {}
        rows.append([name, str((f.get("model") or {}).get("kind", "-")), *(fmt(out.get(k)) for k in keys)])
    return ["flow", "model", *keys], rows


def summary_text(footprints_path: Path) -> str:
    """The table for an output folder's footprints.json ('' when nothing was evaluated)."""
    fp = json.loads(Path(footprints_path).read_text())
    parts = []
    if fp.get("flows"):
        parts.append(f"{len(fp['flows'])} pass flows, each in its own folder:")
        parts.append(_table(*flows_rows(fp["flows"])))
    if fp.get("search"):
        s = fp["search"]
        parts.append(f"search: {len(s['trials'])} trials ({s['sampler']}), chosen trial {s['chosen']}")
        parts.append(trials_table(s))
    header, rows = fidelity_rows(fp.get("steps") or [])
    if rows:
        parts.append("fidelity of each quantized output to its pass input:\n" + _table(header, rows))
    if fp.get("evaluation"):
        parts.append(metrics_table(fp["evaluation"]))
    return "\n\n".join(parts)
