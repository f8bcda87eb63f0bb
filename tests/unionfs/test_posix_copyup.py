"""Copy-up: the first change to a lower entry copies it (and its parents) to the upper dir,
with data, mode, owner, times and xattrs; reading never does."""

from __future__ import annotations

import concurrent.futures
import mmap
import os
import stat
from pathlib import Path

import pytest

from tests.unionfs.conftest import Union
from tests.unionfs.posix_helpers import is_opaque, is_whiteout, names, user_xattrs, write

pytestmark = pytest.mark.root

MTIME_NS = 1_500_000_000_123_456_789
ATIME_NS = 1_400_000_000_987_654_321


def _lower_file(union: Union, rel: str = "a/b/f", data: bytes = b"0123456789") -> None:
    """A lower file with distinctive metadata under parents with distinctive metadata."""
    path = write(union.lower / rel, data, mode=0o640)
    os.chown(path, 1000, 1001)
    os.setxattr(path, "user.colour", b"blue")
    os.utime(path, ns=(ATIME_NS, MTIME_NS))
    for parent in (path.parent, path.parent.parent):
        os.chmod(parent, 0o750)
        os.chown(parent, 1001, 1000)
        os.setxattr(parent, "user.dir", parent.name.encode())
        os.utime(parent, ns=(ATIME_NS, MTIME_NS - 1000))


def test_reading_a_lower_file_never_copies_it_up(union: Union) -> None:
    _lower_file(union)
    mnt = union.mount()
    assert (mnt / "a/b/f").read_bytes() == b"0123456789"
    os.lstat(mnt / "a/b/f")
    os.listxattr(mnt / "a/b/f")
    os.getxattr(mnt / "a/b/f", "user.colour")
    os.listdir(mnt / "a/b")
    assert names(union.upper) == []


def test_writing_a_lower_file_copies_it_up_with_the_new_data(union: Union) -> None:
    _lower_file(union)
    mnt = union.mount()
    with open(mnt / "a/b/f", "r+b") as f:
        f.seek(3)
        f.write(b"X")
    assert (union.upper / "a/b/f").read_bytes() == b"012X456789"
    assert (mnt / "a/b/f").read_bytes() == b"012X456789"


def test_copy_up_keeps_mode_owner_and_xattrs_of_the_file(union: Union) -> None:
    _lower_file(union)
    mnt = union.mount()
    with open(mnt / "a/b/f", "r+b") as f:
        f.write(b"X")
    st = os.lstat(union.upper / "a/b/f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1000, 1001)
    assert user_xattrs(union.upper / "a/b/f") == {"user.colour": b"blue"}


def test_copy_up_creates_the_parents_with_their_mode_owner_and_xattrs(union: Union) -> None:
    _lower_file(union)
    mnt = union.mount()
    os.chmod(mnt / "a/b/f", 0o600)
    for rel in ("a", "a/b"):
        st = os.lstat(union.upper / rel)
        assert stat.S_ISDIR(st.st_mode), rel
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1001, 1000), rel
        assert user_xattrs(union.upper / rel) == {"user.dir": rel[-1].encode()}, rel
        assert not is_opaque(union.upper / rel), rel


def test_copy_up_of_a_child_leaves_the_parents_times_alone(union: Union) -> None:
    _lower_file(union)
    mnt = union.mount()
    os.chmod(mnt / "a/b/f", 0o600)
    for rel in ("a", "a/b"):
        assert os.lstat(mnt / rel).st_mtime_ns == MTIME_NS - 1000, rel
    mnt = union.remount()
    for rel in ("a", "a/b"):
        assert os.lstat(mnt / rel).st_mtime_ns == MTIME_NS - 1000, rel


def test_chmod_copies_up_with_the_data_and_times_unchanged(union: Union) -> None:
    _lower_file(union)
    mnt = union.mount()
    os.chmod(mnt / "a/b/f", 0o604)
    st = os.lstat(union.upper / "a/b/f")
    assert stat.S_IMODE(st.st_mode) == 0o604
    assert st.st_mtime_ns == MTIME_NS
    assert (union.upper / "a/b/f").read_bytes() == b"0123456789"


