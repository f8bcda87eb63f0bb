"""Inode numbers: stable across copy-up and rename for the life of the mount, one per file,
shared by hard links; open files outlive their names."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.unionfs.conftest import Union
from tests.unionfs.posix_helpers import write

pytestmark = pytest.mark.root


def test_a_file_keeps_its_inode_number_across_copy_up(union: Union) -> None:
    """The kernel keeps the lower st_ino when all layers share one filesystem (its origin logic)."""
    write(union.lower / "d" / "f", b"x")
    mnt = union.mount()
    before = os.lstat(mnt / "d" / "f").st_ino
    with open(mnt / "d" / "f", "ab") as f:
        f.write(b"y")
    assert os.lstat(mnt / "d" / "f").st_ino == before


def test_a_directory_keeps_its_inode_number_across_copy_up(union: Union) -> None:
    write(union.lower / "d" / "f")
    mnt = union.mount()
    before = os.lstat(mnt / "d").st_ino
    os.chmod(mnt / "d", 0o700)
    assert os.lstat(mnt / "d").st_ino == before


def test_a_lower_file_keeps_its_inode_number_when_renamed(union: Union) -> None:
    write(union.lower / "a", b"x")
    mnt = union.mount()
    before = os.lstat(mnt / "a").st_ino
    os.rename(mnt / "a", mnt / "b")
    assert os.lstat(mnt / "b").st_ino == before


def test_an_open_descriptor_sees_the_same_inode_as_a_path_lookup(union: Union) -> None:
    write(union.lower / "f", b"x")
    mnt = union.mount()
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        os.write(fd, b"y")
        assert os.fstat(fd).st_ino == os.lstat(mnt / "f").st_ino
    finally:
        os.close(fd)


def test_files_from_different_layers_have_different_inode_numbers(union: Union) -> None:
    write(union.lowers[1] / "bottom")
    write(union.lowers[0] / "middle")
    write(union.upper / "top")
    (union.lowers[1] / "dir").mkdir()
    mnt = union.mount()
    inodes = {os.lstat(mnt / n).st_ino for n in ("bottom", "middle", "top", "dir", ".")}
    assert len(inodes) == 5


def test_every_entry_reports_the_mounts_device(union: Union) -> None:
    write(union.lowers[1] / "bottom")
    write(union.upper / "top")
    (union.lowers[0] / "dir").mkdir()
    mnt = union.mount()
    devices = {os.lstat(mnt / n).st_dev for n in ("bottom", "top", "dir", ".")}
    assert devices == {os.lstat(mnt).st_dev}


def test_an_unlinked_upper_file_stays_usable_through_an_open_descriptor(union: Union) -> None:
    mnt = union.mount()
    write(mnt / "f", b"abc")
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        os.unlink(mnt / "f")
        os.pwrite(fd, b"Z", 1)
        assert os.pread(fd, 3, 0) == b"aZc"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert not os.path.lexists(mnt / "f")


def test_an_unlinked_lower_file_stays_readable_through_an_open_descriptor(
    union: Union,
) -> None:
    write(union.lower / "f", b"lower data")
    mnt = union.mount()
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        os.unlink(mnt / "f")
        assert os.pread(fd, 100, 0) == b"lower data"
    finally:
        os.close(fd)


def test_an_unlinked_open_file_keeps_its_own_xattrs(union: Union) -> None:
    """Through its descriptor, a file with no name left reads and writes its own xattrs
    (ours once answered with, and wrote to, the upper root's: an empty chain of names)."""
    mnt = union.mount()
    os.setxattr(mnt, "user.root", b"R")
    fd = os.open(mnt / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.setxattr(fd, "user.file", b"F")
        os.unlink(mnt / "f")
        assert os.getxattr(fd, "user.file") == b"F"
        os.setxattr(fd, "user.late", b"L")
        assert sorted(os.listxattr(fd)) == ["user.file", "user.late"]
        os.removexattr(fd, "user.late")
        assert os.listxattr(fd) == ["user.file"]
    finally:
        os.close(fd)
    assert os.listxattr(mnt) == ["user.root"]
    union.unmount()
    assert [n for n in os.listxattr(union.upper) if n.startswith("user.")] == ["user.root"]


def test_an_unlinked_open_file_opens_again_through_proc(union: Union) -> None:
    """open("/proc/self/fd/N") of a file with no name left: a new open file of that inode."""
    mnt = union.mount()
    fd = os.open(mnt / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"data")
        os.unlink(mnt / "f")
        writer = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)
        try:
            os.pwrite(writer, b"X", 0)
        finally:
            os.close(writer)
        reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
        try:
            assert os.pread(reader, 10, 0) == b"Xata"
        finally:
            os.close(reader)
    finally:
        os.close(fd)


def _removed_dirs(union: Union) -> dict[str, int]:
    """A lower dir, a merged one and an upper one, each opened and then removed: name -> fd."""
    (union.lower / "lower").mkdir()
    (union.lower / "merged").mkdir()
    (union.upper / "merged").mkdir()
    mnt = union.mount()
    (mnt / "upper").mkdir()
    os.setxattr(mnt / "upper", "user.dir", b"D")
    fds = {}
    for name in ("lower", "merged", "upper"):
        fds[name] = os.open(mnt / name, os.O_RDONLY | os.O_DIRECTORY)
        os.rmdir(mnt / name)
    return fds


def test_a_removed_directory_still_open_answers_fstat_and_lists_empty(union: Union) -> None:
    """fstat of a directory removed while open works, as on any filesystem: the upper one
    with no link left, the merged one with the 1 of every merged dir, the lower one as the
    layer still has it."""
    fds = _removed_dirs(union)
    try:
        links = {}
        for name, fd in fds.items():
            st = os.fstat(fd)
            assert stat.S_ISDIR(st.st_mode), name
            links[name] = st.st_nlink
            assert os.listdir(fd) == [], name
            os.fsync(fd)  # nothing left to sync, and no error either
        assert links == {"lower": 2, "merged": 1, "upper": 0}
    finally:
        for fd in fds.values():
            os.close(fd)


def test_a_removed_upper_directory_keeps_its_attributes_and_xattrs(union: Union) -> None:
    fds = _removed_dirs(union)
    try:
        for name in ("merged", "upper"):
            fd = fds[name]
            os.fchmod(fd, 0o700)
            os.utime(fd, ns=(10**18, 2 * 10**18))
            st = os.fstat(fd)
            assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o700, 2 * 10**18), name
        assert os.listxattr(fds["upper"]) == ["user.dir"]
    finally:
        for fd in fds.values():
            os.close(fd)


