"""Shared fixtures. The suite runs as root on Linux with /dev/fuse and the kernel overlayfs."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tests import mounting


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuse-transport",
        choices=("io_uring", "dev"),
        default="io_uring",
        help="how our mounts get their requests: per-CPU io_uring queues where the kernel "
        "has them (the fuse module's enable_uring is set for the run), or /dev/fuse reads",
    )
    parser.addoption(
        "--lamina-server",
        action="store_true",
        help="the container tests' `lamina` commands go through a `lamina server` of each "
        "test's state directory (started and stopped by the test's `lamina` fixture)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "root: needs root, /dev/fuse and the kernel overlayfs")
    config.addinivalue_line(
        "markers",
        "lamina_process: looks at the `lamina` process itself (its imports, its pid stopped "
        "at a step): skipped with --lamina-server, where a fork of the server does the work",
    )
    # A run stopped with SIGTERM (a timeout, kill) tears down as one stopped with ^C does:
    # the session's fixtures put back what they changed for the whole machine
    # (fuse.enable_uring), and the tests' mounts, cgroups and processes go.
    signal.signal(signal.SIGTERM, _stop_as_interrupted)


_RUNNER = os.getpid()


def _stop_as_interrupted(signum: int, frame: object) -> None:
    if os.getpid() != _RUNNER:  # a test's forked child: it dies of it, as it always did
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_report_header(config: pytest.Config) -> str:
    if config.getoption("--fuse-transport") == "io_uring" and mounting.io_uring_supported():
        return "FUSE transport: io_uring queues (fuse.enable_uring=Y for this run)"
    return "FUSE transport: /dev/fuse"


@pytest.fixture(scope="session", autouse=True)
def _fuse_transport(pytestconfig: pytest.Config) -> Iterator[None]:
    with mounting.fuse_io_uring(pytestconfig.getoption("--fuse-transport") == "io_uring"):
        yield


@pytest.fixture(autouse=True)
def _skip_by_markers(request: pytest.FixtureRequest) -> None:
    """root: skipped without root; lamina_process: skipped with --lamina-server."""
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.skip("needs root")
    if request.node.get_closest_marker("lamina_process") and request.config.getoption(
        "--lamina-server"
    ):
        pytest.skip("looks at the lamina process itself, which a server's fork stands in for")