def test_chown_copies_up_with_the_new_owner(union: Union) -> None:
    _lower_file(union)
    mnt = union.mount()
    os.chown(mnt / "a/b/f", 2000, 2001)
    st = os.lstat(union.upper / "a/b/f")
    assert (st.st_uid, st.st_gid) == (2000, 2001)
    assert (union.upper / "a/b/f").read_bytes() == b"0123456789"


def test_utimens_copies_up_with_the_new_times(union: Union) -> None:
    _lower_file(union)
    mnt = union.mount()
    os.utime(mnt / "a/b/f", ns=(7_000_000_001, 9_000_000_002))
    st = os.lstat(union.upper / "a/b/f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (7_000_000_001, 9_000_000_002)
    assert os.lstat(mnt / "a/b/f").st_mtime_ns == 9_000_000_002


def test_truncate_copies_up_the_shortened_data(union: Union) -> None:
    _lower_file(union)
    mnt = union.mount()
    os.truncate(mnt / "a/b/f", 4)
    assert (union.upper / "a/b/f").read_bytes() == b"0123"
    assert (mnt / "a/b/f").read_bytes() == b"0123"


def test_setxattr_copies_up_keeping_the_lower_xattrs(union: Union) -> None:
    _lower_file(union)
    mnt = union.mount()
    os.setxattr(mnt / "a/b/f", "user.shape", b"round")
    assert user_xattrs(union.upper / "a/b/f") == {
        "user.colour": b"blue",
        "user.shape": b"round",
    }


def test_removing_a_lower_xattr_copies_up_without_it(union: Union) -> None:
    _lower_file(union)
    mnt = union.mount()
    os.removexattr(mnt / "a/b/f", "user.colour")
    assert user_xattrs(union.upper / "a/b/f") == {}
    assert os.listxattr(mnt / "a/b/f") == []


def test_linking_a_lower_file_copies_it_up_and_links_the_copy(union: Union) -> None:
    _lower_file(union)
    mnt = union.mount()
    os.link(mnt / "a/b/f", mnt / "a/g")
    up_f, up_g = os.lstat(union.upper / "a/b/f"), os.lstat(union.upper / "a/g")
    assert up_f.st_ino == up_g.st_ino
    assert up_f.st_nlink == 2
    assert (union.upper / "a/g").read_bytes() == b"0123456789"


def test_renaming_a_lower_file_copies_it_up_and_whites_out_the_old_name(union: Union) -> None:
    _lower_file(union)
    mnt = union.mount()
    os.rename(mnt / "a/b/f", mnt / "a/moved")
    assert (union.upper / "a/moved").read_bytes() == b"0123456789"
    assert is_whiteout(union.upper / "a/b/f")
    assert stat.S_IMODE(os.lstat(union.upper / "a/moved").st_mode) == 0o640


def test_chmod_of_a_lower_directory_copies_it_up_and_it_stays_merged(union: Union) -> None:
    write(union.lower / "d" / "child", b"c")
    mnt = union.mount()
    os.chmod(mnt / "d", 0o700)
    assert stat.S_IMODE(os.lstat(union.upper / "d").st_mode) == 0o700
    assert names(union.upper / "d") == []
    assert names(mnt / "d") == [b"child"]


def test_copy_up_copies_every_byte_of_a_multi_megabyte_file(union: Union) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    write(union.lower / "big", data)
    mnt = union.mount()
    with open(mnt / "big", "ab") as f:
        f.write(b"!")
    assert (mnt / "big").read_bytes() == data + b"!"
    union.unmount()  # ours may finish copying a large file in the background until then
    assert (union.upper / "big").read_bytes() == data + b"!"


def test_copy_up_takes_the_file_from_the_topmost_lower_holding_it(union: Union) -> None:
    write(union.lowers[1] / "f", b"bottom")
    write(union.lowers[0] / "f", b"top")
    mnt = union.mount()
    os.chmod(mnt / "f", 0o600)
    assert (union.upper / "f").read_bytes() == b"top"


def test_a_copied_up_file_survives_a_remount(union: Union) -> None:
    _lower_file(union)
    mnt = union.mount()
    with open(mnt / "a/b/f", "r+b") as f:
        f.write(b"X")
    mnt = union.remount()
    assert (mnt / "a/b/f").read_bytes() == b"X123456789"
    assert os.getxattr(mnt / "a/b/f", "user.colour") == b"blue"


def test_concurrent_first_writes_to_one_lower_file_all_land(union: Union) -> None:
    """Several writers racing to copy up the same file must not lose each other's writes."""
    write(union.lower / "f", b"." * 64)
    mnt = union.mount()

    def poke(i: int) -> None:
        fd = os.open(mnt / "f", os.O_WRONLY)
        try:
            os.pwrite(fd, b"%x" % i, i)
        finally:
            os.close(fd)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(poke, range(16)))
    assert (mnt / "f").read_bytes() == b"0123456789abcdef" + b"." * 48
    assert (union.upper / "f").read_bytes() == b"0123456789abcdef" + b"." * 48


