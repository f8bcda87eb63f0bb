"""fuse-overlayfs's own options, with fuse-overlayfs as the reference: the same layers, the
same calls, the same results seen in the mount and left on disk. Owners shown other than
as stored (uidmapping=, gidmapping=, squash_to_root, squash_to_uid=, squash_to_gid=),
static_nlink, noxattrs=1 and fsync=0.

The one place we differ on purpose is POSIX ACLs: fuse-overlayfs shows their named users as
stored, so the kernel checks them against the wrong ids; we map them (tested on ours alone).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import mounting
from tests.unionfs.posix_helpers import (
    GROUP_OBJ,
    MASK,
    NAMED_GROUP,
    NAMED_USER,
    NO_ID,
    OTHER,
    USER_OBJ,
    as_user,
    decode_acl,
    encode_acl,
)
from unionfs.idmap import IdRanges, Ownership

pytestmark = pytest.mark.root

FUSE_OVERLAYFS = Path("/usr/bin/fuse-overlayfs")
OVERFLOW = 65534
# As a rootless container's mapping is written: stored 0 shows as 1000, stored 1..65536
# as 110000..175535. Host root (0) is outside it.
MAPPING = "0:1000:1:1:110000:65536"
# Stored owners of the lower layer's entries: mapped, mapped, and outside the mapping.
LOWER_OWNERS = {"root-file": (0, 0), "user-file": (1, 1), "far-file": (110005, 110005)}


def make_lower(base: Path) -> mounting.Layers:
    layers = mounting.make_layers(base, 1)
    lower = layers.lowers[0]
    for name, (uid, gid) in LOWER_OWNERS.items():
        (lower / name).write_bytes(name.encode())
        os.chown(lower / name, uid, gid)
    shared = lower / "shared"  # anyone may make entries in it
    shared.mkdir()
    os.chmod(shared, 0o777)
    (lower / "dir" / "sub").mkdir(parents=True)
    os.chown(lower / "dir", 5, 5)
    return layers


def owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def _make_file(path: Path) -> None:
    path.write_bytes(b"made")


def observe(program: Path, options: list[str], base: Path) -> dict[str, object]:
    """What one implementation shows and stores for a fixed series of calls."""
    layers = make_lower(base)
    mnt = base / "mnt"
    mnt.mkdir()
    seen: dict[str, object] = {}
    with mounting.unionfs(layers, mnt, options, program=program):
        listed = {e.name: e.stat(follow_symlinks=False) for e in os.scandir(mnt)}  # READDIRPLUS
        for name in [*LOWER_OWNERS, "dir", "shared"]:
            seen[f"listed {name}"] = (listed[name].st_uid, listed[name].st_gid)
            seen[f"stat {name}"] = owner(mnt / name)
        seen["nlink dir"] = os.lstat(mnt / "dir").st_nlink
        # A caller inside the mapping (shows as 110000, stored as 1), one outside it (root).
        as_user(110000, 110000, _make_file, mnt / "shared" / "by-mapped")
        _make_file(mnt / "shared" / "by-root")
        (mnt / "made-dir").mkdir()
        os.chown(mnt / "user-file", 110003, 110004)  # a chown inside the mapping
        os.chown(mnt / "far-file", 4242, 4242)  # and outside it
        for name in ("shared/by-mapped", "shared/by-root", "made-dir", "user-file", "far-file"):
            seen[f"shown {name}"] = owner(mnt / name)
    for name in ("shared/by-mapped", "shared/by-root", "made-dir", "user-file", "far-file"):
        seen[f"stored {name}"] = owner(layers.upper_dir / name)
    return seen


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A scratch dir every user can reach (pytest's tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="lamina-owners-"))
    os.chmod(base, 0o755)
    yield base
    if not any(mounting.is_mountpoint(p / "mnt") for p in base.iterdir()):
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def bases(scratch: Path) -> tuple[Path, Path]:
    if not FUSE_OVERLAYFS.exists():
        pytest.skip("fuse-overlayfs (the reference for these options) is not installed")
    return scratch / "fuse-overlayfs", scratch / "unionfs"


OPTION_SETS = {
    "mapping": [f"uidmapping={MAPPING}", f"gidmapping={MAPPING}"],
    "uid mapping alone": [f"uidmapping={MAPPING}"],
    "squash_to_root": ["squash_to_root"],
    "squash_to_uid and gid": ["squash_to_uid=1000", "squash_to_gid=1001"],
    "squash_to_uid over squash_to_root": ["squash_to_root", "squash_to_uid=7"],
    "squash over a mapping": ["squash_to_uid=7", f"uidmapping={MAPPING}", f"gidmapping={MAPPING}"],
    "static_nlink": ["static_nlink"],
}


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_owners_are_shown_and_stored_as_by_fuse_overlayfs(
    options: list[str], bases: tuple[Path, Path]
) -> None:
    theirs, ours = bases
    expected = observe(FUSE_OVERLAYFS, options, theirs)
    assert observe(mounting.UNIONFS, options, ours) == expected


def test_a_mapping_shows_stored_ids_shifted_and_stores_callers_unshifted(
    bases: tuple[Path, Path],
) -> None:
    """The reference could be wrong with us: the figures the man page promises."""
    seen = observe(mounting.UNIONFS, OPTION_SETS["mapping"], bases[1])
    assert seen["stat root-file"] == (1000, 1000)
    assert seen["listed user-file"] == (110000, 110000)
    assert seen["stat far-file"] == (OVERFLOW, OVERFLOW)
    assert seen["stored shared/by-mapped"] == (1, 1)
    assert seen["stored user-file"] == (4, 5)
    assert seen["stored shared/by-root"] == (OVERFLOW, OVERFLOW)  # root is outside it


def test_static_nlink_shows_one_link_for_every_directory(bases: tuple[Path, Path]) -> None:
    assert observe(mounting.UNIONFS, [], bases[0])["nlink dir"] == 3
    assert observe(mounting.UNIONFS, ["static_nlink"], bases[1])["nlink dir"] == 1


def named(value: bytes) -> set[tuple[int, int]]:
    """The (tag, id) of an ACL's named entries."""
    entries = decode_acl(value)
    return {(tag, ident) for tag, _, ident in entries if tag in (NAMED_USER, NAMED_GROUP)}


