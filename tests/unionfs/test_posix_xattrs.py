"""Extended attributes: get/set/list/remove, lower ones visible, the overlay's own hidden."""

from __future__ import annotations

import contextlib
import errno
import os
import struct

import pytest

from tests.unionfs.conftest import Union
from tests.unionfs.posix_helpers import errno_of, is_opaque, names, opaque_dir, write, xattr

pytestmark = pytest.mark.root


def test_an_xattr_set_on_a_new_file_can_be_read_listed_and_removed(union: Union) -> None:
    mnt = union.mount()
    f = write(mnt / "f")
    os.setxattr(f, "user.k", b"v")
    assert os.getxattr(f, "user.k") == b"v"
    assert os.listxattr(f) == ["user.k"]
    os.removexattr(f, "user.k")
    assert os.listxattr(f) == []
    assert errno_of(lambda: os.getxattr(f, "user.k")) == errno.ENODATA


def test_xattrs_of_a_lower_file_are_visible(union: Union) -> None:
    f = write(union.lower / "f")
    os.setxattr(f, "user.a", b"1")
    os.setxattr(f, "trusted.b", b"2")
    mnt = union.mount()
    assert sorted(os.listxattr(mnt / "f")) == ["trusted.b", "user.a"]
    assert os.getxattr(mnt / "f", "trusted.b") == b"2"


def test_a_missing_xattr_reads_as_enodata(union: Union) -> None:
    write(union.lower / "f")
    mnt = union.mount()
    assert errno_of(lambda: os.getxattr(mnt / "f", "user.none")) == errno.ENODATA
    assert errno_of(lambda: os.removexattr(mnt / "f", "user.none")) == errno.ENODATA


def test_xattr_create_and_replace_flags_are_honoured(union: Union) -> None:
    f = write(union.lower / "f")
    os.setxattr(f, "user.a", b"1")
    mnt = union.mount()
    exists = errno_of(lambda: os.setxattr(mnt / "f", "user.a", b"2", os.XATTR_CREATE))
    missing = errno_of(lambda: os.setxattr(mnt / "f", "user.b", b"2", os.XATTR_REPLACE))
    assert (exists, missing) == (errno.EEXIST, errno.ENODATA)
    os.setxattr(mnt / "f", "user.a", b"3", os.XATTR_REPLACE)
    assert os.getxattr(mnt / "f", "user.a") == b"3"


def test_a_failing_replace_on_a_lower_hard_link_still_copies_it_up(union: Union) -> None:
    """The kernel copies up before it tries the change; the copy is a link count of its own."""
    f = write(union.lower / "f", b"data")
    os.link(f, union.lower / "g")
    mnt = union.mount()
    assert os.lstat(mnt / "f").st_nlink == 2
    missing = errno_of(lambda: os.setxattr(mnt / "f", "user.b", b"2", os.XATTR_REPLACE))
    assert missing == errno.ENODATA
    assert (union.upper / "f").read_bytes() == b"data"
    assert os.lstat(mnt / "f").st_nlink == 1
    assert os.lstat(mnt / "g").st_nlink == 2


def test_a_large_xattr_value_round_trips(union: Union) -> None:
    mnt = union.mount()
    value = os.urandom(3000)
    f = write(mnt / "f")
    os.setxattr(f, "user.big", value)
    assert os.getxattr(f, "user.big") == value
    mnt = union.remount()
    assert os.getxattr(mnt / "f", "user.big") == value


def test_an_xattr_on_a_lower_directory_keeps_its_contents_merged(union: Union) -> None:
    write(union.lower / "d" / "child")
    mnt = union.mount()
    os.setxattr(mnt / "d", "user.tag", b"t")
    assert os.getxattr(mnt / "d", "user.tag") == b"t"
    assert os.getxattr(union.upper / "d", "user.tag") == b"t"
    assert names(mnt / "d") == [b"child"]


def test_the_opaque_marker_is_not_listed_or_readable_in_the_merged_view(union: Union) -> None:
    d = opaque_dir(union.upper / "d")
    os.setxattr(d, "user.visible", b"yes")
    mnt = union.mount()
    assert os.listxattr(mnt / "d") == ["user.visible"]
    assert errno_of(lambda: os.getxattr(mnt / "d", "trusted.overlay.opaque")) == errno.ENODATA


