"""Hard links, symlinks, fifos, unix sockets and device nodes in the merged view."""

from __future__ import annotations

import errno
import os
import socket
import stat

import pytest

from tests.unionfs.conftest import Union
from tests.unionfs.posix_helpers import errno_of, names, write

pytestmark = pytest.mark.root


def test_a_hard_link_shares_the_inode_and_counts_both_names(union: Union) -> None:
    mnt = union.mount()
    write(mnt / "a", b"data")
    os.link(mnt / "a", mnt / "b")
    a, b = os.lstat(mnt / "a"), os.lstat(mnt / "b")
    assert a.st_ino == b.st_ino
    assert (a.st_nlink, b.st_nlink) == (2, 2)
    os.unlink(mnt / "a")
    assert os.lstat(mnt / "b").st_nlink == 1


def test_a_link_to_a_lower_file_counts_both_names_and_shares_writes(union: Union) -> None:
    write(union.lower / "a", b"old")
    mnt = union.mount()
    os.link(mnt / "a", mnt / "b")
    assert os.lstat(mnt / "a").st_nlink == 2
    assert os.lstat(mnt / "b").st_ino == os.lstat(mnt / "a").st_ino
    with open(mnt / "b", "ab") as f:
        f.write(b"+new")
    assert (mnt / "a").read_bytes() == b"old+new"


def test_hard_links_survive_a_remount(union: Union) -> None:
    write(union.lower / "a", b"x")
    mnt = union.mount()
    os.link(mnt / "a", mnt / "b")
    mnt = union.remount()
    assert os.lstat(mnt / "a").st_ino == os.lstat(mnt / "b").st_ino
    assert os.lstat(mnt / "b").st_nlink == 2


def test_lower_hard_links_show_one_inode_on_the_kernel_and_two_on_ours(union: Union) -> None:
    """A documented difference (README, "Inode numbers"): a write through one name copies up
    that name alone in both implementations, so ours keeps the names apart from the start
    while the kernel shows the lower inode's number for both."""
    write(union.lower / "a", b"x")
    os.link(union.lower / "a", union.lower / "b")
    mnt = union.mount()
    same = os.lstat(mnt / "a").st_ino == os.lstat(mnt / "b").st_ino
    assert same == union.is_kernel


def test_linking_a_directory_fails_with_eperm(union: Union) -> None:
    (union.lower / "d").mkdir()
    mnt = union.mount()
    assert errno_of(lambda: os.link(mnt / "d", mnt / "e")) == errno.EPERM


def test_a_new_symlink_lands_in_the_upper_dir_with_its_target(union: Union) -> None:
    mnt = union.mount()
    os.symlink("some/where", mnt / "link")
    assert os.readlink(mnt / "link") == "some/where"
    assert stat.S_ISLNK(os.lstat(mnt / "link").st_mode)
    assert os.readlink(union.upper / "link") == "some/where"


def test_a_lower_symlink_resolves_through_the_merged_view(union: Union) -> None:
    write(union.lowers[1] / "target", b"bottom")
    os.symlink("target", union.lowers[0] / "link")
    mnt = union.mount()
    assert os.readlink(mnt / "link") == "target"
    assert (mnt / "link").read_bytes() == b"bottom"


def test_lchown_copies_up_a_lower_symlink_as_a_symlink(union: Union) -> None:
    os.symlink("/nowhere", union.lower / "link")
    mnt = union.mount()
    os.chown(mnt / "link", 1000, 1000, follow_symlinks=False)
    st = os.lstat(union.upper / "link")
    assert stat.S_ISLNK(st.st_mode)
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert os.readlink(union.upper / "link") == "/nowhere"


def test_a_new_fifo_carries_data(union: Union) -> None:
    mnt = union.mount()
    os.mkfifo(mnt / "fifo", 0o600)
    assert stat.S_ISFIFO(os.lstat(union.upper / "fifo").st_mode)
    reader = os.open(mnt / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        writer = os.open(mnt / "fifo", os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(writer, b"ping")
            assert os.read(reader, 10) == b"ping"
        finally:
            os.close(writer)
    finally:
        os.close(reader)


def test_chmod_copies_up_a_lower_fifo_as_a_fifo(union: Union) -> None:
    os.mkfifo(union.lower / "fifo", 0o600)
    mnt = union.mount()
    os.chmod(mnt / "fifo", 0o640)
    st = os.lstat(union.upper / "fifo")
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640


def test_a_unix_socket_bound_in_the_merged_view_accepts_connections(union: Union) -> None:
    mnt = union.mount()
    path = str(mnt / "sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert stat.S_ISSOCK(os.lstat(union.upper / "sock").st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            conn, _ = server.accept()
            with conn:
                client.sendall(b"hello")
                assert conn.recv(10) == b"hello"


def test_mknod_creates_a_device_node_with_its_numbers(union: Union) -> None:
    mnt = union.mount()
    os.mknod(mnt / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(mnt / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 200))
    for st in (os.lstat(mnt / "null"), os.lstat(union.upper / "null")):
        assert stat.S_ISCHR(st.st_mode)
        assert st.st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.lstat(mnt / "blk").st_mode)
    assert os.lstat(mnt / "blk").st_rdev == os.makedev(7, 200)


def test_a_lower_character_device_that_is_not_0_0_is_a_device_not_a_whiteout(
    union: Union,
) -> None:
    os.mknod(union.lower / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    mnt = union.mount()
    assert names(mnt) == [b"zero"]
    assert os.lstat(mnt / "zero").st_rdev == os.makedev(1, 5)


def test_creating_a_0_0_character_device_is_refused(union: Union) -> None:
    """A 0/0 device would read back as a whiteout, so the kernel refuses it with EPERM."""
    mnt = union.mount()

    def make_fake_whiteout() -> None:
        os.mknod(mnt / "w", stat.S_IFCHR | 0o600, os.makedev(0, 0))

    assert errno_of(make_fake_whiteout) == errno.EPERM
    assert names(union.upper) == []


def test_chown_copies_up_lower_sockets_and_devices_as_they_are(union: Union) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(union.lower / "sock"))
    os.mknod(union.lower / "tty", stat.S_IFCHR | 0o620, os.makedev(4, 1))
    os.chmod(union.lower / "tty", 0o620)  # past the umask
    mnt = union.mount()
    for name in ("sock", "tty"):
        os.chown(mnt / name, 1000, 5)
    sock, tty = os.lstat(union.upper / "sock"), os.lstat(union.upper / "tty")
    assert stat.S_ISSOCK(sock.st_mode)
    assert stat.S_ISCHR(tty.st_mode)
    assert (tty.st_rdev, stat.S_IMODE(tty.st_mode)) == (os.makedev(4, 1), 0o620)
    assert (tty.st_uid, tty.st_gid) == (1000, 5)


def test_a_symlink_target_of_4000_bytes_round_trips(union: Union) -> None:
    target = "/".join(["t" * 99] * 40)
    os.symlink(target, union.lower / "long-lower")
    mnt = union.mount()
    os.symlink(target, mnt / "long-new")
    assert os.readlink(mnt / "long-lower") == target
    assert os.readlink(mnt / "long-new") == target
    assert os.readlink(union.upper / "long-new") == target
