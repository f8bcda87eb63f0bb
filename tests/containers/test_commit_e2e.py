"""The whole loop through the real `lamina` command: import -> run -> diff -> commit -> run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from containers.sample import build_busybox_rootfs

pytestmark = pytest.mark.root
LAMINA = Path(sys.executable).parent / "lamina"


def _lamina(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LAMINA), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "root"
    _lamina(root, "import", "-q", str(build_busybox_rootfs(tmp_path / "bb")), "busybox")
    try:
        yield root
    finally:
        _lamina(root, "rm", "-f", "c1", check=False)


def test_run_change_diff_commit_run_sees_the_change(root: Path) -> None:
    script = "echo hi > /root/note && rm /etc/hostname && mkdir -p /srv/x"
    _lamina(root, "run", "--name", "c1", "busybox", "sh", "-c", script)
    diff = _lamina(root, "diff", "c1").stdout.splitlines()
    assert diff == ["C /etc", "D /etc/hostname", "C /root", "A /root/note", "A /srv", "A /srv/x"]
    refused = _lamina(root, "rmi", "busybox", check=False)
    assert refused.returncode != 0 and "c1" in refused.stderr
    _lamina(root, "commit", "-c", "CMD cat /root/note", "c1", "busybox:noted")
    out = _lamina(root, "run", "--rm", "busybox:noted").stdout
    assert out == "hi\n"
    gone = _lamina(root, "run", "--rm", "busybox:noted", "ls", "/etc/hostname", check=False)
    assert gone.returncode != 0
