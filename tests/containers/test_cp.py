# ruff: noqa: F811 - pytest fixtures imported from runtime_helpers are used as parameters
"""`lamina cp`: docker cp's rules, tried on a directory standing in for a container's root
(the resolution is the same openat2 call), then on running and stopped containers."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from containers.cli import UserError
from containers.copying import container_side, copy, host_side, parse_reference
from tests.containers.runtime_helpers import (  # noqa: F401 - fixtures
    Lamina,
    busybox_rootfs,
    lamina,
    mounts_under,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web:/etc/hosts", ("web", "/etc/hosts")),
        ("web:", ("web", "")),
        ("./a:b", (None, "./a:b")),  # a name holds no slash: a host path
        ("/tmp/x", (None, "/tmp/x")),
    ],
)
def test_a_reference_is_a_container_path_or_a_host_path(
    text: str, expected: tuple[str | None, str]
) -> None:
    assert parse_reference(text) == expected


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a directory standing for a container's root, a host directory)."""
    inside, host = tmp_path / "inside", tmp_path / "host"
    (inside / "data" / "sub").mkdir(parents=True)
    (inside / "data" / "a").write_text("one\n")
    (inside / "data" / "sub" / "b").write_text("two\n")
    os.chmod(inside / "data" / "a", 0o640)
    (inside / "data" / "link").symlink_to("/etc/passwd")
    (inside / "evil").symlink_to("/")
    (inside / "etc").mkdir()
    (inside / "etc" / "passwd").write_text("inside-passwd\n")
    host.mkdir()
    (host / "in.txt").write_text("from the host\n")
    yield inside, host


def out(inside: Path, src: str, dst: Path | str) -> None:
    root = os.open(inside, os.O_PATH | os.O_DIRECTORY)
    try:
        copy(container_side(root, "box"), src, host_side(), str(dst))
    finally:
        os.close(root)


def into(inside: Path, src: Path, dst: str) -> None:
    root = os.open(inside, os.O_PATH | os.O_DIRECTORY)
    try:
        copy(host_side(), str(src), container_side(root, "box"), dst)
    finally:
        os.close(root)


def tree(top: Path) -> dict[str, str]:
    found = {}
    for path in sorted(top.rglob("*")):
        rel = str(path.relative_to(top))
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = path.read_text()
    return found


def test_a_directory_to_a_new_path_into_a_directory_and_its_contents(
    fake: tuple[Path, Path],
) -> None:
    inside, host = fake
    out(inside, "/data", host / "new")
    expected = {"a": "one\n", "link": "-> /etc/passwd", "sub": "dir", "sub/b": "two\n"}
    assert tree(host / "new") == expected
    out(inside, "/data", host / "new")  # an existing directory: into it, by its name
    assert tree(host / "new" / "data") == expected
    (host / "flat").mkdir()
    out(inside, "/data/.", host / "flat")  # `/.`: the contents
    assert tree(host / "flat") == expected
    assert stat.S_IMODE(os.stat(host / "new" / "a").st_mode) == 0o640


def test_a_file_to_a_new_name_into_a_directory_and_over_a_file(
    fake: tuple[Path, Path],
) -> None:
    inside, host = fake
    out(inside, "data/a", host / "renamed")
    out(inside, "/data/a", host)
    (host / "over").write_text("old\n")
    out(inside, "/data/sub/b", host / "over")
    assert [(host / n).read_text() for n in ("renamed", "a", "over")] == ["one\n", "one\n", "two\n"]


def test_paths_inside_never_lead_out(fake: tuple[Path, Path]) -> None:
    inside, host = fake
    out(inside, "/evil/etc/passwd", host / "via-symlink")  # / is the container's /
    out(inside, "/../../../etc/passwd", host / "via-dots")
    assert (
        (host / "via-symlink").read_text() == (host / "via-dots").read_text() == "inside-passwd\n"
    )
    into(inside, host / "in.txt", "/evil/data/")  # written where the container sees it
    assert (inside / "data" / "in.txt").read_text() == "from the host\n"
    out(inside, "/data/link", host / "kept")  # a symlink is copied, not followed
    assert os.readlink(host / "kept") == "/etc/passwd"


def test_what_docker_refuses_is_one_line(fake: tuple[Path, Path]) -> None:
    inside, host = fake
    (host / "file").write_text("x")
    with pytest.raises(UserError, match="cannot copy a directory onto the file"):
        out(inside, "/data", host / "file")
    with pytest.raises(UserError, match="box:/nope: No such file or directory"):
        out(inside, "/nope", host / "x")
    with pytest.raises(UserError, match=r"^cp: "):  # failing half way: one line too
        out(inside, "/data", "/proc/sys/lamina-cannot-be-made")
    with pytest.raises(UserError, match="no such directory"):
        out(inside, "/data/a", f"{host}/missing/")  # a directory that is not there


