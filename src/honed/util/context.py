"""What a pass (and the training code under it) may use besides its config and input model.

It lives in the leaf layer so that training, which runs inside passes, needs nothing from the passes layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from honed.data.config import DataConfig
    from honed.util.accelerator import Accelerator


class ProgressTask:
    """A progress bar inside a long pass; the engine supplies a rich-backed one."""

    def advance(self, n: float = 1, **fields: Any) -> None:  # pragma: no cover - interface
        """Move the bar forward by ``n``; ``fields`` are shown beside it (loss, tokens/s)."""

    def close(self) -> None:  # pragma: no cover - interface
        """Remove the bar."""


@dataclass
class PassContext:
    """What a pass may use besides its own config and input model."""

    pass_name: str
    host: Accelerator
    target: Accelerator
    data_configs: dict[str, DataConfig]
    work_dir: Path
    """Survives a killed run (checkpoints go here); deleted once the pass succeeds."""
    cache_dir: Path
    progress: Any = None
    """Callable ``(description, total) -> ProgressTask``."""
    metrics: dict[str, Any] = field(default_factory=dict)
    launcher: str = "local"
    """How a multi-process fine-tune starts its processes: ``local`` (torch's elastic launcher, on this machine)
    or ``ray`` (Ray Train's TorchTrainer, over the Ray cluster this pass runs in)."""
    """Numbers the pass wants in its footprint (train loss, tokens/s, max abs diff)."""

    def data_config(self, name: str, field: str, who: str | None = None) -> DataConfig:
        """The workflow's data config ``name``, which the pass's option ``field`` names. Raises UserError, naming
        the defined ones, when there is none of that name; ``who`` prefixes the message (default: the pass)."""
        from honed.errors import UserError

        if name not in self.data_configs:
            raise UserError(f"{who or self.pass_name}: {field} '{name}' is not defined; define it under "
                            f"data_configs (defined: {', '.join(self.data_configs) or 'none'})")
        return self.data_configs[name]

    def task(self, description: str, total: float | None) -> ProgressTask:
        """Open a progress bar (a silent one when the engine shows none)."""
        if self.progress is None:
            return ProgressTask()
        return self.progress(description, total)

    def track(self, items: Iterable[Any], total: int | None, description: str) -> Iterator[Any]:
        """Iterate with a progress bar."""
        bar = self.task(description, total)
        try:
            for item in items:
                yield item
                bar.advance(1)
        finally:
            bar.close()
