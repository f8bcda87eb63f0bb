"""Whether an io_uring queue thread should yield its CPU to the caller it answers (no FUSE
here).

Our answer wakes the caller while we still run, and a scheduler may then put the caller
on the other, idle CPU: its next request goes to that CPU's queue, and every request
wakes a thread across CPUs and then the caller back. Answering as SCHED_IDLE makes our CPU
count as idle, and the caller stays (see fuse_uring). On the Intel Xeon VM of our README
tables that made the first stat of 10,000 files take ~290 ms every run, where it took
250-690 ms from run to run without.

The yield costs two sched_setscheduler calls and one more io_uring_enter a request, about
8 µs on the AMD EPYC VM of our second table, where waking across CPUs is cheap: there it
only cost time (create 2,000 files 977 -> 830 ms without it, delete 1,000 lower files
309 -> 269 ms, walk 86 -> 72 ms; medians of 5 alternating runs on tmpfs), though callers
do move there too, in some phases at every request.

So we measure, on the host and the work at hand: a trial answers windows of requests with
and without the yield in turn, and keeps the yield only where a caller's requests then
come clearly faster (the median time from one request of a caller to its next). The
choice holds for SETTLE windows, then a new trial.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

WINDOW = 128  # requests a window (5-10 ms of a busy caller)
MIN_CYCLES = 32  # a window counts with at least this many caller-to-next-request times
TRIAL_WINDOWS = 3  # counted windows of each kind a trial compares
SETTLE = 64  # windows in the chosen way before the next trial
MARGIN = 1.05  # the yield must make requests come this much faster to be kept


class YieldAdvisor:
    """Chooses, window by window, whether to answer with a yield. Shared by the queue
    threads of a mount (a caller that moves changes queue, so thread): counting is left to
    the GIL (a count lost between two threads only blurs a window), the end of a window
    is one thread's at a time (it must never fail: a queue thread that raised would leave
    its queue unserved)."""

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock = clock  # nanoseconds, read only during trials
        self._ending = threading.Lock()
        self.yielding = False  # the choice outside trials
        self._mode = False  # this window's
        self._trying = True  # a trial first: the host decides
        self._trial: dict[bool, list[int]] = {True: [], False: []}  # medians by mode
        self._last: dict[int, int] = {}  # caller (thread id) -> its last request's time
        self._cycles: list[int] = []  # this window's caller-to-next-request times
        self._requests = 0  # this window's
        self._settled = 0  # windows since the last trial

    def answering(self, pid: int) -> bool:
        """A request of caller pid (0: the kernel's own) is being answered: whether to
        yield as we do. Between trials, this only counts (it runs at every request)."""
        mode = self._mode
        if pid and self._trying:
            now = self._clock()
            last = self._last.get(pid)
            self._last[pid] = now
            if last is not None:
                self._cycles.append(now - last)
        self._requests += 1
        if self._requests >= WINDOW and self._ending.acquire(blocking=False):
            try:
                if self._requests >= WINDOW:  # not ended by another thread meanwhile
                    self._end_window()  # for the requests after this one
            finally:
                self._ending.release()
        return mode

    def _end_window(self) -> None:
        cycles = self._cycles  # other threads may still append to it: it is ours to read
        self._cycles = []
        self._requests = 0
        self._last.clear()
        if self._trying:
            if len(cycles) >= MIN_CYCLES:
                self._trial[self._mode].append(_median(cycles))
            with_yield, without = self._trial[True], self._trial[False]
            if len(with_yield) >= TRIAL_WINDOWS and len(without) >= TRIAL_WINDOWS:
                self.yielding = _median(with_yield) * MARGIN < _median(without)
                self._trying = False
                self._settled = 0
                self._mode = self.yielding
            else:
                self._mode = not self._mode  # in turn: a change of work hits both alike
        else:
            self._settled += 1
            if self._settled >= SETTLE:
                self._trying = True
                self._trial = {True: [], False: []}
                self._mode = not self.yielding


def _median(values: list[int]) -> int:
    return sorted(values)[len(values) // 2]