def test_a_process_inside_a_lower_directory_keeps_working_after_its_copy_up(
    union: Union,
) -> None:
    write(union.lower / "d" / "old", b"old")
    mnt = union.mount()
    dir_fd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chmod(mnt / "d", 0o700)
        fd = os.open("new", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dir_fd)
        os.close(fd)
        assert sorted(os.listdir(dir_fd)) == ["new", "old"]
    finally:
        os.close(dir_fd)
    assert names(union.upper / "d") == [b"new"]


def test_copy_up_keeps_the_setuid_and_setgid_bits(union: Union) -> None:
    """Owner is set before mode on the copy, since chown clears the set-id bits."""
    f = write(union.lower / "tool", b"#!", mode=0o6755)
    os.chown(f, 1000, 1000)
    os.chmod(f, 0o6755)
    mnt = union.mount()
    os.utime(mnt / "tool", ns=(1, 2))
    st = os.lstat(union.upper / "tool")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o6755, 1000, 1000)


def test_fchmod_through_a_read_only_descriptor_copies_up(union: Union) -> None:
    write(union.lower / "f", b"x", mode=0o644)
    mnt = union.mount()
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        os.fchmod(fd, 0o600)
        os.fchown(fd, 1000, 1000)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    finally:
        os.close(fd)
    st = os.lstat(union.upper / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 1000)


def test_ftruncate_through_a_descriptor_opened_on_a_lower_file(union: Union) -> None:
    write(union.lower / "f", b"0123456789")
    mnt = union.mount()
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        os.ftruncate(fd, 3)
        assert os.fstat(fd).st_size == 3
    finally:
        os.close(fd)
    assert (union.upper / "f").read_bytes() == b"012"


# Large files: ours copies them up lazily (chunks on demand, the rest in the background, renamed
# into the upper when whole), so every other operation may meet a copy-up still in progress.

LARGE = 3 * 1024 * 1024 + 5


def _large_lower(union: Union) -> bytes:
    data = os.urandom(LARGE)
    write(union.lower / "d" / "large", data, mode=0o640)
    return data


