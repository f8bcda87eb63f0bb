# ruff: noqa: F811 - pytest fixtures imported from runtime_helpers are used as parameters
"""`logs --tail N` and `top`."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from containers.log_tail import start_of_last_lines
from containers.processes import HEADER, describe_processes
from tests.containers.runtime_helpers import (  # noqa: F401 - fixtures
    Lamina,
    busybox_rootfs,
    lamina,
    wait_for,
)


@pytest.mark.parametrize("block", [1, 3, 65536])
@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 2, b"b\nc"),  # a last line without its newline counts
        (b"a\nb\nc\n", 5, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 0, b""),
        (b"", 3, b""),
        (b"\n\n\n", 2, b"\n\n"),
    ],
)
def test_tail_finds_where_the_last_lines_begin(
    text: bytes, count: int, expected: bytes, block: int
) -> None:
    log = io.BytesIO(text)
    assert text[start_of_last_lines(log, count, block) :] == expected


def test_a_process_row_reads_proc() -> None:
    header, row = describe_processes([os.getpid()])
    assert header == HEADER
    uid, pid, ppid, time, command = row
    assert (uid, pid, ppid) == (str(os.getuid()), str(os.getpid()), str(os.getppid()))
    assert len(time.split(":")) == 3
    assert "python" in command or "pytest" in command
    assert describe_processes([2**22 + 7]) == [HEADER]  # gone: no row


@pytest.mark.root
def test_top_and_logs_tail_of_a_running_container(lamina: Lamina, busybox_rootfs: Path) -> None:
    lamina.ok("run", "-d", "--name", "box", "--layer", str(busybox_rootfs), "--", "sh", "-c",
              "seq 1 5; sleep 600 & exec sleep 601")  # fmt: skip
    wait_for(lambda: lamina.ok("logs", "box").split() == ["1", "2", "3", "4", "5"], what="log")
    assert lamina.ok("logs", "--tail", "2", "box") == "4\n5\n"
    rows = [line.split() for line in lamina.ok("top", "box").splitlines()]
    assert rows[0] == list(HEADER)
    commands = sorted(" ".join(row[4:]) for row in rows[1:])
    assert commands == ["sleep 600", "sleep 601"]
    lamina.ok("stop", "-t", "0", "box")
    stopped = lamina("top", "box")
    assert (stopped.returncode, stopped.stderr) == (
        125,
        "lamina: error: container box is not running\n",
    )
