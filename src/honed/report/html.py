"""``report.html``: one self-contained file (inline CSS and SVG, no script, no network) built from
an output folder's footprints.json: the workflow, per-pass time and memory, training loss curves,
metrics before -> after, and for a search the Pareto chart of every trial and the chosen model.
"""

from __future__ import annotations

import json
import math
import time
from html import escape
from typing import Any

from honed.report.text import fidelity_rows, flows_rows, fmt

LOSS_KEYS = ("log_history", "loss_history")
"""Step metric keys holding a list of {step, loss | eval_loss} dicts (the training loop's log history)."""

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;
padding:0 1rem}h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #dde;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}th,td{border:1px solid #dde;padding:.3rem .6rem;
text-align:left;vertical-align:top}th{background:#f3f5fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.met{color:#17803d;font-weight:600}.missed{color:#b42318;font-weight:600}.muted{color:#667}
pre{background:#f6f8fa;padding:.5rem;overflow:auto;font-size:.8rem;margin:0}svg{background:#fff}
.chosen{background:#fff7d6}.legend span{margin-right:1rem}
"""

_COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"]


def _num(v: Any) -> str:
    return f'<td class="num">{escape(fmt(v))}</td>'


def _table(header: list[str], rows: list[list[str]], row_class: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(f'<tr class="{row_class[i] if row_class else ""}">' + "".join(r) + "</tr>"
                   for i, r in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    out = []
    x = start
    while x <= hi + 1e-12 * abs(hi):
        out.append(round(x, 12))
        x += step
    return out


class _Axes:
    """Linear mapping of data to an SVG plot area, with ticks and labels."""

    W, H, L, R, T, B = 640, 360, 70, 20, 20, 50

    def __init__(self, xs: list[float], ys: list[float]) -> None:
        def pad(lo: float, hi: float) -> tuple[float, float]:
            if hi == lo:
                d = abs(lo) * 0.1 or 1.0
                return lo - d, hi + d
            d = (hi - lo) * 0.06
            return lo - d, hi + d

        self.x0, self.x1 = pad(min(xs), max(xs))
        self.y0, self.y1 = pad(min(ys), max(ys))

    def x(self, v: float) -> float:
        return self.L + (v - self.x0) / (self.x1 - self.x0) * (self.W - self.L - self.R)

    def y(self, v: float) -> float:
        return self.H - self.B - (v - self.y0) / (self.y1 - self.y0) * (self.H - self.T - self.B)

    def frame(self, xlabel: str, ylabel: str) -> str:
        parts = [f'<rect x="{self.L}" y="{self.T}" width="{self.W - self.L - self.R}" '
                 f'height="{self.H - self.T - self.B}" fill="none" stroke="#99a"/>']
        for t in _ticks(self.x0, self.x1):
            X = self.x(t)
            parts.append(f'<line x1="{X:.1f}" x2="{X:.1f}" y1="{self.T}" y2="{self.H - self.B}" stroke="#eef"/>'
                         f'<text x="{X:.1f}" y="{self.H - self.B + 16}" font-size="11" text-anchor="middle">'
                         f"{escape(fmt(t))}</text>")
        for t in _ticks(self.y0, self.y1):
            Y = self.y(t)
            parts.append(f'<line x1="{self.L}" x2="{self.W - self.R}" y1="{Y:.1f}" y2="{Y:.1f}" stroke="#eef"/>'
                         f'<text x="{self.L - 6}" y="{Y + 4:.1f}" font-size="11" text-anchor="end">'
                         f"{escape(fmt(t))}</text>")
        parts.append(f'<text x="{(self.L + self.W - self.R) / 2}" y="{self.H - 10}" font-size="12" '
                     f'text-anchor="middle">{escape(xlabel)}</text>')
        parts.append(f'<text x="14" y="{(self.T + self.H - self.B) / 2}" font-size="12" text-anchor="middle" '
                     f'transform="rotate(-90 14 {(self.T + self.H - self.B) / 2})">{escape(ylabel)}</text>')
        return "".join(parts)

    def svg(self, body: str, label: str) -> str:
        return (f'<svg role="img" aria-label="{escape(label)}" '
                f'width="{self.W}" height="{self.H}" viewBox="0 0 {self.W} {self.H}">{body}</svg>')


def line_chart(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str) -> str:
    """An SVG line chart of named (x, y) series."""
    pts = [p for s in series.values() for p in s if all(math.isfinite(v) for v in p)]
    if not pts:
        return ""
    ax = _Axes([p[0] for p in pts], [p[1] for p in pts])
    body = [ax.frame(xlabel, ylabel)]
    legend = []
    for i, (name, s) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        s = [p for p in s if all(math.isfinite(v) for v in p)]
        if not s:
            continue
        path = " ".join(f"{ax.x(x):.1f},{ax.y(y):.1f}" for x, y in s)
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        body += [f'<circle cx="{ax.x(x):.1f}" cy="{ax.y(y):.1f}" r="2.5" fill="{color}"><title>{escape(name)} '
                 f"step {fmt(x)}: {fmt(y)}</title></circle>" for x, y in s]
        legend.append(f'<span style="color:{color}">&#9632; {escape(name)}</span>')
    return f'<div class="legend">{"".join(legend)}</div>' + ax.svg("".join(body), f"{ylabel} against {xlabel}")


def pareto_chart(trials: list[dict[str, Any]], xkey: str, ykey: str, chosen: int | None) -> str:
    """Every trial as a point (x = xkey, y = ykey); the Pareto front joined, the chosen one ringed."""
    pts = [(t, (t.get("metrics") or {}).get(xkey), (t.get("metrics") or {}).get(ykey)) for t in trials]
    pts = [(t, x, y) for t, x, y in pts if isinstance(x, int | float) and isinstance(y, int | float)
           and math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return ""
    ax = _Axes([p[1] for p in pts], [p[2] for p in pts])
    body = [ax.frame(xkey, ykey)]
    front = sorted((x, y) for t, x, y in pts if t.get("pareto"))
    if len(front) > 1:
        path = " ".join(f"{ax.x(x):.1f},{ax.y(y):.1f}" for x, y in front)
        body.append(f'<polyline fill="none" stroke="#dc2626" stroke-dasharray="4 3" stroke-width="1.5" points="{path}"/>')
    for t, x, y in pts:
        color = "#dc2626" if t.get("pareto") else "#64748b"
        params = ", ".join(f"{k.removeprefix('passes.')}={v}" for k, v in (t.get("params") or {}).items())
        tip = f"trial {t['index']} (rank {t.get('rank')}): {params}; {xkey}={fmt(x)}, {ykey}={fmt(y)}"
        body.append(f'<circle cx="{ax.x(x):.1f}" cy="{ax.y(y):.1f}" r="5" fill="{color}" fill-opacity="0.8">'
                    f"<title>{escape(tip)}</title></circle>")
        body.append(f'<text x="{ax.x(x) + 7:.1f}" y="{ax.y(y) - 6:.1f}" font-size="10" fill="#334">'
                    f"{t['index']}</text>")
        if t["index"] == chosen:
            body.append(f'<circle cx="{ax.x(x):.1f}" cy="{ax.y(y):.1f}" r="10" fill="none" stroke="#f59e0b" '
                        f'stroke-width="2.5"><title>chosen</title></circle>')
    legend = ('<div class="legend"><span style="color:#dc2626">&#9679; Pareto-optimal</span>'
              '<span style="color:#64748b">&#9679; dominated</span><span style="color:#f59e0b">&#9711; chosen'
              "</span></div>")
    return legend + ax.svg("".join(body), f"{ykey} against {xkey} for every trial")


def _chart_axes(search: dict[str, Any]) -> tuple[str, str] | None:
    """(x, y) for the Pareto chart: a lower-is-better objective (latency first) against a higher-is-better
    one (accuracy first)."""
    objs = search.get("objectives", [])
    keys = {k for t in search["trials"] for k in (t.get("metrics") or {})}
    directions: dict[str, bool] = {o["metric"]: o["higher_is_better"] for o in objs}
    for t in search["trials"]:
        for g in t.get("goals", []):
            directions.setdefault(g["metric"], g["higher_is_better"])
    lower = [o["metric"] for o in objs if not o["higher_is_better"]] or sorted(
        k for k in keys if "latency" in k or "size" in k)
    higher = [o["metric"] for o in objs if o["higher_is_better"]] or sorted(k for k in keys if "accuracy" in k)
    lower.sort(key=lambda k: "latency" not in k)
    higher.sort(key=lambda k: "accuracy" not in k)
    if lower and higher:
        return lower[0], higher[0]
    if len(objs) >= 2:
        return objs[1]["metric"], objs[0]["metric"]
    return None


def _steps_section(steps: list[dict[str, Any]]) -> str:
    if not steps:
        return "<p class='muted'>No passes: the input model is the output.</p>"
    rows = []
    for s in steps:
        cfg = json.dumps(s.get("config", {}), indent=2, sort_keys=True)
        metrics = {k: v for k, v in (s.get("metrics") or {}).items() if k not in LOSS_KEYS}
        rows.append([f"<td>{escape(s['name'])}</td>", f"<td>{escape(s['type'])}</td>",
                     f"<td>{'cached' if s.get('cached') else 'ran'}</td>", _num(s.get("wall_s")),
                     _num(s.get("peak_rss_mb")),
                     f"<td><details><summary>config</summary><pre>{escape(cfg)}</pre></details>"
                     + (f"<details><summary>metrics</summary><pre>{escape(json.dumps(metrics, indent=2))}</pre>"
                        "</details>" if metrics else "") + "</td>"])
    out = _table(["pass", "type", "cache", "time (s)", "peak RSS (MB)", "details"], rows)
    timed = [s for s in steps if isinstance(s.get("wall_s"), int | float)]
    if timed:
        top = max(max(s["wall_s"] for s in timed), 1e-9)
        bars = []
        for i, s in enumerate(timed):
            w = 420 * s["wall_s"] / top
            bars.append(f'<text x="0" y="{i * 22 + 14}" font-size="12">{escape(s["name"])}</text>'
                        f'<rect x="150" y="{i * 22 + 3}" width="{w:.1f}" height="15" fill="#2563eb">'
                        f"<title>{fmt(s['wall_s'])} s</title></rect>"
                        f'<text x="{155 + w:.1f}" y="{i * 22 + 14}" font-size="11">{fmt(s["wall_s"])} s</text>')
        h = len(timed) * 22 + 4
        out += (f'<svg role="img" aria-label="time per pass" width="640" '
                f'height="{h}" viewBox="0 0 640 {h}">{"".join(bars)}</svg>')
    return out


def _loss_section(steps: list[dict[str, Any]]) -> str:
    out = []
    for s in steps:
        history = next((s.get("metrics", {}).get(k) for k in LOSS_KEYS if s.get("metrics", {}).get(k)), None)
        if not isinstance(history, list):
            continue
        series: dict[str, list[tuple[float, float]]] = {}
        for row in history:
            if not isinstance(row, dict) or "step" not in row:
                continue
            for k in ("loss", "eval_loss"):
                if isinstance(row.get(k), int | float):
                    series.setdefault("train loss" if k == "loss" else "eval loss", []).append(
                        (float(row["step"]), float(row[k])))
        chart = line_chart(series, "step", "loss")
        if chart:
            out.append(f"<h3>{escape(s['name'])} ({escape(s['type'])})</h3>{chart}")
    return "".join(out)


def _metrics_section(evaluation: dict[str, Any]) -> str:
    before, after = evaluation.get("input") or {}, evaluation.get("output") or {}
    goals = {g["metric"]: g for g in evaluation.get("goals", [])}
    rows = []
    for key in dict.fromkeys([*before, *after]):
        b, a = before.get(key), after.get(key)
        change = "-"
        if isinstance(a, int | float) and isinstance(b, int | float):
            change = f"{a - b:+.4g}" + (f" ({(a - b) / abs(b) * 100:+.1f}%)" if b else "")
        g = goals.get(key)
        goal = "<td>-</td>" if g is None else (
            f'<td class="{"met" if g["met"] else "missed"}">{"met" if g["met"] else "missed"} '
            f'({">=" if g["higher_is_better"] else "<="} {escape(fmt(g["bound"]))})</td>')
        rows.append([f"<td>{escape(key)}</td>", _num(b), _num(a), f'<td class="num">{escape(change)}</td>', goal])
    return (f"<p>Evaluator <b>{escape(str(evaluation.get('evaluator')))}</b>; latency in ms, size in MiB.</p>"
            + _table(["metric", "input model", "output model", "change", "goal"], rows))


def _search_section(search: dict[str, Any]) -> str:
    trials = search["trials"]
    chosen = search.get("chosen")
    parts = [f"<p>{len(trials)} trials ({escape(search['sampler'])} sampler, seed {search.get('seed')}) over a "
             f"space of {search.get('space_size')} points in {fmt(search.get('wall_s'))} s. "
             f"Pareto-optimal trials: {escape(', '.join(map(str, search.get('pareto', []))))}.</p>"]
    axes = _chart_axes(search)
    if axes:
        parts.append(pareto_chart(trials, axes[0], axes[1], chosen))
    keys = list(dict.fromkeys(k for t in trials for k in (t.get("metrics") or {})))
    rows, classes = [], []
    for t in sorted(trials, key=lambda t: t.get("rank") or 10**9):
        params = ", ".join(f"{k.removeprefix('passes.')}={v}" for k, v in (t.get("params") or {}).items())
        m = t.get("metrics") or {}
        rows.append([_num(t.get("rank")), _num(t["index"]), f"<td>{'yes' if t.get('pareto') else ''}</td>",
                     f'<td class="{"met" if t.get("goals_met") else "missed"}">{"yes" if t.get("goals_met") else "no"}'
                     "</td>", f"<td>{escape(params)}</td>", *(_num(m.get(k)) for k in keys),
                     f"<td>{escape(t.get('error') or '')}</td>"])
        classes.append("chosen" if t["index"] == chosen else "")
    parts.append(_table(["rank", "trial", "Pareto", "goals met", "parameters", *keys, "error"], rows, classes))
    outs = search.get("output_models", {})
    if outs:
        parts.append("<p>Copied to the output folder: " + ", ".join(
            f"<code>{escape(r)}/</code> = trial {i}" for r, i in outs.items()) + "</p>")
    return "".join(parts)


def build_html(fp: dict[str, Any], title: str = "honed report") -> str:
    """The report page for one footprints.json dict."""
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(fp.get("created", time.time())))
    im = fp.get("input_model", {})
    steps = fp.get("steps", [])
    if fp.get("search"):  # a cached step of the chosen trial: show the trial that computed it
        ran = {s["output_id"]: s for t in fp["search"]["trials"] for s in t.get("steps", []) if s.get("cached") is False}
        steps = [ran.get(s["output_id"], s) for s in steps]
    body = [f"<h1>{escape(title)}</h1>",
            f"<p class='muted'>workflow {escape(str(fp.get('source')))} ({escape(str(fp.get('generation')))}) - "
            f"honed {escape(str(fp.get('honed_version')))} - {escape(created)}</p>",
            "<h2>Workflow</h2>",
            f"<p>Input model: <code>{escape(str(im.get('model_path')))}</code> ({escape(str(im.get('type')))}, "
            f"{escape(str(im.get('task')))})</p>",
            _steps_section(steps)]
    header, rows = fidelity_rows(steps)
    if rows:
        body += ["<h2>Fidelity to the pass input</h2>", "<p>Next-token distributions of each quantized output against "
                 "its input's, teacher-forced on the same rows: KL(input || output), top-1 agreement, perplexities."
                 "</p>", _table(header, [[f"<td>{escape(r[0])}</td>", *(f'<td class="num">{escape(c)}</td>'
                                                                         for c in r[1:])] for r in rows])]
    losses = _loss_section(steps)
    if losses:
        body += ["<h2>Training loss</h2>", losses]
    if fp.get("evaluation"):
        body += ["<h2>Metrics: input -> output</h2>", _metrics_section(fp["evaluation"])]
    if fp.get("search"):
        body += ["<h2>Search</h2>", _search_section(fp["search"])]
    if fp.get("flows"):
        header, rows = flows_rows(fp["flows"])
        body += ["<h2>Pass flows</h2>", "<p>Each flow ran as its own branch over one cache; its model, "
                 "footprints.json and report are in the folder of its name.</p>",
                 "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"
                 + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                 + "</table>"]
        return _page(title, body)
    om = fp.get("output_model") or {}
    chosen = ""
    if fp.get("search"):
        chosen = f" (trial {fp['search'].get('chosen')}, copied to <code>1/</code>)"
    body += ["<h2>Chosen model</h2>",
             f"<p><code>{escape(str(om.get('kind')))}</code> model{chosen}; id <code>{escape(str(om.get('id')))}"
             f"</code></p><pre>{escape(json.dumps(om.get('attributes', {}), indent=2))}</pre>"]
    return _page(title, body)


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
