"""report.html: self-contained (no network URL anywhere a browser would fetch), parseable, with
the loss curve, metrics and the Pareto chart; `honed report DIR` rebuilds it."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

from honed.report.html import build_html
from honed.report.text import summary_text
from tests.helpers import cli

FETCHING_ATTRS = {"src", "href", "srcset", "action", "poster", "data", "xlink:href", "background"}


class Collector(HTMLParser):
    """Tags, every attribute value that makes a browser fetch, and whether tags nest properly."""

    VOID = frozenset({"meta", "br", "img", "input", "link", "hr", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.fetching: list[str] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.styles = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.fetching += [v or "" for k, v in attrs if k in FETCHING_ATTRS]
        self.styles += " ".join(v or "" for k, v in attrs if k == "style")
        if tag not in self.VOID:
            self.stack.append(tag)
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles += data


def footprints() -> dict:
    trials = []
    for i, (prec, acc, lat) in enumerate([("int4", 0.70, 2.0), ("int8", 0.80, 3.0), ("fp32", 0.81, 6.0),
                                          ("fp32", 0.75, 7.0)]):
        trials.append({"index": i, "params": {"passes.mb.precision": prec}, "metrics": {"acc-accuracy_score": acc,
                       "lat-avg": lat}, "goals_met": True, "pareto": i < 3, "rank": i + 1,
                       "steps": [{"name": "mb", "type": "ModelBuilder", "output_id": f"k{i}", "cached": False,
                                  "wall_s": 1.5, "metrics": {}}]})
    history = [{"step": s, "loss": 3.0 - 0.2 * s} for s in range(1, 6)] + [{"step": 5, "eval_loss": 2.4}]
    return {
        "source": "<workflow>.json", "generation": "honed", "honed_version": "0.1.0", "created": 0,
        "input_model": {"model_path": "https://huggingface.co/x <b>", "type": "HfModel", "task": "text-generation"},
        "steps": [{"name": "lora", "type": "LoRA", "config": {"r": 8}, "input_id": "a", "output_id": "b",
                   "cached": False, "wall_s": 12.5, "peak_rss_mb": 900.0,
                   "metrics": {"train_loss": 2.2, "log_history": history}},
                  {"name": "mb", "type": "ModelBuilder", "config": {}, "input_id": "b", "output_id": "k0",
                   "cached": True, "wall_s": 0.0, "peak_rss_mb": None, "metrics": {}}],
        "output_model": {"kind": "genai", "id": "k0", "attributes": {"precision": "int4"}},
        "evaluation": {"evaluator": "ev", "input": {"acc-accuracy_score": 0.6, "lat-avg": 9.0},
                       "output": {"acc-accuracy_score": 0.7, "lat-avg": 2.0},
                       "goals": [{"metric": "acc-accuracy_score", "value": 0.7, "bound": 0.65, "higher_is_better": True,
                                  "met": True}]},
        "search": {"sampler": "sequential", "seed": 0, "space_size": 4, "trials": trials, "pareto": [0, 1, 2],
                   "ranking": [0, 1, 2, 3], "chosen": 0, "wall_s": 20.0, "output_models": {"1": 0},
                   "objectives": [{"metric": "acc-accuracy_score", "higher_is_better": True},
                                  {"metric": "lat-avg", "higher_is_better": False}]},
    }


def test_report_is_self_contained_and_complete() -> None:
    page = build_html(footprints())
    p = Collector()
    p.feed(page)
    p.close()
    assert not p.errors and p.stack == []
    assert "script" not in p.tags and "link" not in p.tags and "img" not in p.tags
    assert p.fetching == []  # no src/href at all
    assert not re.search(r"url\s*\(", p.styles) and "@import" not in p.styles
    assert "<b>" not in page.split("Input model:")[1][:200]  # user text is escaped
    assert p.tags.count("svg") == 3  # pass times, loss curve, Pareto chart
    assert page.count("<polyline") >= 3  # train loss, eval loss (one point), Pareto front
    # every trial is a point on the Pareto chart, the chosen one ringed
    pareto_svg = page[page.index('aria-label="acc-accuracy_score against lat-avg'):]
    assert pareto_svg.count("<title>trial ") == 4 and "<title>chosen</title>" in pareto_svg
    # the cached step of the chosen trial shows the time of the trial that computed it
    assert ">1.5<" in page


def test_report_command_rebuilds_it(tmp_path: Path) -> None:
    (tmp_path / "footprints.json").write_text(json.dumps(footprints()))
    assert cli("report", str(tmp_path)) == 0
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    text = summary_text(tmp_path / "footprints.json")
    assert "chosen trial 0" in text and "acc-accuracy_score" in text and "met >= 0.65" in text
    assert cli("report", str(tmp_path / "missing")) == 2
