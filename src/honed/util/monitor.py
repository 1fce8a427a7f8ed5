"""Peak memory of a pass: RSS of this process and its children, sampled in a thread."""

from __future__ import annotations

import threading

import psutil


class PeakMemory:
    """Context manager; ``peak_mb`` is the highest RSS seen while it was open."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._children: list[psutil.Process] = []
        self._ticks = 0

    def _rss(self) -> int:
        # Listing children scans /proc; do it every 2 s, not on every sample.
        if self._ticks % 20 == 0:
            self._children = self._proc.children(recursive=True)
        self._ticks += 1
        total = self._proc.memory_info().rss
        for child in self._children:
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakMemory:
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)
