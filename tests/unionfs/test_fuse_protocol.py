"""The FUSE wire format (fuse_protocol.py, pure): sizes as in linux/fuse.h, encodings."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from unionfs import fuse_protocol as proto
from unionfs.fuse_adapter import decode_rdev, sized


def test_struct_sizes_are_those_of_the_kernel_header() -> None:
    sizes = {
        proto.IN_HEADER: 40,
        proto.OUT_HEADER: 16,
        proto.ENTRY_OUT: 128,
        proto.ATTR_OUT: 104,
        proto.INIT_OUT: 64,
        proto.STATFS_OUT: 80,
        proto.SETATTR_IN: 88,
        proto.READ_IN: 40,
        proto.OPEN_OUT: 16,
        proto.CREATE_IN: 16,
        proto.MKNOD_IN: 16,
        proto.RENAME2_IN: 16,
        proto.NOTIFY_INVAL_INODE_OUT: 24,
        proto.DIRENT: 24,
        proto.URING_ENT: 32,  # struct fuse_uring_ent_in_out (7.42)
        proto.URING_CMD_REQ: 24,  # struct fuse_uring_cmd_req
    }
    assert {s.format: s.size for s in sizes} == {s.format: n for s, n in sizes.items()}


def stat_of(mode: int, *, ns: int = 1_500_000_000_123_456_789, rdev: int = 0) -> os.stat_result:
    seconds = ns / 1e9
    whole = int(seconds)
    visible = (mode, 99, 1, 3, 1000, 1001, 4097, whole, whole, whole)
    return os.stat_result((*visible, seconds, seconds, seconds, ns, ns, ns, 4096, 16, rdev))


def test_an_entry_carries_the_node_id_validity_and_attributes_with_nanoseconds() -> None:
    st = stat_of(stat.S_IFREG | 0o644)
    raw = proto.entry_out(7, st, 3, 2.5)
    fields = proto.ENTRY_OUT.unpack(raw)
    assert fields[:6] == (7, 0, 2, 2, 500_000_000, 500_000_000)
    ino, size, blocks, atime, _m, _c, atimensec = fields[6:13]
    assert (ino, size, blocks) == (7, 4097, 16)
    assert (atime, atimensec) == (1_500_000_000, 123_456_789)
    assert fields[15:19] == (stat.S_IFREG | 0o644, 3, 1000, 1001)


def test_times_before_1970_are_sent_as_negative_seconds() -> None:
    st = stat_of(stat.S_IFREG, ns=-1_500_000_000)  # half a second before 1970 minus a second
    fields = proto.ENTRY_OUT.unpack(proto.entry_out(2, st, 1, 0))
    assert (fields[9], fields[12]) == (-2, 500_000_000)


def test_device_numbers_use_the_kernels_32_bit_encoding_both_ways() -> None:
    for major, minor in ((8, 1), (1, 3), (4095, 1), (10, 300000)):
        dev = os.makedev(major, minor)
        fields = proto.ENTRY_OUT.unpack(proto.entry_out(2, stat_of(stat.S_IFCHR, rdev=dev), 1, 0))
        kernel = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
        assert fields[19] == kernel
        assert decode_rdev(kernel) == dev


def test_a_negative_entry_is_node_zero_cached_for_the_timeout() -> None:
    fields = proto.ENTRY_OUT.unpack(proto.negative_entry(60))
    assert fields[0] == 0 and fields[2] == 60 and fields[3] == 0


def test_dirents_are_padded_to_eight_bytes_and_carry_the_file_type() -> None:
    for name in (b"a", b"abcdefgh", b"x" * 255):
        raw = proto.dirent(name, 5, stat.S_IFDIR | 0o755, 9)
        assert len(raw) % 8 == 0
        ino, off, namelen, kind = proto.DIRENT.unpack_from(raw)
        assert (ino, off, namelen, kind) == (5, 9, len(name), 4)  # DT_DIR
        assert raw[24 : 24 + namelen] == name


@pytest.mark.parametrize("name", [b"a", b"seven77", b"eight888", b"x" * 255])
def test_a_direntplus_is_an_entry_then_a_padded_dirent(name: bytes) -> None:
    st = stat_of(stat.S_IFLNK | 0o777, rdev=os.makedev(8, 1))
    joined = proto.direntplus(9, st, 2, 1.5, name, 42)
    assert joined == proto.entry_out(9, st, 2, 1.5) + proto.dirent(name, 9, st.st_mode, 42)
    assert len(joined) % 8 == 0


def test_an_entry_holds_the_same_attributes_as_an_attr_answer() -> None:
    """entry_out packs the attributes itself (a hot path): they must stay attr_out's."""
    for st in (stat_of(stat.S_IFREG | 0o4755), stat_of(stat.S_IFCHR, rdev=os.makedev(8, 1))):
        entry = proto.ENTRY_OUT.unpack(proto.entry_out(5, st, 4, 2.5))
        attr = proto.ATTR_OUT.unpack(proto.attr_out(5, st, 4, 2.5))
        assert entry[6:] == attr[3:]


