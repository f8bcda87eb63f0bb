"""The choice whether a queue thread yields to the caller it answers, straight (no FUSE):
hosts are simulated by what a request costs a caller with and without the yield."""

from __future__ import annotations

import itertools
import random
import sys
import threading

from unionfs.yield_advisor import SETTLE, TRIAL_WINDOWS, WINDOW, YieldAdvisor

US = 1000  # ns


class Host:
    """Callers whose requests come every `plain` µs when answered without the yield and
    every `yielded` µs with it, give or take `noise` µs."""

    def __init__(self, plain: float, yielded: float, callers: int = 1, noise: float = 3) -> None:
        self.advisor = YieldAdvisor(clock=lambda: self.now)
        self.costs = {False: plain, True: yielded}
        self.callers = list(range(100, 100 + callers))
        self.noise = noise
        self.now = 0
        self.random = random.Random(7)

    def requests(self, count: int) -> list[bool]:
        """count requests (callers in turn): whether each answer yielded."""
        answers = []
        for i in range(count):
            pid = self.callers[i % len(self.callers)]
            yielded = self.advisor.answering(pid)
            answers.append(yielded)
            cost = self.costs[yielded] + self.random.uniform(-self.noise, self.noise)
            self.now += int(cost * US / len(self.callers))
        return answers


TRIAL = 2 * TRIAL_WINDOWS * WINDOW  # requests of a first trial
CYCLE = (SETTLE + 2 * TRIAL_WINDOWS) * WINDOW  # a settled stretch and the trial after it


def test_where_the_yield_only_costs_it_is_dropped_after_the_first_trial() -> None:
    host = Host(plain=50, yielded=58)  # the AMD EPYC VM: ~8 µs a request for nothing
    trial = host.requests(TRIAL)
    assert trial.count(True) == trial.count(False)  # both ways tried, in turn
    settled = host.requests(SETTLE * WINDOW)
    assert not any(settled)
    assert host.requests(CYCLE * 3).count(True) == 3 * TRIAL_WINDOWS * WINDOW  # trials only


def test_where_callers_move_without_it_the_yield_is_kept() -> None:
    host = Host(plain=80, yielded=58)  # a wake-up across CPUs twice a request
    host.requests(TRIAL)
    assert all(host.requests(SETTLE * WINDOW))
    later = host.requests(CYCLE * 3)
    assert later.count(False) == 3 * TRIAL_WINDOWS * WINDOW  # trials only


def test_a_tie_keeps_the_cheaper_way_without_the_yield() -> None:
    host = Host(plain=50, yielded=49, noise=5)
    host.requests(TRIAL)
    assert not host.advisor.yielding


def test_a_change_of_host_behaviour_is_followed_at_the_next_trial() -> None:
    host = Host(plain=50, yielded=58)
    host.requests(TRIAL)
    assert not host.advisor.yielding
    host.costs = {False: 90, True: 58}  # say the scheduler starts moving callers
    host.requests(CYCLE)
    assert host.advisor.yielding


def test_several_callers_are_timed_each_from_its_own_last_request() -> None:
    host = Host(plain=80, yielded=58, callers=4)
    host.requests(TRIAL)
    assert host.advisor.yielding


def test_windows_without_repeat_callers_decide_nothing() -> None:
    """Every request from a new caller, or from the kernel itself (pid 0): no time from a
    caller's request to its next, so the trial goes on alternating."""
    advisor = YieldAdvisor(clock=itertools.count(0, 50 * US).__next__)
    answers = []
    callers = [*range(1000, 1000 + WINDOW * 4), *[0] * (WINDOW * 4)]
    for pid in callers:
        answers.append(advisor.answering(pid))
    assert answers[::WINDOW] == [False, True] * 4


def test_queue_threads_share_one_advisor_without_an_error() -> None:
    """Several queue threads end windows at once: an error would stop a queue's thread."""
    advisor = YieldAdvisor(clock=itertools.count(0, 50 * US).__next__)
    errors: list[BaseException] = []
    answers: set[bool] = set()

    def serve(pid: int) -> None:
        try:
            for _ in range(WINDOW * 200):
                answers.add(advisor.answering(pid))
        except BaseException as exc:  # any error is the failure
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        threads = [threading.Thread(target=serve, args=(pid,)) for pid in (1, 2, 3, 4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert answers == {True, False}  # windows were ended, and the trial went both ways
