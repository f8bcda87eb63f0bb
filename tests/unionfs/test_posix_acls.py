"""POSIX ACLs through the union, with the kernel overlayfs as the reference: the kernel
checks them (a named-user entry grants or denies what the mode alone would not), they
survive a copy-up and a chmod, and a directory's default ACL is inherited by what is made
in it, wherever the union makes it (in the upper dir, or in the workdir first)."""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unionfs.conftest import Union
from tests.unionfs.posix_helpers import (
    GROUP,
    GROUP_OBJ,
    MASK,
    NAMED_USER,
    NO_ID,
    OTHER,
    OTHER_GROUP,
    OTHER_USER,
    USER,
    USER_OBJ,
    Acl,
    as_user,
    decode_acl,
    encode_acl,
    whiteout,
)

pytestmark = pytest.mark.root

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"

R, W, X = 4, 2, 1


def acl_of(path: Path, name: str = ACCESS) -> Acl | None:
    try:
        return decode_acl(os.getxattr(path, name))
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise


def base(user: int, group: int, other: int) -> Acl:
    return [(USER_OBJ, user, NO_ID), (GROUP_OBJ, group, NO_ID), (OTHER, other, NO_ID)]


def with_user(entries: Acl, uid: int, perm: int, mask: int) -> Acl:
    return [*entries, (NAMED_USER, perm, uid), (MASK, mask, NO_ID)]


def read_as(uid: int, gid: int, path: Path) -> bytes:
    return as_user(uid, gid, Path.read_bytes, path)


def errno_reading_as(uid: int, gid: int, path: Path) -> int:
    try:
        read_as(uid, gid, path)
    except OSError as exc:
        return exc.errno or 0
    return 0


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def lower_file(union: Union, rel: str, mode: int, acl: Acl | None = None) -> Path:
    path = union.lower / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)
    path.write_bytes(b"secret\n")
    os.chmod(path, mode)
    if acl is not None:
        os.setxattr(path, ACCESS, encode_acl(acl))
    return path


def test_a_named_user_entry_grants_what_the_mode_does_not(union: Union) -> None:
    lower_file(union, "d/f", 0o600, with_user(base(R | W, 0, 0), USER, R, R))
    mnt = union.mount()
    assert read_as(USER, GROUP, mnt / "d" / "f") == b"secret\n"
    assert errno_reading_as(OTHER_USER, OTHER_GROUP, mnt / "d" / "f") == errno.EACCES


def test_a_named_user_entry_denies_what_the_mode_grants(union: Union) -> None:
    lower_file(union, "d/f", 0o644, with_user(base(R | W, R, R), USER, 0, R))
    mnt = union.mount()
    assert errno_reading_as(USER, GROUP, mnt / "d" / "f") == errno.EACCES
    assert read_as(OTHER_USER, OTHER_GROUP, mnt / "d" / "f") == b"secret\n"


def test_an_acl_set_through_the_mount_copies_up_and_is_enforced(union: Union) -> None:
    lower = lower_file(union, "d/f", 0o600)
    mnt = union.mount()
    assert errno_reading_as(USER, GROUP, mnt / "d" / "f") == errno.EACCES
    acl = with_user(base(R | W, 0, 0), USER, R, R)
    os.setxattr(mnt / "d" / "f", ACCESS, encode_acl(acl))
    assert read_as(USER, GROUP, mnt / "d" / "f") == b"secret\n"
    assert acl_of(mnt / "d" / "f") == sorted(acl)
    assert acl_of(union.upper / "d" / "f") == sorted(acl)
    assert acl_of(lower) is None
    assert os.stat(mnt / "d" / "f").st_mode & 0o777 == 0o640  # the mask shows as group bits
    os.removexattr(mnt / "d" / "f", ACCESS)
    assert errno_reading_as(USER, GROUP, mnt / "d" / "f") == errno.EACCES