def _read(path: Path) -> bytes:
    return path.read_bytes()


def test_acls_name_users_as_the_mount_shows_them(scratch: Path) -> None:
    """Stored user:5 shows (and is checked by the kernel) as user:1005; one set through the
    mount for shown user 1010 is stored for user 10."""
    base = scratch / "acl"
    layers = mounting.make_layers(base, 1)
    secret = layers.lowers[0] / "secret"
    secret.write_bytes(b"for user 5 alone")
    os.chmod(secret, 0o640)
    os.setxattr(
        secret,
        "system.posix_acl_access",
        encode_acl([(USER_OBJ, 6, NO_ID), (NAMED_USER, 4, 5), (GROUP_OBJ, 0, NO_ID),
            (NAMED_GROUP, 4, 6), (MASK, 4, NO_ID), (OTHER, 0, NO_ID)]),
    )  # fmt: skip
    mnt = base / "mnt"
    mnt.mkdir()
    options = ["uidmapping=0:1000:100", "gidmapping=0:2000:100"]
    with mounting.unionfs(layers, mnt, options):
        shown = os.getxattr(mnt / "secret", "system.posix_acl_access")
        assert named(shown) == {(NAMED_USER, 1005), (NAMED_GROUP, 2006)}
        assert as_user(1005, 3000, _read, mnt / "secret") == b"for user 5 alone"
        with pytest.raises(PermissionError):
            as_user(5, 3000, _read, mnt / "secret")  # stored 5 is not the user shown as 5
        assert as_user(4000, 2006, _read, mnt / "secret") == b"for user 5 alone"
        os.setxattr(
            mnt / "secret",
            "system.posix_acl_access",
            encode_acl([(USER_OBJ, 6, NO_ID), (NAMED_USER, 6, 1010), (GROUP_OBJ, 0, NO_ID),
                (MASK, 6, NO_ID), (OTHER, 0, NO_ID)]),
        )  # fmt: skip
        assert as_user(1010, 3000, _read, mnt / "secret") == b"for user 5 alone"
    stored = os.getxattr(layers.upper_dir / "secret", "system.posix_acl_access")
    assert named(stored) == {(NAMED_USER, 10)}