def _poke(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _patched(data: bytes, offset: int, patch: bytes) -> bytes:
    return data[:offset] + patch + data[offset + len(patch) :]


def test_renaming_a_large_file_right_after_its_first_write_keeps_every_byte(
    union: Union,
) -> None:
    data = _large_lower(union)
    mnt = union.mount()
    _poke(mnt / "d" / "large", 2_000_000, b"NEW")
    os.rename(mnt / "d" / "large", mnt / "moved")
    expected = _patched(data, 2_000_000, b"NEW")
    assert (mnt / "moved").read_bytes() == expected
    union.unmount()
    assert (union.upper / "moved").read_bytes() == expected
    assert is_whiteout(union.upper / "d" / "large")


def test_unlinking_a_large_file_right_after_its_first_write_leaves_only_a_whiteout(
    union: Union,
) -> None:
    _large_lower(union)
    mnt = union.mount()
    _poke(mnt / "d" / "large", 10, b"NEW")
    os.unlink(mnt / "d" / "large")
    assert names(mnt / "d") == []
    union.unmount()
    assert names(union.upper / "d") == [b"large"]
    assert is_whiteout(union.upper / "d" / "large")


def test_metadata_changed_during_a_large_copy_up_is_kept(union: Union) -> None:
    data = _large_lower(union)
    mnt = union.mount()
    _poke(mnt / "d" / "large", 0, b"NEW")
    os.chmod(mnt / "d" / "large", 0o600)
    os.setxattr(mnt / "d" / "large", "user.k", b"v")
    os.utime(mnt / "d" / "large", ns=(5_000_000_000, 6_000_000_000))
    union.unmount()
    st = os.lstat(union.upper / "d" / "large")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o600, 6_000_000_000)
    assert os.getxattr(union.upper / "d" / "large", "user.k") == b"v"
    assert (union.upper / "d" / "large").read_bytes() == _patched(data, 0, b"NEW")


def test_truncating_a_large_file_during_its_copy_up_keeps_the_short_version(
    union: Union,
) -> None:
    data = _large_lower(union)
    mnt = union.mount()
    _poke(mnt / "d" / "large", 3_000_000, b"NEW")
    os.truncate(mnt / "d" / "large", 1_500_000)
    _poke(mnt / "d" / "large", 1_500_000, b"END")
    expected = data[:1_500_000] + b"END"
    assert (mnt / "d" / "large").read_bytes() == expected
    union.unmount()
    assert (union.upper / "d" / "large").read_bytes() == expected


def test_a_hard_link_made_during_a_large_copy_up_shares_the_data(union: Union) -> None:
    data = _large_lower(union)
    mnt = union.mount()
    _poke(mnt / "d" / "large", 100, b"ONE")
    os.link(mnt / "d" / "large", mnt / "link")
    _poke(mnt / "link", 3_100_000, b"TWO")
    expected = _patched(_patched(data, 100, b"ONE"), 3_100_000, b"TWO")
    assert (mnt / "d" / "large").read_bytes() == expected
    union.unmount()
    upper_file, upper_link = union.upper / "d" / "large", union.upper / "link"
    assert os.lstat(upper_file).st_ino == os.lstat(upper_link).st_ino
    assert upper_file.read_bytes() == expected


def test_a_large_file_written_through_two_descriptors_keeps_both_writes(
    union: Union,
) -> None:
    data = _large_lower(union)
    mnt = union.mount()
    first = os.open(mnt / "d" / "large", os.O_RDWR)
    second = os.open(mnt / "d" / "large", os.O_RDWR)
    try:
        os.pwrite(first, b"AAAA", 1_000_000)
        os.pwrite(second, b"BBBB", 3_000_000)
        assert os.pread(first, 4, 3_000_000) == b"BBBB"
        assert os.pread(second, 4, 1_000_000) == b"AAAA"
    finally:
        os.close(first)
        os.close(second)
    expected = _patched(_patched(data, 1_000_000, b"AAAA"), 3_000_000, b"BBBB")
    mnt = union.remount()
    assert (mnt / "d" / "large").read_bytes() == expected


def test_writing_a_lower_file_updates_its_mtime_and_the_copy_keeps_it(union: Union) -> None:
    for name, size in (("small", 10), ("large", LARGE)):
        write(union.lower / name, b"x" * size)
        os.utime(union.lower / name, ns=(ATIME_NS, MTIME_NS))
    mnt = union.mount()
    seen = {}
    for name in ("small", "large"):
        _poke(mnt / name, 5, b"NEW")
        seen[name] = os.lstat(mnt / name).st_mtime_ns
        assert seen[name] > MTIME_NS, name
    union.unmount()
    for name in ("small", "large"):
        assert os.lstat(union.upper / name).st_mtime_ns == seen[name], name


