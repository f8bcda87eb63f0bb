"""Shared fixtures. The suite runs as root on Linux with /dev/fuse and the kernel overlayfs."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "root: needs root, /dev/fuse and the kernel overlayfs")


@pytest.fixture(autouse=True)
def _require_root(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.skip("needs root")
