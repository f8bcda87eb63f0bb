"""The `union` fixture: one contract, two implementations (the kernel overlayfs and ours).

A test fills the lower (and maybe upper) dirs, calls `union.mount()`, works in the merged
view and checks the upper dir on disk. After every test, like s3ql's fsck, the fixture
unmounts and checks the invariants that hold whatever the test did: the lower layers are
byte-for-byte unchanged and the workdir holds no leftovers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests import mounting
from tests.unionfs.posix_helpers import leftovers, tree_snapshot

# The kernel's module defaults vary; these make it the reference the issue describes:
# directories with lower parts rename via trusted.overlay.redirect, no index, no metacopy.
KERNEL_OPTIONS = ("redirect_dir=on", "index=off", "xino=off", "metacopy=off")
IMPLEMENTATIONS = ("kernel", "unionfs")


class Union:
    """One union under test: its layer dirs, its mountpoint, and mount/remount helpers."""

    def __init__(self, impl: str, base: Path, n_lowers: int = 2) -> None:
        self.impl = impl
        self.base = base
        self.layers = mounting.make_layers(base, n_lowers)
        self.mnt = base / "mnt"
        self.mnt.mkdir()
        self._stack = contextlib.ExitStack()
        self._lower_snapshots: list[dict[bytes, tuple[object, ...]]] | None = None

    @property
    def lowers(self) -> tuple[Path, ...]:
        return self.layers.lowers

    @property
    def lower(self) -> Path:
        """The topmost lower layer."""
        return self.layers.lowers[0]

    @property
    def upper(self) -> Path:
        return self.layers.upper_dir

    @property
    def work(self) -> Path:
        return self.layers.work_dir

    @property
    def is_kernel(self) -> bool:
        return self.impl == "kernel"

    def mount(self, extra: Sequence[str] = (), *, lowers_only: bool = False) -> Path:
        """Mount the layers as they are now (lowers_only: no upper, a read-only union).

        The first mount snapshots the lowers for the after-test check.
        """
        if self._lower_snapshots is None:
            self._lower_snapshots = [tree_snapshot(d) for d in self.lowers]
        layers = mounting.Layers(self.lowers, None, None) if lowers_only else self.layers
        if self.is_kernel:
            options = [*KERNEL_OPTIONS, *extra]
            if "userxattr" in extra:  # the kernel refuses redirect_dir=on with userxattr
                options.remove("redirect_dir=on")
            cm = mounting.kernel_overlay(layers, self.mnt, options)
        else:
            cm = mounting.unionfs(layers, self.mnt, extra)
        self._stack.enter_context(cm)
        return self.mnt

    def unmount(self) -> None:
        self._stack.close()

    def remount(self) -> Path:
        """Unmount and mount again: what was written must come back from the upper dir."""
        self.unmount()
        return self.mount()

    def check_invariants(self) -> None:
        if self._lower_snapshots is not None:
            for lower, before in zip(self.lowers, self._lower_snapshots, strict=True):
                assert tree_snapshot(lower) == before, f"{lower} was changed"
        assert leftovers(self.work) == [], "workdir holds leftovers"


@pytest.fixture
def union_base() -> Iterator[Path]:
    """A scratch dir every user can traverse (pytest's tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="lamina-posix-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        if not mounting.is_mountpoint(base / "mnt"):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=IMPLEMENTATIONS)
def union(request: pytest.FixtureRequest, union_base: Path) -> Iterator[Union]:
    u = Union(request.param, union_base)
    try:
        yield u
    finally:
        u.unmount()
    u.check_invariants()
