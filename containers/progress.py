"""A one-line progress bar on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import Any, BinaryIO, TextIO

BAR_WIDTH = 30
REDRAW_EVERY = 0.1  # seconds: often enough to look alive, rarely enough to cost nothing


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"  # unreachable; keeps mypy sure of the return


class Progress:
    """Counts bytes against a known total; silent when not on a tty (or disabled)."""

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty()
        self.total = max(total, 1)
        self.done = 0
        self.label = label
        self._last = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last >= REDRAW_EVERY:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        frac = min(self.done / self.total, 1.0)
        filled = int(frac * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        sizes = f"{human_size(self.done)}/{human_size(self.total)}"
        self.stream.write(f"\r[{bar}] {frac * 100:3.0f}% {sizes} {self.label}\x1b[K")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


class CountingReader:
    """Wraps a binary stream: reports bytes read to a Progress, hashes them if asked."""

    def __init__(self, raw: BinaryIO, progress: Progress | None, hasher: Any = None) -> None:
        self.raw = raw
        self.progress = progress
        self.hasher = hasher
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        if self.hasher is not None:
            self.hasher.update(data)
        if self.progress is not None:
            self.progress.advance(len(data))
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return False

    def drain(self) -> None:
        """Read to the end, so the digest covers the whole blob."""
        while self.read(1 << 20):
            pass
