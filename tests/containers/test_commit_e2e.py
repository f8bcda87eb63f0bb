"""The whole loop through the real `lamina` command: import -> run -> diff -> commit -> run."""

# ruff: noqa: F811 - pytest fixtures imported from runtime_helpers are used as parameters

from __future__ import annotations

from pathlib import Path

import pytest

from containers.sample import build_busybox_rootfs
from tests.containers.runtime_helpers import Lamina, lamina  # noqa: F401 - fixture

pytestmark = pytest.mark.root


def test_run_change_diff_commit_run_sees_the_change(lamina: Lamina, tmp_path: Path) -> None:
    # The shared fixture gives a private state root and cgroup parent, and fails the test if
    # a container, mount or cgroup is left behind.
    lamina.ok("import", "-q", str(build_busybox_rootfs(tmp_path / "bb")), "busybox")
    script = "echo hi > /root/note && rm /etc/group && mkdir -p /srv/x"
    lamina.ok("run", "--name", "c1", "busybox", "sh", "-c", script)
    diff = lamina.ok("diff", "c1").splitlines()
    assert diff == ["C /etc", "D /etc/group", "C /root", "A /root/note", "A /srv", "A /srv/x"]
    refused = lamina("rmi", "busybox")
    assert refused.returncode != 0 and "c1" in refused.stderr
    lamina.ok("commit", "-c", "CMD cat /root/note", "c1", "busybox:noted")
    assert lamina.ok("run", "--rm", "busybox:noted") == "hi\n"
    gone = lamina("run", "--rm", "busybox:noted", "ls", "/etc/group")
    assert gone.returncode != 0
    lamina.ok("rm", "-f", "c1")
