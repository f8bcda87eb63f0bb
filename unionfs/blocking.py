"""The one gateway from the trio thread to worker threads, for slow blocking calls.

Small syscalls (stat, a page of read or write) run inline: a thread hop costs more than
they do. Copying a large file and fsync go to a worker thread, under one limiter, so the
filesystem keeps answering other requests meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

HEAVY_BYTES = 1 << 20


class Blocking:
    def __init__(self, threads: int = 4, heavy_bytes: int = HEAVY_BYTES) -> None:
        self._limiter = trio.CapacityLimiter(threads)
        self.heavy_bytes = heavy_bytes

    def is_heavy(self, size: int) -> bool:
        return size >= self.heavy_bytes

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
