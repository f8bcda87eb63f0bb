"""unionfs.acls against the kernel's own posix_acl_create(): for any default ACL and mode,
what we compute for an entry made in the workdir is what the kernel gives one made in the
directory itself (on this machine's /tmp)."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unionfs import acls

pytestmark = pytest.mark.root

_ENTRY = struct.Struct("<HHI")
NO_ID = 0xFFFFFFFF


@st.composite
def default_acls(draw: st.DrawFn) -> bytes:
    perm = st.integers(0, 7)
    users = draw(st.lists(st.integers(1, 70000), unique=True, max_size=3))
    groups = draw(st.lists(st.integers(1, 70000), unique=True, max_size=3))
    entries = [(acls.USER_OBJ, draw(perm), NO_ID)]
    entries += [(acls.NAMED_USER, draw(perm), uid) for uid in sorted(users)]
    entries.append((acls.GROUP_OBJ, draw(perm), NO_ID))
    entries += [(acls.NAMED_GROUP, draw(perm), gid) for gid in sorted(groups)]
    spare_mask: bool = draw(st.booleans())
    if users or groups or spare_mask:  # a mask is needed with named entries
        entries.append((acls.MASK, draw(perm), NO_ID))
    entries.append((acls.OTHER, draw(perm), NO_ID))
    return struct.pack("<I", 2) + b"".join(_ENTRY.pack(*e) for e in entries)


def xattr_or_none(path: bytes, name: bytes) -> bytes | None:
    try:
        return os.getxattr(path, name)
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise


@pytest.fixture(scope="module")
def scratch() -> Iterator[bytes]:
    path = tempfile.mkdtemp(prefix="lamina-acls-")
    old_umask = os.umask(0o022)  # ignored under a default ACL: the point of the test
    try:
        yield os.fsencode(path)
    finally:
        os.umask(old_umask)
        shutil.rmtree(path)


@settings(max_examples=150, deadline=None)
@given(default=default_acls(), mode=st.integers(0, 0o1777), is_dir=st.booleans())
def test_inherit_matches_the_kernel(
    scratch: bytes, default: bytes, mode: int, is_dir: bool
) -> None:
    parent = tempfile.mkdtemp(dir=scratch)
    os.setxattr(parent, acls.DEFAULT, default)
    child = parent + b"/child"
    if is_dir:
        os.mkdir(child, mode)
    else:
        os.close(os.open(child, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
    got = acls.inherit(default, mode, is_dir)
    assert got.mode & 0o777 == os.lstat(child).st_mode & 0o777
    assert got.access == xattr_or_none(child, acls.ACCESS)
    assert got.default == xattr_or_none(child, acls.DEFAULT)
    assert acls.default_acl(parent) == default


def test_no_default_acl_means_the_umask(scratch: bytes) -> None:
    plain = tempfile.mkdtemp(dir=scratch)
    assert acls.default_acl(plain) is None
    assert acls.creation_mode(0o666, 0o027, None) == 0o640
    assert acls.creation_mode(0o666, 0o027, b"an acl") == 0o666


def test_a_malformed_default_acl_is_refused() -> None:
    no_group = struct.pack("<I", 2) + _ENTRY.pack(acls.USER_OBJ, 7, NO_ID)
    with pytest.raises(OSError, match="no group entry"):
        acls.inherit(no_group, 0o644, False)
    unknown_tag = no_group + _ENTRY.pack(0x40, 7, NO_ID)
    with pytest.raises(OSError, match="malformed"):
        acls.inherit(unknown_tag, 0o644, False)
