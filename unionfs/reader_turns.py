"""Which of the daemon's /dev/fuse worker threads reads the next request (no FUSE here).

The kernel gives a request to the reader that has waited longest, so with all eight
workers in read(2) each request went to another thread than the last: a caller's next
request, sent as soon as our answer woke it, often woke a thread that then waited for the
GIL the last one still held. Measured on 10,000 first `stat`s: 1.5 context switches and
0.11 CPU migrations a request, against 1.0 and none with one reader.

So one worker reads at a time, the same one while its requests are quick; the others
stand by. A request that takes long (a disk, an fsync, a lock) must not hold up the
rest, and the kernel does not tell us one does: a watcher looks every PATIENCE seconds
while requests flow, and when no request was taken since its last look while one is
being answered and nobody reads, it calls a worker from standby to read. Each slow
request thus brings one more reader within two looks. Idle, the watcher sleeps until the
next request comes.

Workers beyond the first are started by the watcher when it would call one and none
stands by (spawn), up to a limit: most mounts never have a slow request, and starting
seven threads that would only stand by took 1.2-2.4 ms of CPU at every mount, while a
container's first process was busy on the same two CPUs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

PATIENCE = 0.002  # seconds a request may hold up the others


class ReaderTurns:
    """The turns of a mount's workers. A worker calls first_turn() once, then took() for
    each request it reads and answered() once it answered it; first_turn() and answered()
    return when it is the worker's turn to read. watch() is the watcher's loop; close()
    ends all waits."""

    def __init__(
        self,
        patience: float = PATIENCE,
        sleep: Callable[[float], object] | None = None,
        spawn: Callable[[], None] | None = None,
        limit: int = 0,
    ) -> None:
        """spawn() starts one more worker, which calls first_turn(called=True); at most
        limit workers in all. Without spawn, the caller's workers are all there will be."""
        self._patience = patience
        self._spawn = spawn
        self._limit = limit
        self._workers = 0  # started, or being started by the watcher
        # The watcher's pause between looks ends early at close(): the daemon joins the
        # watcher before it lets go of the upper dir, and a full pause was up to 2 ms more
        # of every container's teardown.
        self._ended = threading.Event()
        self._sleep = sleep if sleep is not None else self._ended.wait
        self._lock = threading.Lock()
        self._called = threading.Condition(self._lock)  # where workers stand by
        self._work = threading.Condition(self._lock)  # where an idle watcher sleeps
        self._reading = 0  # workers in read(2), or called to it
        self._standing_by = 0
        self._calls = 0  # calls to read that no worker on standby took yet
        self._answering = 0  # requests taken and not yet answered
        self._taken = 0  # requests taken so far: the watcher's sign of progress
        self._watcher_idle = False
        self._closed = False

    @property
    def reading(self) -> int:
        return self._reading

    def first_turn(self, called: bool = False) -> None:
        """A new worker: it reads if nobody does, else it stands by until called.
        called: the watcher started it to read (counted as reading already)."""
        if called:
            return
        with self._lock:
            self._workers += 1
            self._read_or_stand_by()

    def took(self) -> None:
        """The calling worker read a request."""
        with self._lock:
            self._reading -= 1
            self._answering += 1
            self._taken += 1
            if self._watcher_idle:
                self._work.notify()

    def answered(self) -> None:
        """The calling worker answered its request: back to reading, or to standby if
        another worker reads now."""
        with self._lock:
            self._answering -= 1
            self._read_or_stand_by()

    def _read_or_stand_by(self) -> None:
        if self._closed:
            return  # every worker reads, to see the device gone
        if self._reading == 0:
            self._reading = 1
            return
        self._standing_by += 1
        try:
            while not self._calls and not self._closed:
                self._called.wait()
            if self._calls:
                self._calls -= 1  # counted in _reading by the watcher that called
        finally:
            self._standing_by -= 1

    def watch(self) -> None:
        """The watcher's loop, in a thread of its own, until close()."""
        mark = -1
        while True:
            spawn = False
            with self._lock:
                if self._closed:
                    return
                if self._taken == mark:  # no request taken since the last look
                    if not self._answering:
                        self._watcher_idle = True
                        while self._taken == mark and not self._closed:
                            self._work.wait()
                        self._watcher_idle = False
                    elif not self._reading and self._standing_by > self._calls:
                        self._calls += 1
                        self._reading += 1
                        self._called.notify()
                    elif not self._reading and self._spawn and self._workers < self._limit:
                        self._workers += 1
                        self._reading += 1
                        spawn = True
                mark = self._taken
            if spawn:
                self._start_worker()
            self._sleep(self._patience)

    def _start_worker(self) -> None:
        assert self._spawn is not None
        try:
            self._spawn()
        except (RuntimeError, MemoryError):  # no thread to be had: the ones there serve
            with self._lock:
                self._workers -= 1
                self._reading -= 1

    def close(self) -> None:
        """The device is gone: release every wait (workers then read, and leave)."""
        with self._lock:
            self._closed = True
            self._called.notify_all()
            self._work.notify_all()
        self._ended.set()