def test_an_acl_survives_a_copy_up_by_another_change(union: Union) -> None:
    lower_file(union, "d/f", 0o600, with_user(base(R | W, 0, 0), USER, R | W, R | W))
    mnt = union.mount()
    assert read_as(USER, GROUP, mnt / "d" / "f") == b"secret\n"
    as_user(USER, GROUP, _append, mnt / "d" / "f", b"more\n")  # the copy-up, by USER
    assert (union.upper / "d" / "f").read_bytes() == b"secret\nmore\n"
    assert acl_of(union.upper / "d" / "f") is not None
    assert errno_reading_as(OTHER_USER, OTHER_GROUP, mnt / "d" / "f") == errno.EACCES
    assert read_as(USER, GROUP, mnt / "d" / "f") == b"secret\nmore\n"


def test_a_chmod_narrows_the_mask_and_the_kernel_sees_it_at_once(union: Union) -> None:
    lower_file(union, "d/f", 0o640, with_user(base(R | W, R, 0), USER, R, R))
    mnt = union.mount()
    assert read_as(USER, GROUP, mnt / "d" / "f") == b"secret\n"  # the ACL is cached now
    os.chmod(mnt / "d" / "f", 0o600)  # the mask becomes ---
    assert errno_reading_as(USER, GROUP, mnt / "d" / "f") == errno.EACCES
    acl = acl_of(mnt / "d" / "f")
    assert acl is not None and (MASK, 0, NO_ID) in acl


# -- default ACLs --------------------------------------------------------------------------

# user::rwx user:USER:rwx group::r-x mask::rwx other::r-x, as a directory's default ACL.
INHERITED = with_user(base(R | W | X, R | X, R | X), USER, R | W | X, R | W | X)


def shared_dir(union: Union, rel: str = "shared") -> Path:
    d = union.lower / rel
    d.mkdir(parents=True)
    os.chmod(d, 0o755)
    os.setxattr(d, DEFAULT, encode_acl(INHERITED))
    return d


def _create(path: Path, mode: int) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))


def _mkdir(path: Path, mode: int) -> None:
    os.mkdir(path, mode)


def check_inherited_file(path: Path) -> None:
    """A file made with mode 0666 under umask 022 in a directory with INHERITED: the umask
    does not apply (POSIX: a default ACL replaces it), the mode masks the entries."""
    assert os.stat(path).st_mode & 0o7777 == 0o664
    acl = acl_of(path)
    assert acl == sorted(with_user(base(R | W, R | X, R), USER, R | W | X, R | W)), acl


def check_inherited_dir(path: Path) -> None:
    assert os.stat(path).st_mode & 0o7777 == 0o775
    assert acl_of(path) == sorted(INHERITED)
    assert acl_of(path, DEFAULT) == sorted(INHERITED)


@pytest.mark.parametrize("where", ["upper", "lower", "over-whiteout"])
def test_a_new_file_inherits_the_default_acl(union: Union, where: str) -> None:
    d = shared_dir(union)
    if where == "over-whiteout":
        (union.lower / "shared" / "f").write_bytes(b"old")
        whiteout(union.upper / "shared" / "f")
        os.setxattr(union.upper / "shared", DEFAULT, encode_acl(INHERITED))
    mnt = union.mount()
    if where == "upper":
        os.setxattr(mnt / "shared", "user.touch", b"1")  # the directory is copied up first
    as_user(0, 0, _create, mnt / "shared" / "f", 0o666, umask=0o022)
    check_inherited_file(mnt / "shared" / "f")
    check_inherited_file(union.upper / "shared" / "f")
    as_user(USER, GROUP, _append, mnt / "shared" / "f", b"written by USER\n")
    assert read_as(OTHER_USER, OTHER_GROUP, mnt / "shared" / "f") == b"written by USER\n"
    assert acl_of(d, DEFAULT) == sorted(INHERITED)


