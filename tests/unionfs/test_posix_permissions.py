"""Ownership and permissions for callers other than root: new entries belong to the caller,
setgid directories pass on their group, the sticky bit and the mode bits are enforced."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unionfs.conftest import Union
from tests.unionfs.posix_helpers import (
    GROUP,
    OTHER_GROUP,
    OTHER_USER,
    USER,
    as_user,
    is_whiteout,
    names,
    write,
)

pytestmark = pytest.mark.root


def _public_dir(union: Union, mode: int = 0o777, gid: int = 0) -> None:
    d = union.lower / "pub"
    d.mkdir()
    os.chown(d, 0, gid)
    os.chmod(d, mode)


def _lstat_ids(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def _errno_as_user(fn: Callable[..., object], *args: object) -> int:
    """The errno of fn(*args) run as USER, which must fail."""
    try:
        as_user(USER, GROUP, fn, *args)
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError(f"{fn} succeeded as uid {USER}")


def _mkfifo(path: Path) -> None:
    os.mkfifo(path)


def test_new_entries_belong_to_the_callers_uid_and_gid(union: Union) -> None:
    _public_dir(union)
    mnt = union.mount()
    pub = mnt / "pub"
    as_user(USER, GROUP, write, pub / "file")
    as_user(USER, GROUP, os.mkdir, pub / "dir")
    as_user(USER, GROUP, os.symlink, "file", pub / "link")
    as_user(USER, GROUP, _mkfifo, pub / "fifo")
    for name in ("file", "dir", "link", "fifo"):
        assert _lstat_ids(pub / name) == (USER, GROUP), name
        assert _lstat_ids(union.upper / "pub" / name) == (USER, GROUP), name


def test_a_setgid_directory_passes_its_group_to_new_entries(union: Union) -> None:
    _public_dir(union, mode=0o2777, gid=OTHER_GROUP)
    mnt = union.mount()
    as_user(USER, GROUP, write, mnt / "pub" / "file")
    as_user(USER, GROUP, os.mkdir, mnt / "pub" / "dir")
    assert _lstat_ids(mnt / "pub" / "file") == (USER, OTHER_GROUP)
    assert _lstat_ids(mnt / "pub" / "dir") == (USER, OTHER_GROUP)
    assert os.lstat(mnt / "pub" / "dir").st_mode & stat.S_ISGID


def test_the_sticky_bit_stops_another_user_deleting_or_renaming(union: Union) -> None:
    _public_dir(union, mode=0o1777)
    victim = write(union.lower / "pub" / "theirs", b"x")
    os.chown(victim, OTHER_USER, OTHER_GROUP)
    mnt = union.mount()
    target = mnt / "pub" / "theirs"
    assert _errno_as_user(os.unlink, target) == errno.EPERM
    assert _errno_as_user(os.rename, target, mnt / "pub" / "mine") == errno.EPERM
    assert names(mnt / "pub") == [b"theirs"]


def test_the_sticky_bit_lets_the_owner_delete(union: Union) -> None:
    _public_dir(union, mode=0o1777)
    mine = write(union.lower / "pub" / "mine", b"x")
    os.chown(mine, USER, GROUP)
    mnt = union.mount()
    as_user(USER, GROUP, os.unlink, mnt / "pub" / "mine")
    assert names(mnt / "pub") == []
    assert is_whiteout(union.upper / "pub" / "mine")


def test_a_file_without_read_permission_cannot_be_read(union: Union) -> None:
    write(union.lower / "secret", b"s", mode=0o600)
    mnt = union.mount()
    assert _errno_as_user(Path.read_bytes, mnt / "secret") == errno.EACCES


def test_a_refused_write_copies_nothing_up(union: Union) -> None:
    write(union.lower / "ro", b"r", mode=0o644)
    mnt = union.mount()
    assert _errno_as_user(write, mnt / "ro", b"w") == errno.EACCES
    assert names(union.upper) == []
    assert (mnt / "ro").read_bytes() == b"r"


def test_a_directory_without_search_permission_blocks_lookups(union: Union) -> None:
    write(union.lower / "closed" / "f")
    os.chmod(union.lower / "closed", 0o700)
    mnt = union.mount()
    assert _errno_as_user(os.lstat, mnt / "closed" / "f") == errno.EACCES
    assert _errno_as_user(os.listdir, mnt / "closed") == errno.EACCES


def test_creating_in_a_directory_without_write_permission_fails(union: Union) -> None:
    (union.lower / "d").mkdir(mode=0o755)
    mnt = union.mount()
    assert _errno_as_user(write, mnt / "d" / "f") == errno.EACCES
    assert names(union.upper) == []


def test_only_the_owner_may_chmod_and_only_root_may_chown(union: Union) -> None:
    theirs = write(union.lower / "theirs", mode=0o666)
    os.chown(theirs, OTHER_USER, OTHER_GROUP)
    mine = write(union.lower / "mine", mode=0o644)
    os.chown(mine, USER, GROUP)
    mnt = union.mount()
    assert _errno_as_user(os.chmod, mnt / "theirs", 0o777) == errno.EPERM
    assert _errno_as_user(os.chown, mnt / "mine", OTHER_USER, GROUP) == errno.EPERM
    as_user(USER, GROUP, os.chmod, mnt / "mine", 0o600)
    assert stat.S_IMODE(os.lstat(mnt / "mine").st_mode) == 0o600


def test_a_user_writing_their_own_lower_file_keeps_owning_the_copy(union: Union) -> None:
    mine = write(union.lower / "mine", b"old", mode=0o644)
    os.chown(mine, USER, GROUP)
    mnt = union.mount()
    as_user(USER, GROUP, write, mnt / "mine", b"new")
    assert (mnt / "mine").read_bytes() == b"new"
    assert _lstat_ids(union.upper / "mine") == (USER, GROUP)


def test_writing_a_setuid_file_as_another_user_clears_the_setuid_bit(union: Union) -> None:
    f = write(union.lower / "suid", b"x", mode=0o4777)
    mnt = union.mount()

    def append(path: Path) -> None:
        with open(path, "ab") as out:
            out.write(b"y")

    as_user(USER, GROUP, append, mnt / "suid")
    assert not os.lstat(mnt / "suid").st_mode & stat.S_ISUID
    assert os.lstat(f).st_mode & stat.S_ISUID


def _append(path: Path) -> None:
    with open(path, "ab") as out:
        out.write(b"y")


def _truncate(path: Path) -> None:
    os.truncate(path, 1)


def _open_truncating(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))


SET_ID_CHANGES = {"write": _append, "truncate": _truncate, "open O_TRUNC": _open_truncating}


@pytest.mark.parametrize("change", SET_ID_CHANGES)
@pytest.mark.parametrize("mode", [0o4777, 0o2777, 0o6777, 0o2767, 0o6766])
@pytest.mark.parametrize("in_group", [True, False], ids=["in-group", "not-in-group"])
@pytest.mark.parametrize("layer", ["lower", "upper"])
def test_changing_a_set_id_file_as_another_user_clears_what_the_vfs_clears(
    union: Union, layer: str, in_group: bool, mode: int, change: str
) -> None:
    """Set-user-ID goes; set-group-ID goes with group execute, or when the writer is not in
    the file's group (Linux 6.x). Ours: the kernel asks for it (FUSE_HANDLE_KILLPRIV_V2)."""
    directory = union.lower if layer == "lower" else union.upper
    write(directory / "f", b"xx", mode=mode)
    os.chown(directory / "f", 0, GROUP if in_group else 0)
    os.chmod(directory / "f", mode)  # write() is subject to the umask; chown clears set-ids
    mnt = union.mount()
    as_user(USER, GROUP, SET_ID_CHANGES[change], mnt / "f")
    expected = mode & ~stat.S_ISUID
    if mode & stat.S_IXGRP or not in_group:
        expected &= ~stat.S_ISGID
    assert stat.S_IMODE(os.lstat(mnt / "f").st_mode) == expected
    assert stat.S_IMODE(os.lstat(union.upper / "f").st_mode) == expected
    union.remount()  # what reached the disk, not only the kernel's cache
    assert stat.S_IMODE(os.lstat(union.mnt / "f").st_mode) == expected


