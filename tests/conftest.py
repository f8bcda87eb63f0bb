"""Shared fixtures. The suite runs as root on Linux with /dev/fuse and the kernel overlayfs."""

from __future__ import annotations

import os
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "root: needs root, /dev/fuse and the kernel overlayfs")


def pytest_report_header(config: pytest.Config) -> str:
    if config.getoption("--fuse-transport") == "io_uring" and mounting.io_uring_supported():
        return "FUSE transport: io_uring queues (fuse.enable_uring=Y for this run)"
    return "FUSE transport: /dev/fuse"


@pytest.fixture(scope="session", autouse=True)
def _fuse_transport(pytestconfig: pytest.Config) -> Iterator[None]:
    with mounting.fuse_io_uring(pytestconfig.getoption("--fuse-transport") == "io_uring"):
        yield


@pytest.fixture(autouse=True)
def _require_root(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.skip("needs root")
