"""What a person watching a run sees: one line per pass, and bars inside long passes."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from honed.util.context import ProgressTask


class _Count(ProgressColumn):
    """``done/total`` for bars that know their length, nothing for spinners."""

    def render(self, task: Task) -> Text:
        return Text("" if task.total is None else f"{task.completed:.0f}/{task.total:.0f}")


class _RichTask(ProgressTask):
    def __init__(self, progress: Progress, task_id: Any) -> None:
        self.progress, self.task_id = progress, task_id

    def advance(self, n: float = 1, **fields: Any) -> None:
        info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self.progress.update(self.task_id, advance=n, info=info)

    def close(self) -> None:
        self.progress.remove_task(self.task_id)


class _OwnTask(_RichTask):
    """A bar with a display of its own (``RunDisplay.bar`` outside a pass): closing it stops the display."""

    def close(self) -> None:
        super().close()
        self.progress.stop()


def _new_progress(console: Console, disable: bool = False) -> Progress:
    """Description, bar, done/total, elapsed, ETA and the fields a bar reports; transient, so on a terminal the
    bars vanish when done.  ``disable``: counted but never drawn or started (rich's ``stop`` writes an empty line
    to a console that is not interactive)."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), _Count(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, transient=True, disable=disable,
    )


class RunDisplay:
    """Rich output on stderr; silent when ``quiet``."""

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self._progress: Progress | None = None

    def start_pass(self, label: str) -> None:
        if self.quiet:
            return
        self._progress = _new_progress(self.console)
        self._progress.start()
        self._progress.add_task(f"{label} running", total=None, info="")

    def task(self, description: str, total: float | None) -> ProgressTask:
        if self._progress is None:
            return ProgressTask()
        return _RichTask(self._progress, self._progress.add_task(description, total=total, info=""))

    def bar(self, description: str, total: float | None) -> ProgressTask:
        """A bar inside a pass (as ``task``) or between passes, where the engine's evaluations run: there it starts
        a display of its own and closing it stops that display.  Silent when ``quiet``; off an interactive terminal
        (a log file, CI) it writes nothing at all, not even a line when it ends (one a metric would add up)."""
        if self.quiet:
            return ProgressTask()
        if self._progress is not None:
            return self.task(description, total)
        progress = _new_progress(self.console, disable=not self.console.is_interactive)
        progress.start()
        return _OwnTask(progress, progress.add_task(description, total=total, info=""))

    def end_pass(self, line: str) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self.line(line)

    def line(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)