@pytest.mark.root
def test_device_nodes_are_left_out_and_fifos_copied(
    fake: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    inside, host = fake
    os.mknod(inside / "data" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(inside / "data" / "fifo")
    out(inside, "/data", host / "copy")
    assert not (host / "copy" / "null").exists()
    assert stat.S_ISFIFO(os.lstat(host / "copy" / "fifo").st_mode)
    assert "null: a device node, left out" in capsys.readouterr().err


@pytest.mark.root
def test_cp_with_a_running_and_a_stopped_container(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    lamina.ok("run", "-d", "--name", "box", "--layer", str(busybox_rootfs), "--", "sh", "-c",
              "echo made > /made; ln -s / /evil; exec sleep 600")  # fmt: skip
    lamina.ok("cp", "box:/evil/made", str(tmp_path / "made"))
    assert (tmp_path / "made").read_text() == "made\n"
    (tmp_path / "in").write_text("in\n")
    lamina.ok("cp", str(tmp_path / "in"), "box:/tmp/")
    assert lamina.ok("exec", "box", "cat", "/tmp/in") == "in\n"
    lamina.ok("stop", "-t", "0", "box")
    lamina.ok("cp", "box:/tmp/in", str(tmp_path / "back"))  # from the stopped one's tree
    lamina.ok("cp", str(tmp_path / "in"), "box:/later")
    assert (tmp_path / "back").read_text() == "in\n"
    assert mounts_under(lamina.root) == []  # mounted for the copy only
    assert "A /later" in lamina.ok("diff", "box").splitlines()
    refused = lamina("cp", str(tmp_path / "in"), str(tmp_path / "in2"))
    assert refused.returncode == 125 and "between a container and the host" in refused.stderr


@pytest.mark.root
def test_what_is_copied_into_a_userns_container_belongs_to_its_root(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """Regression: copied in as the host's root (uid 0, outside the container's range), it
    showed as nobody:nogroup inside."""
    lamina.ok("run", "-d", "--userns", "--name", "box", "--layer", str(busybox_rootfs),
              "--", "sleep", "600")  # fmt: skip
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "file").write_text("x")
    (tmp_path / "tree" / "link").symlink_to("file")
    lamina.ok("cp", str(tmp_path / "tree"), "box:/in")
    owners = lamina.ok(
        "exec", "box", "stat", "-c", "%u:%g", "/in", "/in/sub", "/in/file", "/in/link"
    )
    assert owners.split() == ["0:0"] * 4


@pytest.mark.root
def test_a_stopped_containers_interrupted_copy_up_is_finished_not_wiped(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """A copy-up its daemon's crash interrupted after an fsync waits in the workdir's
    `work`, which the kernel's mount empties: cp finishes it first, as the union's next
    mount would, and copying out mounts nothing writable at all."""
    from containers.state import find_container
    from unionfs.deferred import CHUNK, PendingCopy

    lamina.ok("run", "--name", "box", "--layer", str(busybox_rootfs), "--", "true")
    record = find_container(lamina.root, "box")
    lower = busybox_rootfs / "bin" / "busybox"  # a file of the image, not yet copied up
    work = Path(record.work_dir) / "work"
    work.mkdir(exist_ok=True)
    size = lower.stat().st_size
    temp = work / "#1"
    with open(temp, "wb") as f:
        f.truncate(size)
    pending = PendingCopy(bytes(temp), bytes(lower), size, os.lstat(lower))
    pending.prepare(CHUNK, 3)
    os.pwrite(pending.fd, b"new", CHUNK)
    pending.wrote()
    (Path(record.upper_dir) / "bin").mkdir()  # its parent, copied up before it
    pending.persist(b"bin/busybox")  # fsynced: what the user's fsync promised
    os.close(pending.fd)  # the daemon dies here
    os.close(pending.lower_fd)
    (work / "marker").write_text("left alone by a copy out\n")
    lamina.ok("cp", "box:/bin/busybox", str(tmp_path / "out"))
    expected = bytearray(lower.read_bytes())
    expected[CHUNK : CHUNK + 3] = b"new"
    assert (tmp_path / "out").read_bytes() == bytes(expected)
    assert (work / "marker").exists()  # nothing was mounted writable
    assert (Path(record.upper_dir) / "bin" / "busybox").read_bytes() == bytes(expected)
