"""Acting on existing containers: stop, wait, rm, pause/unpause, stats.

These work from the state records alone, so they behave the same whether the monitor of a
container (the `lamina run` that started it) is alive or died: when it is gone, they do its
part of the clean-up themselves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from containers import runtime, state
from containers.cgroups.base import wait_until
from containers.cli import UserError, format_table
from containers.state import ContainerRecord
from containers.trees import GONE_PREFIX


def _wait_dead(record: ContainerRecord, timeout: float) -> bool:
    try:
        wait_until(lambda: not state.is_alive(record.pid, record.pid_start), timeout, "exit")
    except TimeoutError:
        return False
    return True


def settle(root: Path, record: ContainerRecord) -> ContainerRecord | None:
    """After the first process died: let the monitor record it, or do it if it is gone."""
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not state.monitor_alive(record), 10.0, "the monitor to finish")
    with state.locked(record.dir):
        try:
            current = state.load(record.dir)
        except FileNotFoundError:
            return None  # removed already (--rm)
        if current.status != state.EXITED:
            current.status = state.EXITED  # exit code unknown: nobody waited for it
            current.finished_at = time.time()
            state.save(current)
        runtime.teardown(current)
    return current


def stop(root: Path, record: ContainerRecord, timeout: int) -> None:
    if state.live_status(record) not in (state.RUNNING, state.PAUSED):
        return
    assert record.pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGTERM)
    if record.status == state.PAUSED:
        with contextlib.suppress(OSError):
            runtime.open_cgroup(record.id).thaw()
    if not _wait_dead(record, float(timeout)):
        runtime.open_cgroup(record.id).kill()
        _wait_dead(record, 10.0)
    current = settle(root, record)
    if current is not None and current.auto_remove:
        runtime.remove(root, current)


def wait_exit(record: ContainerRecord) -> int:
    """docker's wait: block until the container has stopped and its exit is recorded; its
    exit code. Sleeps on a pidfd of its first process while it runs, then watches the
    record closely: a --rm one is removed a few milliseconds after its exit is recorded."""
    import select

    while True:
        try:
            current = _load_even_if_removing(record)
        except FileNotFoundError:
            raise UserError(f"no such container: {record.name}") from None
        if current.status == state.EXITED and current.exit_code is not None:
            return current.exit_code  # recorded by its monitor: final
        status = state.live_status(current)
        if status == state.EXITED and not state.monitor_alive(current):
            raise UserError(f"container {record.name} exited, its exit code unknown")
        if status == state.CREATED and not state.monitor_alive(current):
            raise UserError(f"container {record.name} was never started")
        if status in (state.RUNNING, state.PAUSED) and current.pid is not None:
            try:
                pidfd = os.pidfd_open(current.pid)
            except ProcessLookupError:
                continue
            try:
                if state.is_alive(current.pid, current.pid_start):  # still that process
                    select.select([pidfd], [], [], 1.0)
            finally:
                os.close(pidfd)
            continue
        time.sleep(0.001)  # exited: its monitor is recording it (or it is being started)


def _load_even_if_removing(record: ContainerRecord) -> ContainerRecord:
    """The record, also from a --rm container's directory hidden for removal: its record,
    exit code included, is the last of its files to go (containers/trees.py)."""
    try:
        return state.load(record.dir)
    except FileNotFoundError:
        parent, name = os.path.split(record.dir)
        return state.load(os.path.join(parent, GONE_PREFIX + name))


def rm(root: Path, record: ContainerRecord, force: bool) -> None:
    if state.live_status(record) in (state.RUNNING, state.PAUSED):
        if not force:
            raise UserError(
                f"container {record.name} is running: stop it first, or use rm -f",
            )
        runtime.open_cgroup(record.id).kill()
        _wait_dead(record, 10.0)
    if record.status != state.CREATED or state.monitor_alive(record):
        settle(root, record)
    runtime.remove(root, record)


def pause(record: ContainerRecord, freeze: bool) -> None:
    status = state.live_status(record)
    if status not in (state.RUNNING, state.PAUSED):
        raise UserError(f"container {record.name} is not running")
    if freeze and status == state.PAUSED:
        raise UserError(f"container {record.name} is already paused")
    if not freeze and status != state.PAUSED:
        raise UserError(f"container {record.name} is not paused")
    cgroup = runtime.open_cgroup(record.id)
    try:
        cgroup.freeze() if freeze else cgroup.thaw()
    except OSError as exc:
        raise UserError(f"cannot {'freeze' if freeze else 'thaw'}: {exc}") from None
    with state.locked(record.dir):
        current = state.load(record.dir)
        if current.status in (state.RUNNING, state.PAUSED):
            current.status = state.PAUSED if freeze else state.RUNNING
            state.save(current)


def print_stats(root: Path, refs: list[str], stream: bool) -> int:
    """Each running container's use, CPU % over a quarter second; with stream, every second
    until interrupted (like docker stats), else one sample."""
    import sys

    while True:
        table = stats_table(root, refs)
        if stream and sys.stdout.isatty():
            print("\x1b[2J\x1b[H", end="")  # clear the screen, like docker
        print(table, flush=True)
        if not stream:
            return 0
        time.sleep(0.75)


def stats_table(root: Path, refs: list[str]) -> str:
    from containers.cgroups.resources import format_bytes

    records = [state.find_container(root, ref) for ref in refs] if refs else state.all_records(root)
    records = [r for r in records if state.live_status(r) in (state.RUNNING, state.PAUSED)]
    cgroups = [runtime.open_cgroup(r.id) for r in records]
    first = [(time.monotonic(), c.stats().cpu_usage_ns) for c in cgroups]
    if records:
        time.sleep(0.25)  # CPU % is a rate: it needs two samples
    rows = [("CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "PIDS")]
    for record, cgroup, (t0, cpu0) in zip(records, cgroups, first, strict=True):
        sample = cgroup.stats()
        cpu = (sample.cpu_usage_ns - cpu0) / ((time.monotonic() - t0) * 1e9) * 100
        limit = format_bytes(sample.memory_limit) if sample.memory_limit else "unlimited"
        memory = f"{format_bytes(sample.memory_bytes)} / {limit}"
        rows.append((record.id[:12], record.name, f"{cpu:.2f}%", memory, str(sample.pids)))
    return format_table(rows)