def test_creating_an_entry_in_a_lower_directory_updates_the_directorys_mtime(
    union: Union,
) -> None:
    (union.lower / "d").mkdir()
    os.utime(union.lower / "d", ns=(ATIME_NS, MTIME_NS))
    mnt = union.mount()
    write(mnt / "d" / "new")
    assert os.lstat(mnt / "d").st_mtime_ns > MTIME_NS


def test_o_append_on_a_large_lower_file_writes_after_its_last_byte(union: Union) -> None:
    data = _large_lower(union)
    mnt = union.mount()
    fd = os.open(mnt / "d" / "large", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"+tail")
    finally:
        os.close(fd)
    assert os.lstat(mnt / "d" / "large").st_size == LARGE + 5
    assert (mnt / "d" / "large").read_bytes() == data + b"+tail"
    union.unmount()
    assert (union.upper / "d" / "large").read_bytes() == data + b"+tail"


def test_o_trunc_on_a_large_lower_file_leaves_an_empty_upper_file(union: Union) -> None:
    _large_lower(union)
    mnt = union.mount()
    os.close(os.open(mnt / "d" / "large", os.O_WRONLY | os.O_TRUNC))
    assert (mnt / "d" / "large").read_bytes() == b""
    union.unmount()
    assert (union.upper / "d" / "large").read_bytes() == b""
    assert stat.S_IMODE(os.lstat(union.upper / "d" / "large").st_mode) == 0o640


def test_a_shared_mmap_of_a_large_lower_file_writes_through_to_the_copy(union: Union) -> None:
    data = _large_lower(union)
    mnt = union.mount()
    fd = os.open(mnt / "d" / "large", os.O_RDWR)
    try:
        with mmap.mmap(fd, LARGE, mmap.MAP_SHARED) as m:
            assert m[2_500_000:2_500_016] == data[2_500_000:2_500_016]
            m[1_048_570:1_048_582] = b"ACROSSCHUNKS"
            m.flush()
    finally:
        os.close(fd)
    expected = _patched(data, 1_048_570, b"ACROSSCHUNKS")
    assert (mnt / "d" / "large").read_bytes() == expected
    union.unmount()
    assert (union.upper / "d" / "large").read_bytes() == expected


@pytest.mark.parametrize("size", [3 * 4096, LARGE], ids=["small", "large"])
def test_a_descriptor_opened_before_the_copy_up_reads_the_copy(union: Union, size: int) -> None:
    """A reader that opened the lower file sees what a writer wrote since (the kernel's
    overlayfs reopens its real file after a copy-up); and the page it reads in is the one
    the writer reads back its own write from."""
    write(union.lower / "f", b"L" * size)
    mnt = union.mount()
    reader = os.open(mnt / "f", os.O_RDONLY)
    try:
        writer = os.open(mnt / "f", os.O_RDWR)
        try:
            os.pwrite(writer, b"W" * 100, 4096 + 100)  # part of a page not read yet
            assert os.pread(reader, 4, 4096 + 100) == b"WWWW"
            assert os.pread(writer, 4, 4096 + 100) == b"WWWW"
            os.posix_fadvise(reader, 0, 0, os.POSIX_FADV_DONTNEED)
            assert os.pread(reader, 8, 4096 + 96) == b"LLLLWWWW"
            assert os.pread(reader, 4, size - 4) == b"LLLL"  # a chunk maybe not copied yet
        finally:
            os.close(writer)
    finally:
        os.close(reader)
    union.unmount()
    copied = (union.upper / "f").read_bytes()
    assert copied == b"L" * (4096 + 100) + b"W" * 100 + b"L" * (size - 4096 - 200)
