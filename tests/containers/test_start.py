# ruff: noqa: F811 - pytest fixtures imported from runtime_helpers are used as parameters
"""`lamina start` and `restart`: an exited container runs again on its own files, as with
docker; a start that fails leaves it exited and nothing else behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

from containers import lean_json
from containers.cgroups.resources import Resources
from containers.namespaces import IdMap
from containers.spec import (
    BindVolume,
    ContainerSpec,
    PortMapping,
    TmpfsVolume,
    spec_from_json,
    spec_to_json,
)
from tests.containers.runtime_helpers import (  # noqa: F401 - fixtures
    Lamina,
    busybox_rootfs,
    cgroup_parent_dirs,
    lamina,
    mounts_under,
    wait_for,
)

APPEND = "echo ran >> /runs; cat /runs | wc -l; exit 3"


def inspect(lamina: Lamina, name: str) -> dict[str, object]:
    (shown,) = json.loads(lamina.ok("inspect", name))
    assert isinstance(shown, dict)
    return shown


def state_of(lamina: Lamina, name: str) -> dict[str, object]:
    state = inspect(lamina, name)["State"]
    assert isinstance(state, dict)
    return state


def test_a_spec_survives_its_json() -> None:
    spec = ContainerSpec(
        id="f" * 64,
        name="web",
        command=("sh", "-c", "true"),
        layers=("/l/1", "/l/2"),
        env=("A=1",),
        volumes=(BindVolume("/h", "/c", readonly=True), TmpfsVolume("/t", "size=1m")),
        extra_hosts=(("db", "10.0.0.2"),),
        dns=("10.0.0.1",),
        resources=Resources(memory=1 << 26, pids_limit=10),
        userns=IdMap(100000, 100000, 65536),
        seccomp=False,
        ports=(PortMapping(8080, 80), PortMapping(8443, 443, "127.0.0.1")),
    )
    assert spec_from_json(lean_json.loads(lean_json.dumps(spec_to_json(spec)))) == spec


def test_start_runs_an_exited_container_again_on_its_own_files(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    first = lamina("run", "--name", "box", "--layer", str(busybox_rootfs),
                   "--", "sh", "-c", APPEND)  # fmt: skip
    assert (first.returncode, first.stdout.strip()) == (3, "1")
    again = lamina("start", "-a", "box")
    assert (again.returncode, again.stdout.strip()) == (3, "2")
    assert lamina.ok("start", "box").strip() == "box"  # detached, as docker's
    wait_for(lambda: state_of(lamina, "box")["Status"] == "exited", what="the third run")
    assert lamina.ok("logs", "box").split() == ["3"]  # only detached runs log
    assert state_of(lamina, "box")["ExitCode"] == 3
    assert len(lamina.container_ids()) == 1


def test_restart_stops_and_starts_a_running_container(lamina: Lamina, busybox_rootfs: Path) -> None:
    lamina.ok("run", "-d", "--name", "web", "--layer", str(busybox_rootfs),
              "--", "sh", "-c", "echo up >> /ups; exec sleep 600")  # fmt: skip
    before = state_of(lamina, "web")["Pid"]
    assert lamina.ok("restart", "-t", "1", "web").strip() == "web"
    after = state_of(lamina, "web")
    assert after["Status"] == "running" and after["Pid"] not in (0, before)
    assert lamina.ok("exec", "web", "cat", "/ups").split() == ["up", "up"]


def test_a_running_container_is_left_running(lamina: Lamina, busybox_rootfs: Path) -> None:
    lamina.ok("run", "-d", "--name", "web", "--layer", str(busybox_rootfs),
              "--", "sleep", "600")  # fmt: skip
    pid = state_of(lamina, "web")["Pid"]
    assert lamina.ok("start", "web").strip() == "web"
    assert state_of(lamina, "web")["Pid"] == pid
    attached = lamina("start", "-a", "web")
    assert attached.returncode == 125
    assert (
        attached.stderr == "lamina: error: container web is running: lamina cannot attach to it\n"
    )


def test_a_start_that_fails_leaves_the_container_exited_and_nothing_else(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    lamina.ok("run", "--name", "box", "-v", f"{volume}:/data", "--layer", str(busybox_rootfs),
              "--", "true")  # fmt: skip
    volume.rmdir()  # the bind source is gone: the start cannot mount it
    failed = lamina("start", "-a", "box")
    assert failed.returncode == 125
    assert failed.stderr.count("\n") == 1 and str(volume) in failed.stderr
    assert state_of(lamina, "box")["Status"] == "exited"
    assert mounts_under(lamina.root) == []
    assert not any(
        child.is_dir()
        for d in cgroup_parent_dirs(lamina.env["LAMINA_CGROUP_PARENT"])
        for child in d.iterdir()
    )
    volume.mkdir()
    assert lamina("start", "-a", "box").returncode == 0  # and it starts once it can


def test_a_container_made_before_start_existed_says_so(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    lamina.ok("run", "--name", "old", "--layer", str(busybox_rootfs), "--", "true")
    (cid,) = lamina.container_ids()
    os.unlink(lamina.root / "containers" / cid / "spec.json")
    result = lamina("start", "old")
    assert result.returncode == 1
    assert result.stderr == (
        "lamina: error: container old was created by an older lamina: it cannot be started again\n"
    )


def test_restarting_a_rm_container_ends_with_it_gone(lamina: Lamina, busybox_rootfs: Path) -> None:
    lamina.ok("run", "-d", "--rm", "--name", "tmp", "--layer", str(busybox_rootfs),
              "--", "sleep", "600")  # fmt: skip
    result = lamina("restart", "-t", "0", "tmp")
    assert result.returncode == 1
    assert result.stderr == "lamina: error: no such container: tmp\n"
    assert lamina.container_ids() == []
