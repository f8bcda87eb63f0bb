"""Interleaved rounds: every round runs every workload on every system, the systems' order
rotated each round so that drift on the machine (heat, background load, page cache) hits
them all alike. A system that fails stops being measured for that workload (its first error
is reported); one that cannot mount at all is marked failed everywhere, and the run goes on.
"""

from __future__ import annotations

import statistics
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchmarks.machine import load_average
from benchmarks.progress import Progress
from benchmarks.systems import MountFailed
from benchmarks.workloads import CheckFailed, Measurement, Unsupported

OK, UNSUPPORTED, FAILED, WRONG, UNAVAILABLE = "ok", "unsupported", "failed", "wrong", "unavailable"


@dataclass
class Cell:
    """Everything measured for one workload on one system."""

    samples: list[float] = field(default_factory=list)
    extras: list[dict[str, float]] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    status: str = OK
    note: str = ""

    def stop(self, status: str, note: str) -> None:
        self.status, self.note = status, note

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples and self.status == OK else None

    def summary(self) -> dict[str, object]:
        extras: dict[str, float] = {}
        for key in sorted({k for e in self.extras for k in e}):
            extras[key] = statistics.median(e[key] for e in self.extras if key in e)
        return {
            "status": self.status,
            "note": self.note,
            "samples": [round(s, 6) for s in self.samples],
            "median": self.median,
            "min": min(self.samples) if self.samples else None,
            "max": max(self.samples) if self.samples else None,
            "extras": extras,
            "digest": self.digests[0] if self.digests else None,
        }


@dataclass(frozen=True)
class Named:
    name: str
    label: str


@dataclass
class Suite:
    """A table's worth: workloads (rows), systems (columns), how to take one sample."""

    name: str
    workloads: list[Named]
    systems: list[Named]
    references: tuple[str, ...]  # systems the ratios are taken against
    sample: Callable[[str, str], Measurement]  # (workload, system) -> one measurement
    reps: Callable[[str], int] = lambda workload: 1
    unavailable: dict[str, str] = field(default_factory=dict)  # system -> why
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)

    def cell(self, workload: str, system: str) -> Cell:
        return self.cells.setdefault((workload, system), Cell())

    def steps(self, rounds: int) -> int:
        return rounds * len(self.systems) * sum(self.reps(w.name) for w in self.workloads)


def rotated(items: Sequence[Named], k: int) -> list[Named]:
    if not items:
        return []
    k %= len(items)
    return [*items[k:], *items[:k]]


def interrupted(exc: BaseException) -> bool:
    """Whether exc was raised while a KeyboardInterrupt (^C, or SIGTERM: see cleanup.py)
    was handled: a sample's clean-up that failed then (its mount still busy) must not turn
    the interrupt into a failed sample and let the run go on."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__context__
    return False


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, (OSError, RuntimeError, CheckFailed, Unsupported, MountFailed)):
        text = f"{type(exc).__name__}: {text}"
    return text.splitlines()[0][:300]


def run_rounds(suites: Sequence[Suite], rounds: int, progress: Progress) -> list[list[float]]:
    """Run every round; returns the load average seen at the start of each."""
    loads: list[list[float]] = []
    for r in range(rounds):
        loads.append(load_average())
        for suite in suites:
            for workload in suite.workloads:
                for system in rotated(suite.systems, r):
                    run_cell(suite, workload, system, r, rounds, progress)
    return loads


def run_cell(
    suite: Suite, workload: Named, system: Named, r: int, rounds: int, progress: Progress
) -> None:
    cell = suite.cell(workload.name, system.name)
    reps = suite.reps(workload.name)
    for _ in range(reps):
        progress.step(f"round {r + 1}/{rounds}  {suite.name}: {workload.name:<16} {system.name}")
        if system.name in suite.unavailable:
            cell.stop(UNAVAILABLE, suite.unavailable[system.name])
        if cell.status != OK:
            continue
        try:
            m = suite.sample(workload.name, system.name)
        except Unsupported as exc:
            cell.stop(UNSUPPORTED, describe_error(exc))
        except CheckFailed as exc:
            cell.stop(WRONG, "wrong result: " + describe_error(exc))
        except MountFailed as exc:
            suite.unavailable[system.name] = "cannot mount: " + describe_error(exc)
            cell.stop(UNAVAILABLE, suite.unavailable[system.name])
        except Exception as exc:
            if interrupted(exc):  # ^C stops the run, even where a clean-up error followed it
                raise KeyboardInterrupt(describe_error(exc)) from exc
            cell.stop(FAILED, describe_error(exc))
            progress.note(f"{suite.name}/{workload.name}/{system.name} failed: {cell.note}")
            if not isinstance(exc, (OSError, RuntimeError)):
                progress.note(traceback.format_exc(limit=3))
        else:
            cell.samples.append(m.seconds)
            cell.extras.append(m.extra)
            cell.digests.append(m.digest)


def check_agreement(suite: Suite) -> None:
    """Same output everywhere: a system whose answer differs from the reference (the first
    reference system that has one, else the most common answer) is marked wrong."""
    for workload in suite.workloads:
        answers: dict[str, str] = {}
        for system in suite.systems:
            cell = suite.cells.get((workload.name, system.name))
            if cell is None or cell.status != OK or not cell.digests:
                continue
            if len(set(cell.digests)) > 1:
                cell.stop(WRONG, "answer changed between samples")
                continue
            answers[system.name] = cell.digests[0]
        if not answers:
            continue
        reference = next((answers[s] for s in suite.references if s in answers), None)
        if reference is None:
            reference = Counter(answers.values()).most_common(1)[0][0]
        for system_name, answer in answers.items():
            if answer != reference:
                suite.cells[(workload.name, system_name)].stop(
                    WRONG, f"answer {answer!r} differs from {reference!r}"
                )


def ratio(suite: Suite, workload: str, system: str, reference: str) -> float | None:
    a = suite.cells.get((workload, system))
    b = suite.cells.get((workload, reference))
    if a is None or b is None or a.median is None or not b.median:
        return None
    return a.median / b.median