def test_the_redirect_marker_of_a_renamed_directory_is_not_visible(union: Union) -> None:
    write(union.lower / "old" / "f")
    mnt = union.mount()
    os.rename(mnt / "old", mnt / "new")
    assert [n for n in os.listxattr(mnt / "new") if n.startswith("trusted.overlay.")] == []

    def read_redirect() -> None:
        os.getxattr(mnt / "new", "trusted.overlay.redirect")

    assert errno_of(read_redirect) == errno.ENODATA


def test_the_overlay_markers_cannot_be_changed_through_the_merged_view(union: Union) -> None:
    """Whether the call fails or is ignored, the marker on disk must stay and keep hiding."""
    write(union.lower / "d" / "hidden")
    opaque_dir(union.upper / "d")
    mnt = union.mount()
    with contextlib.suppress(OSError):
        os.removexattr(mnt / "d", "trusted.overlay.opaque")
    with contextlib.suppress(OSError):
        os.setxattr(mnt / "d", "trusted.overlay.opaque", b"n")
    assert is_opaque(union.upper / "d")
    assert names(mnt / "d") == []


def test_copy_up_keeps_file_capabilities(union: Union) -> None:
    """security.capability must survive the copy's chown (ping-like binaries in images)."""
    cap_net_raw = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    f = write(union.lower / "ping", b"\x7fELF", mode=0o755)
    os.chown(f, 1000, 1000)
    os.setxattr(f, "security.capability", cap_net_raw)
    mnt = union.mount()
    os.utime(mnt / "ping", ns=(1, 2))
    assert os.getxattr(union.upper / "ping", "security.capability") == cap_net_raw
    assert os.getxattr(mnt / "ping", "security.capability") == cap_net_raw


@pytest.mark.parametrize("layer", ["lower", "upper"])
def test_writing_a_file_drops_its_capabilities_and_later_writes_too(
    union: Union, layer: str
) -> None:
    """The VFS drops security.capability at a write, even root's. Ours: the kernel still
    checks an inode's first write with FUSE_HANDLE_KILLPRIV_V2, and again once a
    capability is set through the mount."""
    cap_net_raw = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    f = write((union.lower if layer == "lower" else union.upper) / "ping", b"x", mode=0o755)
    os.setxattr(f, "security.capability", cap_net_raw)
    mnt = union.mount()
    with open(mnt / "ping", "ab") as out:
        out.write(b"y")
    assert errno_of(lambda: os.getxattr(mnt / "ping", "security.capability")) == errno.ENODATA
    os.setxattr(mnt / "ping", "security.capability", cap_net_raw)
    with open(mnt / "ping", "ab") as out:
        out.write(b"z")
    assert errno_of(lambda: os.getxattr(mnt / "ping", "security.capability")) == errno.ENODATA
    assert (
        errno_of(lambda: os.getxattr(union.upper / "ping", "security.capability")) == errno.ENODATA
    )


def test_overlay_xattrs_on_lower_entries_are_neither_shown_nor_copied_up(union: Union) -> None:
    """A layer that was once an upper dir carries the kernel's own markers (origin, impure)."""
    stale_origin = b"\x00\xfb\x1d\x00\x01stale-origin-from-another-overlay"
    f = write(union.lower / "d" / "f")
    os.setxattr(f, "trusted.overlay.origin", stale_origin)
    os.setxattr(f, "user.kept", b"1")
    os.setxattr(union.lower / "d", "trusted.overlay.impure", b"y")
    mnt = union.mount()
    assert os.listxattr(mnt / "d" / "f") == ["user.kept"]
    assert os.listxattr(mnt / "d") == []
    os.chmod(mnt / "d" / "f", 0o600)
    assert xattr(union.upper / "d" / "f", b"trusted.overlay.origin") != stale_origin
    assert xattr(union.upper / "d" / "f", b"user.kept") == b"1"


def test_empty_values_and_non_utf8_names_round_trip(union: Union) -> None:
    mnt = union.mount()
    f = write(mnt / "f")
    os.setxattr(f, b"user.empty", b"")
    os.setxattr(f, b"user.caf\xe9", b"latin")
    assert os.getxattr(f, b"user.empty") == b""
    assert os.getxattr(f, b"user.caf\xe9") == b"latin"
    assert sorted(os.fsencode(n) for n in os.listxattr(f)) == [b"user.caf\xe9", b"user.empty"]
