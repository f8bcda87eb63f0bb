"""A one-line progress display on stderr: which round, workload and system is running."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts steps and shows the current one; redraws in place on a terminal."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.started = time.monotonic()
        self.tty = stream.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        line = f"[{self.done}/{self.total} {elapsed:6.0f}s] {what}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line[:160])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A message that stays on screen (set-up stages, warnings)."""
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(message + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
