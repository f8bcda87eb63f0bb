# ruff: noqa: F811 - pytest fixtures imported from runtime_helpers are used as parameters
"""`lamina inspect`: docker's shape, --format, and union dirs a script can mount by hand."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from containers.cli import UserError
from containers.inspection import describe, render
from containers.state import EXITED, PAUSED, RUNNING, ContainerRecord
from tests.containers.runtime_helpers import (  # noqa: F401 - fixtures
    Lamina,
    busybox_rootfs,
    lamina,
)


def record(**changes: object) -> ContainerRecord:
    values: dict[str, object] = {
        "id": "ab" * 32,
        "name": "web",
        "dir": "/store/containers/" + "ab" * 32,
        "layers": ["/store/layers/1/diff", "/store/layers/2/diff"],
        "command": ["sh", "-c", "true"],
        "pid": 42,
        "created_at": 1.5,
    }
    values.update(changes)
    return ContainerRecord(**values)  # type: ignore[arg-type]


def test_a_running_container_shows_its_pid_and_union_dirs() -> None:
    shown = describe(record(), RUNNING, "/store")
    assert shown["Name"] == "/web"
    assert shown["Path"] == "sh" and shown["Args"] == ["-c", "true"]
    assert shown["Created"] == "1970-01-01T00:00:01.500000000Z"
    assert shown["State"] == {
        "Status": "running",
        "Running": True,
        "Paused": False,
        "Pid": 42,
        "ExitCode": 0,
        "OOMKilled": False,
        "FinishedAt": "0001-01-01T00:00:00Z",
    }
    assert shown["GraphDriver"] == {
        "Name": "unionfs",
        "Data": {
            "LowerDir": "/store/init-layer:/store/layers/1/diff:/store/layers/2/diff",
            "UpperDir": "/store/containers/" + "ab" * 32 + "/upper",
            "WorkDir": "/store/containers/" + "ab" * 32 + "/work",
            "MergedDir": "/store/containers/" + "ab" * 32 + "/rootfs",
        },
    }


def test_an_exited_container_has_no_pid_and_keeps_its_exit_code() -> None:
    shown = describe(record(exit_code=3, finished_at=2.0, seccomp=False), EXITED, "/store")
    state = shown["State"]
    assert isinstance(state, dict)
    assert (state["Pid"], state["ExitCode"], state["Running"]) == (0, 3, False)
    assert state["FinishedAt"] == "1970-01-01T00:00:02.000000000Z"
    host = shown["HostConfig"]
    assert isinstance(host, dict) and host["SecurityOpt"] == ["seccomp=unconfined"]


def test_a_paused_container_is_running_and_paused_as_docker_says() -> None:
    state = describe(record(), PAUSED, "/store")["State"]
    assert isinstance(state, dict)
    assert (state["Status"], state["Running"], state["Paused"], state["Pid"]) == (
        "paused",
        True,
        True,
        42,
    )


def test_a_rootfs_container_has_no_union() -> None:
    shown = describe(record(layers=[], rootfs_dir="/srv/root"), EXITED, "/store")
    assert shown["GraphDriver"] == {"Name": "bind", "Data": {"RootfsDir": "/srv/root"}}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{.State.Pid}}", "42"),
        ("{{ .Name }} {{.State.Running}}", "/web true"),
        ("{{json .Args}}", '["-c", "true"]'),
        ("{{.Args}}", '["-c", "true"]'),
        ("pid={{.State.Pid}};", "pid=42;"),
    ],
)
def test_format_reads_fields_as_docker_prints_them(template: str, expected: str) -> None:
    assert render(template, describe(record(), RUNNING, "/store")) == expected


@pytest.mark.parametrize("template", ["{{.State.Nope}}", "{{range .Args}}x{{end}}"])
def test_a_template_lamina_cannot_read_is_an_error(template: str) -> None:
    with pytest.raises(UserError, match="template"):
        render(template, describe(record(), RUNNING, "/store"))


@pytest.mark.root
def test_inspect_names_the_process_and_dirs_the_kernel_overlayfs_mounts(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    lamina.ok("run", "-d", "--name", "box", "--layer", str(busybox_rootfs), "--",
              "sh", "-c", "echo made > /made; exec sleep 600")  # fmt: skip
    pid = lamina.ok("inspect", "-f", "{{.State.Pid}}", "box").strip()
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\0" + b"600\0"
    lamina.ok("stop", "-t", "0", "box")
    (shown,) = json.loads(lamina.ok("inspect", "box"))
    assert shown["State"]["Status"] == "exited" and shown["State"]["Pid"] == 0
    dirs = shown["GraphDriver"]["Data"]
    merged = tmp_path / "merged"
    merged.mkdir()
    options = f"lowerdir={dirs['LowerDir']},upperdir={dirs['UpperDir']},workdir={dirs['WorkDir']}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
    try:
        assert (merged / "made").read_text() == "made\n"
        assert (merged / "bin" / "busybox").exists()
    finally:
        subprocess.run(["umount", str(merged)], check=True)


@pytest.mark.root
def test_inspecting_an_unknown_container_is_one_line(lamina: Lamina) -> None:
    result = lamina("inspect", "nope")
    assert result.returncode == 125
    assert result.stderr == "lamina: error: no such container: nope\n"
