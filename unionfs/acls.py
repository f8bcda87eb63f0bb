"""POSIX ACLs at creation: what a new entry's mode and ACLs are, given its parent's default
ACL and the caller's mode and umask.

The kernel checks ACLs itself (we agree FUSE_POSIX_ACL) and the upper filesystem works out
inheritance for what we create in place. Two cases are ours: the kernel leaves the umask
to us (FUSE_DONT_MASK, because POSIX says a default ACL replaces it), and an entry made in
the workdir and renamed into place (over a whiteout, a new opaque directory) inherits
from the workdir, so we give it what the parent would have: the same computation as the
kernel's posix_acl_create(), done on the xattr form (linux/posix_acl_xattr.h).

The same form's named users and groups are what a mount that shows owners other than as
stored maps (uidmapping=, see idmap.py): map_named_ids.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"

_HEADER = struct.Struct("<I")  # version (2)
_ENTRY = struct.Struct("<HHI")  # tag perm id
USER_OBJ, NAMED_USER, GROUP_OBJ, NAMED_GROUP, MASK, OTHER = 1, 2, 4, 8, 0x10, 0x20


def default_acl(directory: bytes) -> bytes | None:
    """A directory's default ACL in xattr form; None if it has none, or its filesystem
    has no ACLs."""
    try:
        return os.getxattr(directory, DEFAULT)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return None
        raise


def creation_mode(mode: int, umask: int, parent_default: bytes | None) -> int:
    """The mode to create with: the umask applies only where no default ACL does."""
    return mode if parent_default is not None else mode & ~umask


class Inherited:
    """What an entry made elsewhere must be given to look made in its parent. (Not a
    NamedTuple: `typing` is not on a mount's start path.)"""

    __slots__ = ("access", "default", "mode")

    def __init__(self, mode: int, access: bytes | None, default: bytes | None) -> None:
        self.mode = mode  # the mode to chmod to (no type bits)
        self.access = access  # the access ACL, None if the mode says it all
        self.default = default  # a directory's default ACL (the parent's)


def inherit(parent_default: bytes, mode: int, is_dir: bool) -> Inherited:
    """posix_acl_create(): the parent's default ACL masked by the requested mode (which
    is masked by it in turn). An ACL of the three base entries is the mode alone."""
    header = _HEADER.size
    entries = [list(e) for e in _ENTRY.iter_unpack(parent_default[header:])]
    perms = mode & 0o777
    group_obj: list[int] | None = None
    mask_obj: list[int] | None = None
    extended = False
    for entry in entries:
        tag = entry[0]
        if tag == USER_OBJ:
            entry[1] &= perms >> 6
            perms &= (entry[1] << 6) | 0o077
        elif tag == OTHER:
            entry[1] &= perms & 0o7
            perms &= entry[1] | 0o770
        elif tag == GROUP_OBJ:
            group_obj = entry
        elif tag == MASK:
            mask_obj = entry
            extended = True
        elif tag in (NAMED_USER, NAMED_GROUP):
            extended = True
        else:
            raise OSError(errno.EIO, "malformed default ACL")
    scope = mask_obj if mask_obj is not None else group_obj
    if scope is None:
        raise OSError(errno.EIO, "malformed default ACL: no group entry")
    scope[1] &= (perms >> 3) & 0o7
    perms &= (scope[1] << 3) | 0o707
    access = None
    if extended:
        access = parent_default[:header] + b"".join(_ENTRY.pack(*e) for e in entries)
    return Inherited(
        stat.S_IMODE(mode) & ~0o777 | perms,
        access,
        parent_default if is_dir else None,
    )


def map_named_ids(
    value: bytes, map_uid: Callable[[int], int] | None, map_gid: Callable[[int], int] | None
) -> bytes:
    """An ACL (xattr form) with the ids of its named users and groups mapped (None: left
    as they are); what is not an ACL the kernel would take is left for the layer to refuse."""
    header = _HEADER.size
    if len(value) < header or (len(value) - header) % _ENTRY.size:
        return value
    entries = []
    for tag, perm, ident in _ENTRY.iter_unpack(value[header:]):
        if tag == NAMED_USER and map_uid is not None:
            ident = map_uid(ident)
        elif tag == NAMED_GROUP and map_gid is not None:
            ident = map_gid(ident)
        entries.append(_ENTRY.pack(tag, perm, ident))
    return value[:header] + b"".join(entries)


def give(path: bytes, inherited: Inherited) -> None:
    """Give an entry made elsewhere the ACLs and mode it inherits (the mode last: setting an
    access ACL sets the mode's permission bits from it, and leaves the set-id bits)."""
    if inherited.access is not None:
        os.setxattr(path, ACCESS, inherited.access)
    if inherited.default is not None:
        os.setxattr(path, DEFAULT, inherited.default)
    os.chmod(path, inherited.mode)