def test_a_removed_directory_that_is_a_cwd_answers_stat(union: Union) -> None:
    mnt = union.mount()
    (mnt / "d").mkdir()
    before = os.getcwd()
    os.chdir(mnt / "d")
    try:
        os.rmdir(mnt / "d")
        assert os.stat(".").st_nlink == 0
        assert os.listdir(".") == []
    finally:
        os.chdir(before)


def test_a_fifo_removed_while_open_keeps_its_attributes_and_xattrs(union: Union) -> None:
    """FIFO opens never reach a FUSE daemon: with no handle of ours, the daemon keeps the
    removed FIFO itself (ours once answered ENOENT to every fstat of it)."""
    mnt = union.mount()
    os.mkfifo(mnt / "fifo", 0o640)
    os.setxattr(mnt / "fifo", "trusted.f", b"F")  # user.* is for files and dirs only
    fd = os.open(mnt / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.unlink(mnt / "fifo")
        st = os.fstat(fd)
        assert (stat.S_ISFIFO(st.st_mode), st.st_nlink) == (True, 0)
        assert os.listxattr(fd) == ["trusted.f"]
        os.fchmod(fd, 0o600)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    finally:
        os.close(fd)
    assert not os.path.lexists(mnt / "fifo")


def test_a_symlink_removed_while_held_still_reads(union: Union) -> None:
    mnt = union.mount()
    os.symlink("target-x", mnt / "link")
    fd = os.open(mnt / "link", os.O_PATH | os.O_NOFOLLOW)
    try:
        os.unlink(mnt / "link")
        assert os.readlink("", dir_fd=fd) == "target-x"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)