@pytest.mark.parametrize("change", SET_ID_CHANGES)
def test_root_keeps_the_set_id_bits_when_it_changes_a_file(union: Union, change: str) -> None:
    write(union.lower / "f", b"xx", mode=0o6777)
    os.chmod(union.lower / "f", 0o6777)
    mnt = union.mount()
    SET_ID_CHANGES[change](mnt / "f")  # CAP_FSETID
    assert stat.S_IMODE(os.lstat(mnt / "f").st_mode) == 0o6777


@pytest.mark.parametrize("mode", [0o6777, 0o6767, 0o2767])
def test_chown_by_root_clears_set_user_id_and_group_executable_set_group_id(
    union: Union, mode: int
) -> None:
    write(union.lower / "f", b"xx", mode=mode)
    os.chmod(union.lower / "f", mode)
    mnt = union.mount()
    os.chown(mnt / "f", USER, GROUP)
    expected = mode & ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        expected &= ~stat.S_ISGID
    assert stat.S_IMODE(os.lstat(mnt / "f").st_mode) == expected
    union.remount()
    assert stat.S_IMODE(os.lstat(union.mnt / "f").st_mode) == expected


def test_new_entries_get_the_requested_mode_minus_the_umask(union: Union) -> None:
    _public_dir(union)
    mnt = union.mount()

    def create(directory: Path) -> None:
        os.close(os.open(directory / "file", os.O_WRONLY | os.O_CREAT, 0o666))
        os.mkdir(directory / "dir", 0o777)

    as_user(USER, GROUP, create, mnt / "pub", umask=0o027)
    assert stat.S_IMODE(os.lstat(mnt / "pub" / "file").st_mode) == 0o640
    assert stat.S_IMODE(os.lstat(mnt / "pub" / "dir").st_mode) == 0o750


