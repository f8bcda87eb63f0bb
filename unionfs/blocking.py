"""How request threads take turns on the filesystem's state.

Requests are served by several threads (one slow fsync must not stall every lookup), but
the filesystem's state is worked on one request at a time: a handler holds `state` while
it runs, like a task on a single event loop. Slow calls (copying a large file, fsync) run
with `state` released, through `blocking()`, so other requests go on meanwhile. Mutations
also hold the mutation lock across those slow calls: one mutation at a time, while
lookups, attributes and reads never wait for a copy-up.

Lock order: mutation before state; whoever waits for the mutation lock lets go of state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

TYPE_CHECKING = False  # typing costs milliseconds at every mount; only mypy needs it
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")

HEAVY_BYTES = 1 << 20


class Gate:
    def __init__(self, heavy_bytes: int = HEAVY_BYTES) -> None:
        self.state = threading.Lock()
        self._mutation = threading.Lock()
        self.mutations = 0  # mutations finished: what was true before one may not be after
        self.heavy_bytes = heavy_bytes

    def is_heavy(self, size: int) -> bool:
        return size >= self.heavy_bytes

    def blocking(self, fn: Callable[..., T], *args: object) -> T:
        """Run a slow call with the state released (the caller holds it)."""
        self.state.release()
        try:
            return fn(*args)
        finally:
            self.state.acquire()

    @contextmanager
    def mutating(self) -> Iterator[None]:
        """One mutation at a time (the caller holds state; it is let go while waiting)."""
        if not self._mutation.acquire(blocking=False):
            self.state.release()
            try:
                self._mutation.acquire()
            finally:
                self.state.acquire()
        try:
            yield
        finally:
            self.mutations += 1
            self._mutation.release()