@pytest.mark.parametrize("where", ["upper", "lower", "over-whiteout"])
def test_a_new_directory_inherits_the_default_acl(union: Union, where: str) -> None:
    shared_dir(union)
    if where == "over-whiteout":
        (union.lower / "shared" / "sub").mkdir()
        whiteout(union.upper / "shared" / "sub")
        os.setxattr(union.upper / "shared", DEFAULT, encode_acl(INHERITED))
    mnt = union.mount()
    if where == "upper":
        os.setxattr(mnt / "shared", "user.touch", b"1")
    as_user(0, 0, _mkdir, mnt / "shared" / "sub", 0o777, umask=0o022)
    check_inherited_dir(mnt / "shared" / "sub")
    check_inherited_dir(union.upper / "shared" / "sub")
    as_user(USER, GROUP, _create, mnt / "shared" / "sub" / "f", 0o666, umask=0o077)
    assert acl_of(mnt / "shared" / "sub" / "f") is not None


def test_without_a_default_acl_the_umask_applies(union: Union) -> None:
    d = union.lower / "plain"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)
    mnt = union.mount()
    as_user(USER, GROUP, _create, mnt / "plain" / "f", 0o666, umask=0o027)
    as_user(USER, GROUP, _mkdir, mnt / "plain" / "d", 0o777, umask=0o027)
    assert os.stat(mnt / "plain" / "f").st_mode & 0o777 == 0o640
    assert os.stat(mnt / "plain" / "d").st_mode & 0o777 == 0o750
    assert acl_of(mnt / "plain" / "f") is None


# -- a layer without ACLs ------------------------------------------------------------------


@pytest.fixture
def ramfs() -> Iterator[Path]:
    """A directory on ramfs, which has no xattrs at all (EOPNOTSUPP). Requested before
    `union`, it outlives the union's unmount and final checks."""
    path = Path(tempfile.mkdtemp(prefix="lamina-ramfs-"))
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(path)], check=True)
    try:
        os.chmod(path, 0o755)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
        path.rmdir()


def test_a_lower_layer_without_xattrs_reads_as_having_no_acls(ramfs: Path, union: Union) -> None:
    """A permission check that asks for an ACL the layer cannot hold sees none, and
    does not fail."""
    (ramfs / "f").write_bytes(b"public\n")
    os.chmod(ramfs / "f", 0o664)
    union.layers = dataclasses.replace(union.layers, lowers=(*union.lowers, ramfs))
    mnt = union.mount()
    assert read_as(USER, GROUP, mnt / "f") == b"public\n"
    assert acl_of(mnt / "f") is None


def test_an_owner_outside_the_group_setting_an_acl_loses_setgid(union: Union) -> None:
    """As chmod would: the kernel clears set-group-ID when the caller is neither in the
    file's group nor privileged (the union sets the ACL as root, so it must be told)."""
    f = lower_file(union, "d/f", 0o644)
    os.chown(f, USER, OTHER_GROUP)
    os.chmod(f, 0o2775)
    mnt = union.mount()
    acl = encode_acl(with_user(base(R | W | X, R | X, R), OTHER_USER, R, R | X))
    as_user(USER, GROUP, os.setxattr, mnt / "d" / "f", ACCESS, acl)
    assert os.stat(mnt / "d" / "f").st_mode & 0o7777 == 0o754
    assert os.stat(union.upper / "d" / "f").st_mode & 0o7777 == 0o754
    as_user(USER, OTHER_GROUP, os.chmod, mnt / "d" / "f", 0o2775)  # in the group: kept
    as_user(USER, OTHER_GROUP, os.setxattr, mnt / "d" / "f", ACCESS, acl)
    assert os.stat(mnt / "d" / "f").st_mode & 0o7777 == 0o2754


def test_noacl_leaves_the_check_to_the_mode(union: Union) -> None:
    """fuse-overlayfs's `noacl`: ACLs are kept and shown, but the kernel checks the mode
    alone (the kernel overlayfs has no such option)."""
    if union.is_kernel:
        pytest.skip("a unionfs (and fuse-overlayfs) option")
    lower_file(union, "d/f", 0o644, with_user(base(R | W, R, R), USER, 0, R))
    mnt = union.mount(["noacl"])
    assert read_as(USER, GROUP, mnt / "d" / "f") == b"secret\n"
    assert acl_of(mnt / "d" / "f") is not None