def test_group_permissions_follow_the_callers_supplementary_groups(union: Union) -> None:
    shared = write(union.lower / "shared", b"old", mode=0o660)
    os.chown(shared, 0, OTHER_GROUP)
    mnt = union.mount()
    assert _errno_as_user(write, mnt / "shared", b"no") == errno.EACCES
    as_user(USER, GROUP, write, mnt / "shared", b"member", groups=(OTHER_GROUP,))
    assert (mnt / "shared").read_bytes() == b"member"


def test_a_writer_who_is_not_the_owner_may_touch_but_not_set_times(union: Union) -> None:
    write(union.lower / "shared", b"x", mode=0o666)
    mnt = union.mount()
    as_user(USER, GROUP, os.utime, mnt / "shared")
    assert _errno_as_user(os.utime, mnt / "shared", (1, 2)) == errno.EPERM


def test_a_user_may_write_their_file_inside_a_directory_they_cannot_write(
    union: Union,
) -> None:
    """Copying up the parent is the filesystem's business, done with the mount's privileges."""
    (union.lower / "etc").mkdir(mode=0o755)
    mine = write(union.lower / "etc" / "mine.conf", b"old", mode=0o644)
    os.chown(mine, USER, GROUP)
    mnt = union.mount()
    as_user(USER, GROUP, write, mnt / "etc" / "mine.conf", b"new")
    assert (mnt / "etc" / "mine.conf").read_bytes() == b"new"
    st = os.lstat(union.upper / "etc")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 0)
    assert _errno_as_user(write, mnt / "etc" / "other.conf") == errno.EACCES


def test_a_file_created_with_mode_0_is_writable_through_the_creating_descriptor(
    union: Union,
) -> None:
    _public_dir(union)
    mnt = union.mount()

    def create_locked(path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o000)
        try:
            os.write(fd, b"still mine")
        finally:
            os.close(fd)

    as_user(USER, GROUP, create_locked, mnt / "pub" / "locked")
    assert (mnt / "pub" / "locked").read_bytes() == b"still mine"
    assert stat.S_IMODE(os.lstat(union.upper / "pub" / "locked").st_mode) == 0


def test_another_user_with_write_permission_may_truncate_a_lower_file(union: Union) -> None:
    write(union.lower / "shared", b"content", mode=0o666)
    mnt = union.mount()
    as_user(USER, GROUP, os.truncate, mnt / "shared", 0)
    assert (mnt / "shared").read_bytes() == b""
    assert _lstat_ids(union.upper / "shared") == (0, 0)
