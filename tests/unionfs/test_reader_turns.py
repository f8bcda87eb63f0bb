"""The /dev/fuse workers' turns (unionfs/reader_turns.py), on a queue standing in for the
device and a watcher whose looks the test gives one by one."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from unionfs.reader_turns import ReaderTurns

WORKERS = 4


class Request:
    def __init__(self, number: int, answer: Callable[[], object] = lambda: None) -> None:
        self.number = number
        self.answer = answer
        self.taken_by: int | None = None
        self.done = threading.Event()


class Looks:
    """The watcher's sleep: it returns once per look the test allows."""

    def __init__(self) -> None:
        self._allowed = threading.Semaphore(0)
        self.asked = 0

    def sleep(self, _seconds: float) -> None:
        self.asked += 1
        self._allowed.acquire()

    def allow(self, count: int = 1) -> None:
        for _ in range(count):
            self._allowed.release()


class Pool:
    """Workers in the loop of fuse_session's, reading a queue instead of /dev/fuse."""

    def __init__(self, spawning: bool = False) -> None:
        """spawning: one worker to begin with, the watcher starts the others (as the
        daemon does); else all WORKERS from the start."""
        self.looks = Looks()
        spawn = self._spawn if spawning else None
        self.turns = ReaderTurns(patience=0.0, sleep=self.looks.sleep, spawn=spawn, limit=WORKERS)
        self.device: queue.Queue[Request | None] = queue.Queue()
        first = 1 if spawning else WORKERS
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(first)]
        self.watcher = threading.Thread(target=self.turns.watch, daemon=True)
        self.threads.append(self.watcher)
        for thread in self.threads:
            thread.start()
        wait_for(lambda: self.looks.asked == 1 and self.turns.reading == 1)  # all set

    @property
    def workers(self) -> int:
        return len(self.threads) - 1

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._work, args=(True,), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _work(self, called: bool = False) -> None:
        self.turns.first_turn(called)
        while True:
            request = self.device.get()
            if request is None:  # the device is gone
                self.turns.close()
                return
            self.turns.took()
            request.taken_by = threading.get_ident()
            request.answer()
            request.done.set()
            self.turns.answered()

    def ask(self, request: Request) -> Request:
        self.device.put(request)
        return request

    def close(self) -> None:
        for _ in range(WORKERS):
            self.device.put(None)
        workers = [thread for thread in self.threads if thread is not self.watcher]
        for thread in workers:
            thread.join(timeout=5)
        self.looks.allow(2)  # the turns are closed now: the watcher sees it at its next look
        self.watcher.join(timeout=5)


@pytest.fixture(params=[False, True], ids=["all-started", "spawned"])
def pool(request: pytest.FixtureRequest) -> Iterator[Pool]:
    pool = Pool(spawning=request.param)
    yield pool
    pool.close()
    assert not any(thread.is_alive() for thread in pool.threads)


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_quick_requests_are_all_read_by_one_worker(pool: Pool) -> None:
    answered = []
    for number in range(200):  # one at a time, as a caller waiting on each answer
        request = pool.ask(Request(number))
        assert request.done.wait(5)
        answered.append(request)
    assert len({request.taken_by for request in answered}) == 1
    wait_for(lambda: pool.turns.reading == 1)


def test_a_slow_request_brings_another_reader(pool: Pool) -> None:
    release = threading.Event()
    slow = pool.ask(Request(0, answer=lambda: release.wait(5)))
    wait_for(lambda: slow.taken_by is not None)
    quick = pool.ask(Request(1))
    assert not quick.done.wait(0.05)  # nobody reads while the slow one is answered...
    pool.looks.allow(2)  # ...until the watcher saw no progress between two looks
    assert quick.done.wait(5)
    assert quick.taken_by != slow.taken_by
    release.set()
    assert slow.done.wait(5)
    # The reader called is enough: the slow one's worker stands by again.
    wait_for(lambda: pool.turns.reading == 1)
    later = [pool.ask(Request(n)) for n in range(2, 20)]
    for request in later:
        assert request.done.wait(5)
    assert {request.taken_by for request in later} == {quick.taken_by}


def test_no_reader_is_called_while_requests_progress(pool: Pool) -> None:
    gates = [threading.Event(), threading.Event()]
    first = pool.ask(Request(0, answer=lambda: gates[0].wait(5)))
    wait_for(lambda: first.taken_by is not None)
    pool.looks.allow(1)
    wait_for(lambda: pool.looks.asked == 2)  # a look while the first is answered
    gates[0].set()
    assert first.done.wait(5)
    second = pool.ask(Request(1, answer=lambda: gates[1].wait(5)))
    wait_for(lambda: second.taken_by is not None)
    pool.looks.allow(1)
    wait_for(lambda: pool.looks.asked == 3)  # one while the second is: progress since
    assert pool.turns.reading == 0  # nobody was called to read
    gates[1].set()
    assert second.done.wait(5)
    assert second.taken_by == first.taken_by


def test_an_idle_watcher_sleeps_until_the_next_request(pool: Pool) -> None:
    pool.looks.allow(5)
    time.sleep(0.05)
    assert pool.looks.asked == 1  # it stopped looking: nothing was taken
    request = pool.ask(Request(0))
    assert request.done.wait(5)
    wait_for(lambda: pool.looks.asked == 2)  # the request woke it


def test_closing_releases_the_workers_on_standby() -> None:
    pool = Pool()
    wait_for(lambda: pool.turns.reading == 1)
    pool.close()
    assert not any(thread.is_alive() for thread in pool.threads)


def test_closing_ends_the_watchers_pause_at_once() -> None:
    """The daemon joins the watcher before it lets go of the upper dir (a container's
    teardown waits for that): its pause between looks must not outlast close()."""
    turns = ReaderTurns(patience=30.0)  # the real pause, long
    watcher = threading.Thread(target=turns.watch, daemon=True)
    watcher.start()
    time.sleep(0.05)  # in its first pause now
    turns.close()
    watcher.join(5)
    assert not watcher.is_alive()


def test_workers_are_started_only_as_slow_requests_need_them() -> None:
    """The daemon starts one worker; the watcher starts another only where it would call
    one from standby and none stands by, and never more than the limit."""
    pool = Pool(spawning=True)
    try:
        for number in range(50):
            assert pool.ask(Request(number)).done.wait(5)
        assert pool.workers == 1  # quick requests: nobody else was needed
        release = threading.Event()
        slow = [pool.ask(Request(100 + n, answer=lambda: release.wait(5))) for n in range(WORKERS)]
        pool.looks.allow(4 * WORKERS)
        wait_for(lambda: all(request.taken_by is not None for request in slow))
        wait_for(lambda: pool.workers == WORKERS)  # one more for each slow request
        stuck = pool.ask(Request(200))
        pool.looks.allow(4)
        assert not stuck.done.wait(0.05)  # at the limit: no fifth worker
        release.set()
        assert stuck.done.wait(5)
        assert pool.workers == WORKERS
    finally:
        pool.close()
    assert not any(thread.is_alive() for thread in pool.threads)
