"""footprints.json: the provenance of every model a run touched."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StepRecord:
    """One pass as it happened: config, input and output ids, cache hit, time, memory, metrics."""

    name: str
    type: str
    config: dict[str, Any]
    input_id: str
    output_id: str
    cached: bool | None = None
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Footprints:
    source: str | None
    generation: str
    honed_version: str
    input_model: dict[str, Any]
    steps: list[StepRecord]
    output_model: dict[str, Any]
    created: float = field(default_factory=time.time)
    evaluation: dict[str, Any] | None = None
    """Metrics of the input and output models and the goal checks (see honed.evaluate)."""
    search: dict[str, Any] | None = None
    """Every trial of a search, the Pareto front and the ranking (see honed.search)."""


def read_footprints(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