NAMES = [b"a", b"seven77", b"eight888", b"x" * 255]


@pytest.mark.parametrize("plus", [False, True])
def test_names_alone_are_dirents_after_an_empty_entry_for_readdirplus(plus: bool) -> None:
    types = [stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFREG]
    answer, count = proto.name_entries(plus, NAMES, [9, 10, 11, 12], types, 40, 1 << 16)
    empty = bytes(proto.ENTRY_OUT.size) if plus else b""
    one_by_one = [
        empty + proto.dirent(name, 9 + i, types[i], 41 + i) for i, name in enumerate(NAMES)
    ]
    assert (answer, count) == (b"".join(one_by_one), 4)
    assert count <= proto.most_names(plus, len(answer))


@pytest.mark.parametrize("plus", [False, True])
def test_names_alone_stop_before_the_entry_that_would_not_fit(plus: bool) -> None:
    inos, types = [1, 2, 3, 4], [stat.S_IFREG] * 4
    ends = [len(proto.name_entries(plus, NAMES[:k], inos, types, 0, 1 << 16)[0]) for k in range(5)]
    for size in range(ends[-1] + 1):
        answer, count = proto.name_entries(plus, NAMES, inos, types, 0, size)
        assert len(answer) == ends[count] <= size
        assert count == len(NAMES) or ends[count + 1] > size  # the next one did not fit


def test_setattr_joins_seconds_and_nanoseconds() -> None:
    valid = proto.FATTR_MODE | proto.FATTR_MTIME
    raw = proto.SETATTR_IN.pack(valid, 0, 3, 10, 0, 1, 2, 0, 5, 6, 0, 0o640, 0, 1, 2, 0)
    parsed = proto.parse_setattr(memoryview(raw))
    assert parsed.valid == valid and parsed.fh == 3 and parsed.size == 10
    assert (parsed.atime_ns, parsed.mtime_ns) == (1_000_000_005, 2_000_000_006)
    assert (parsed.mode, parsed.uid, parsed.gid) == (0o640, 1, 2)


def test_names_end_at_their_nul() -> None:
    body = memoryview(b"\x01\x02old\0new\0")
    assert proto.cstring(body, 2) == (b"old", 6)
    assert proto.two_cstrings(body, 2) == (b"old", b"new")


def test_xattr_answers_give_the_size_when_asked_and_erange_when_too_small() -> None:
    assert proto.XATTR_SIZE_OUT.unpack(sized(b"value", 0)) == (5, 0)
    assert sized(b"value", 5) == b"value"
    with pytest.raises(OSError) as caught:
        sized(b"value", 4)
    assert caught.value.errno == errno.ERANGE


def test_init_asks_only_for_what_the_kernel_offers() -> None:
    offered = proto.ASYNC_READ | proto.MAX_PAGES
    fields = proto.INIT_OUT.unpack(
        proto.init_reply(offered, offered | proto.CACHE_SYMLINKS, 4096, 256)
    )
    major, minor, _readahead, flags = fields[:4]
    assert (major, minor, flags) == (7, 31, offered)
    assert fields[8] == 256  # max_pages


def test_flags_above_32_bits_travel_in_flags2_announced_by_init_ext() -> None:
    offered = proto.ASYNC_READ | proto.OVER_IO_URING
    fields = proto.INIT_OUT.unpack(proto.init_reply(offered, offered, 4096, 256))
    assert fields[3] == proto.ASYNC_READ | proto.INIT_EXT
    assert fields[10] << 32 == proto.OVER_IO_URING  # flags2
    # Not offered: neither the flag nor INIT_EXT.
    fields = proto.INIT_OUT.unpack(proto.init_reply(proto.ASYNC_READ, offered, 4096, 256))
    assert (fields[3], fields[10]) == (proto.ASYNC_READ, 0)


def test_the_kernels_init_gives_64_flag_bits_when_extended_and_32_before_7_36() -> None:
    flags = proto.ASYNC_READ | proto.INIT_EXT
    extended = proto.INIT_IN.pack(7, 45, 131072, flags) + (1 << 9).to_bytes(4, "little")
    assert proto.init_request_flags(extended + bytes(44)) == (
        7, 45, 131072, flags | proto.OVER_IO_URING,
    )  # fmt: skip
    # A 7.31 kernel sends 16 bytes; the bit alone is no reason to read past them.
    assert proto.init_request_flags(proto.INIT_IN.pack(7, 31, 4096, flags)) == (7, 31, 4096, flags)


def test_an_error_reply_carries_the_negated_errno() -> None:
    assert proto.OUT_HEADER.unpack(proto.reply_header(42, errno.ENOENT, 0)) == (16, -2, 42)
