"""Fixtures for the real-container tests: a busybox rootfs, a private state root and cgroup
parent per test, a `lamina` runner, and a check that nothing leaked after each test.

The union mount program is the default (our unionfs) unless $LAMINA_MOUNT_PROGRAM is set,
e.g. to /usr/bin/fuse-overlayfs while our own is being written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from containers.cgroups.detect import detect_layout
from containers.sample import build_busybox_rootfs
from containers.trees import GONE_PREFIX


def build_static(source: str, program: Path, what: str) -> None:
    """Compile C source into a static program (busybox lacks what a test needs inside a
    container); skip the test where no compiler can."""
    import shutil

    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip(f"needs a C compiler to build {what}")
    source_file = program.parent.parent / f"{program.name}.c"
    source_file.write_text(source)
    built = subprocess.run(
        [compiler, "-static", "-O", "-o", str(program), str(source_file)],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build {what}: {built.stderr.strip()[-200:]}")


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Lamina:
    """Runs `lamina --root <tmp>` with this test's cgroup parent."""

    root: Path
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "containers", "--root", str(self.root), *args]

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )

    def container_ids(self) -> list[str]:
        """Every entry of the store's containers dir, hidden ones too, once the removals
        `run --rm` leaves to a child of its own are done (a few ms; 10 s at most)."""
        directory = self.root / "containers"
        if not directory.exists():
            return []
        with contextlib.suppress(AssertionError):
            wait_for(
                lambda: not any(p.name.startswith(GONE_PREFIX) for p in directory.iterdir()),
                timeout=10.0,
            )
        return sorted(p.name for p in directory.iterdir())

    def status_of(self, ref: str) -> str:
        out = self.ok("ps", "-a")
        for line in out.splitlines()[1:]:
            if line.split()[-1] == ref or line.startswith(ref[:12]):
                return line
        return ""


def cgroup_parent_dirs(parent: str) -> list[Path]:
    layout = detect_layout()
    roots = set(layout.v1.values()) | ({layout.v2} if layout.v2 else set())
    return [Path(root) / parent for root in sorted(roots) if (Path(root) / parent).exists()]


def mounts_under(path: str | Path) -> list[str]:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return [line for line in f if str(path) in line]


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_rootfs(tmp_path_factory.mktemp("image") / "rootfs")


@pytest.fixture
def lamina(tmp_path: Path, pytestconfig: pytest.Config) -> Iterator[Lamina]:
    """A private state root and cgroup parent; afterwards: no container, mount or cgroup left.
    With --lamina-server, a `lamina server` serves that root (stopped after, and gone)."""
    parent = f"lamina-test-{os.getpid()}-{tmp_path.name}"[:60]
    env = dict(os.environ, LAMINA_CGROUP_PARENT=parent)
    runner = Lamina(root=tmp_path / "state", env=env)
    server = start_server(runner) if pytestconfig.getoption("--lamina-server") else None
    try:
        yield runner
    finally:
        if server is not None:
            stop_server(runner, server)
        leftovers = runner.container_ids()
        for cid in leftovers:
            runner("rm", "-f", cid)
        leaked_mounts = mounts_under(runner.root)
        leaked_cgroups = [
            child for d in cgroup_parent_dirs(parent) for child in d.iterdir() if child.is_dir()
        ]
        _force_clean(runner.root, parent)
        assert not leaked_mounts, f"mounts leaked: {leaked_mounts}"
        assert not leaked_cgroups, f"cgroups leaked: {leaked_cgroups}"


def start_server(lamina: Lamina) -> int:
    """Start a `lamina server` for lamina's root; its pid."""
    from containers import fork_server

    started = lamina("server", "start")
    assert started.returncode == 0, started.stderr
    pid = fork_server.running_pid(str(lamina.root))
    assert pid is not None
    return pid


def stop_server(lamina: Lamina, pid: int) -> None:
    """Stop it; it must be gone (no fork of it may hold its lock), its socket too."""
    from containers import fork_server

    stopped = lamina("server", "stop")
    if fork_server.running_pid(str(lamina.root)) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"the server did not stop: {stopped.stdout}")
    from tests.containers.reliability_helpers import is_running  # it imports this module

    wait_for(lambda: not is_running(pid), 10, "the server to end")
    assert not (lamina.root / "server.sock").exists()


def _force_clean(root: Path, parent: str) -> None:
    """Last resort after a failed test: kill, unmount and remove whatever is left."""
    for line in mounts_under(root):
        subprocess.run(["umount", "-l", line.split()[1]], check=False, capture_output=True)
    for directory in cgroup_parent_dirs(parent):
        for child in sorted(directory.rglob("*"), reverse=True):
            if child.is_dir():
                procs = child / "cgroup.procs"
                for pid in procs.read_text().split() if procs.exists() else []:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        for child in sorted(directory.rglob("*"), reverse=True):
            if child.is_dir():
                wait_for(lambda c=child: rmdir_if_empty(c), 10, f"rmdir {child}")  # type: ignore[misc]
        rmdir_if_empty(directory)


def rmdir_if_empty(directory: Path) -> bool:
    """Remove directory if it is empty (True), or say it is not yet (False)."""
    try:
        directory.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