def test_a_directory_replaced_by_rename_answers_fstat_through_its_descriptor(
    union: Union,
) -> None:
    mnt = union.mount()
    (mnt / "src").mkdir()
    (mnt / "victim").mkdir()
    fd = os.open(mnt / "victim", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(mnt / "src", mnt / "victim")
        assert os.fstat(fd).st_nlink == 0
        assert os.listdir(fd) == []
    finally:
        os.close(fd)


@pytest.mark.skipif(
    os.environ.get("LAMINA_TEST_DROP_CACHES") != "1",
    reason="drops the whole machine's dentry and inode caches; set LAMINA_TEST_DROP_CACHES=1",
)
def test_inode_numbers_survive_the_kernel_forgetting_the_inodes(union: Union) -> None:
    """After the kernel evicts (FUSE: forgets) an inode, a new lookup must give the same st_ino."""
    write(union.lower / "d" / "lower-file", b"x")
    mnt = union.mount()
    write(mnt / "d" / "new-file", b"y")
    os.chmod(mnt / "d" / "lower-file", 0o600)
    before = {n: os.lstat(mnt / "d" / n).st_ino for n in ("lower-file", "new-file", ".")}
    Path("/proc/sys/vm/drop_caches").write_text("2\n")
    after = {n: os.lstat(mnt / "d" / n).st_ino for n in ("lower-file", "new-file", ".")}
    assert after == before


def test_a_file_replaced_by_rename_lives_on_through_its_open_descriptor(union: Union) -> None:
    write(union.lower / "target", b"old target")
    write(union.lower / "source", b"source")
    mnt = union.mount()
    fd = os.open(mnt / "target", os.O_RDONLY)
    try:
        os.rename(mnt / "source", mnt / "target")
        assert os.pread(fd, 100, 0) == b"old target"
        assert (mnt / "target").read_bytes() == b"source"
    finally:
        os.close(fd)


def test_a_hard_link_count_drops_when_a_rename_replaces_one_name(union: Union) -> None:
    mnt = union.mount()
    write(mnt / "a", b"linked")
    os.link(mnt / "a", mnt / "b")
    write(mnt / "c", b"other")
    os.rename(mnt / "c", mnt / "a")
    assert os.lstat(mnt / "b").st_nlink == 1
    assert (mnt / "b").read_bytes() == b"linked"


def test_readdir_reports_the_inode_numbers_stat_reports(union: Union) -> None:
    """getdents' d_ino is the st_ino a later stat gives: for a big merged directory (the
    kernel asks its first batch with attributes and the rest without), and for every kind
    of entry; and after the kernel looked some of them up between two listings."""
    for i in range(3000):
        write(union.lowers[i % 2] / "big" / f"f{i:04d}", b"x")
    (union.lower / "big" / "sub").mkdir()
    os.symlink("f0001", union.lower / "big" / "link")
    os.mkfifo(union.lowers[1] / "big" / "fifo")
    mnt = union.mount()
    (mnt / "big" / "new").write_bytes(b"upper")
    for _ in range(2):
        listed = {entry.name: (entry.inode(), entry.is_dir(follow_symlinks=False))
                  for entry in os.scandir(mnt / "big")}  # fmt: skip
        assert len(listed) == 3000 + 4
        for name, (d_ino, is_dir) in listed.items():
            st = os.lstat(mnt / "big" / name)
            assert d_ino == st.st_ino, name
            assert is_dir == (name == "sub"), name