# -- the mapping itself, without a mount ----------------------------------------------------


def test_ranges_map_both_ways_and_overflow_outside() -> None:
    ranges = IdRanges.parse(MAPPING)
    assert [ranges.shown(i) for i in (0, 1, 65536, 65537)] == [1000, 110000, 175535, OVERFLOW]
    assert [ranges.stored(i) for i in (1000, 110000, 175535, 0)] == [0, 1, 65536, OVERFLOW]
    for stored in (0, 1, 77, 65536):
        assert ranges.stored(ranges.shown(stored)) == stored


@pytest.mark.parametrize(
    "text",
    ["0:1000", "0:1000:1:5", "a:1:1", "0:-1:1", "0:1000:0", "0:10:5:3:100:5", "0:10:5:100:12:5",
     "4294967290:0:10"],
)  # fmt: skip
def test_malformed_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        IdRanges.parse(text)


def test_an_acl_without_named_entries_or_not_an_acl_passes_unchanged() -> None:
    ownership = Ownership(IdRanges.parse("0:1000:100"))
    plain = encode_acl([(USER_OBJ, 6, NO_ID), (GROUP_OBJ, 4, NO_ID), (OTHER, 0, NO_ID)])
    assert ownership.acl_shown(plain) == plain
    assert ownership.acl_stored(b"\x02\x00\x00\x00junk") == b"\x02\x00\x00\x00junk"
    with_group = encode_acl([(USER_OBJ, 6, NO_ID), (NAMED_GROUP, 4, 3), (MASK, 4, NO_ID)])
    assert named(ownership.acl_shown(with_group)) == {(NAMED_GROUP, 3)}  # no gid mapping


def test_squash_shows_one_owner_and_stores_through_the_mapping() -> None:
    ownership = Ownership(IdRanges.parse("0:1000:10"), show_uid=7, show_gid=None)
    assert ownership.shown(3, 3) == (7, 3)
    assert ownership.stored_uid(1003) == 3
    assert ownership.stored_uid(0) == OVERFLOW


def xattr_errors(program: Path, options: list[str], base: Path) -> dict[str, object]:
    layers = mounting.make_layers(base, 1)
    lower_file = layers.lowers[0] / "f"
    lower_file.write_bytes(b"lower")
    os.setxattr(lower_file, "user.kept", b"1")
    mnt = base / "mnt"
    mnt.mkdir()
    seen: dict[str, object] = {}
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: os.getxattr(mnt / "f", "user.kept"),
        "list": lambda: os.listxattr(mnt / "f"),
        "set": lambda: os.setxattr(mnt / "f", "user.new", b"2"),
        "remove": lambda: os.removexattr(mnt / "f", "user.kept"),
    }
    with mounting.unionfs(layers, mnt, options, program=program):
        for name, call in calls.items():
            try:
                seen[name] = call()
            except OSError as exc:
                seen[name] = errno.errorcode[exc.errno or 0]
        seen["data"] = (mnt / "f").read_bytes()
    return seen


def test_noxattrs_turns_extended_attributes_off(bases: tuple[Path, Path]) -> None:
    """fuse-overlayfs 1.10 still removes one (its removexattr does not check the option);
    ours refuses that too."""
    theirs, ours = bases
    expected = xattr_errors(FUSE_OVERLAYFS, ["noxattrs=1"], theirs)
    seen = xattr_errors(mounting.UNIONFS, ["noxattrs=1"], ours)
    unsupported = errno.errorcode[errno.EOPNOTSUPP]
    assert seen.pop("remove") == unsupported
    expected.pop("remove")
    assert seen == expected
    assert expected["get"] == expected["set"] == expected["list"] == unsupported


def test_fsync_0_skips_syncs_as_volatile_does() -> None:
    from unionfs.config import parse_options

    assert parse_options(["lowerdir=/a,fsync=0"], "/m").volatile
    assert not parse_options(["lowerdir=/a,fsync=1"], "/m").volatile
