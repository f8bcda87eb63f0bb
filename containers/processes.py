"""`lamina top`: a container's processes as ps shows them, read from /proc."""

from __future__ import annotations

import contextlib
import os

HEADER = ("UID", "PID", "PPID", "TIME", "CMD")


def describe_processes(pids: list[int], proc: str = "/proc") -> list[tuple[str, ...]]:
    """A header and a row per process still there: host uid and pids (as docker top shows
    them), CPU time as [DD-]HH:MM:SS, the command line (or [name] for a kernel thread)."""
    ticks = os.sysconf("SC_CLK_TCK")
    rows: list[tuple[str, ...]] = [HEADER]
    for pid in sorted(pids):
        with contextlib.suppress(OSError, ValueError, IndexError):
            rows.append(_row(proc, pid, ticks))
    return rows


def read_stat(pid: int | str, proc: str = "/proc") -> tuple[str, list[bytes]]:
    """/proc/PID/stat (PID may be "self"): the command name, and the fields after it, the
    state first (stat(5)'s field 3 is index 0 here). The name may hold spaces and
    parentheses: the fields start after its last ')'."""
    with open(f"{proc}/{pid}/stat", "rb") as f:
        stat = f.read()
    end = stat.rindex(b")")
    return stat[stat.index(b"(") + 1 : end].decode(errors="replace"), stat[end + 2 :].split()


def _row(proc: str, pid: int, ticks: int) -> tuple[str, ...]:
    name, fields = read_stat(pid, proc)
    ppid, cpu = int(fields[1]), (int(fields[11]) + int(fields[12])) // ticks
    with open(f"{proc}/{pid}/status", "rb") as f:
        uid = next(line.split()[1] for line in f if line.startswith(b"Uid:")).decode()
    with open(f"{proc}/{pid}/cmdline", "rb") as f:
        argv = f.read().rstrip(b"\0").split(b"\0")
    command = " ".join(a.decode(errors="replace") for a in argv) if argv != [b""] else f"[{name}]"
    return (uid, str(pid), str(ppid), _cpu_time(cpu), command)


def _cpu_time(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{clock}" if days else clock
