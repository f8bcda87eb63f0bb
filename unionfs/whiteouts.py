"""The overlay markers on disk, in the kernel overlayfs format, and the OCI layer names.

- whiteout: a character device 0/0 named like the deleted entry;
- opaque directory: xattr `trusted.overlay.opaque = "y"` (`user.overlay.opaque` with
  the `userxattr` option);
- redirect: xattr `trusted.overlay.redirect` on a renamed merged directory, naming where
  its lower parts live (relative name, or absolute path from the root);
- OCI/docker layers use `.wh.NAME` files and a `.wh..wh..opq` file instead.
"""

from __future__ import annotations

import errno
import os
import stat

WHITEOUT_DEV = os.makedev(0, 0)
OCI_WHITEOUT_PREFIX = b".wh."
OCI_OPAQUE_NAME = b".wh..wh..opq"


class XattrNames:
    """The overlay's own xattr names for one namespace (trusted. or user.)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def __eq__(self, other: object) -> bool:
        return isinstance(other, XattrNames) and other.prefix == self.prefix

    def __hash__(self) -> int:
        return hash(self.prefix)

    def __repr__(self) -> str:
        return f"XattrNames({self.prefix!r})"

    @classmethod
    def for_mode(cls, userxattr: bool) -> XattrNames:
        return cls(b"user.overlay." if userxattr else b"trusted.overlay.")

    @property
    def opaque(self) -> bytes:
        return self.prefix + b"opaque"

    @property
    def redirect(self) -> bytes:
        return self.prefix + b"redirect"

    def is_private(self, name: bytes) -> bool:
        """True for the overlay's own xattrs, which the merged view never shows."""
        return name.startswith(self.prefix)


TRUSTED = XattrNames.for_mode(userxattr=False)


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == WHITEOUT_DEV


def make_whiteout(path: bytes | str, *, dir_fd: int | None = None) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, WHITEOUT_DEV, dir_fd=dir_fd)


def is_opaque(path: bytes | str, names: XattrNames = TRUSTED) -> bool:
    """True if the directory at path carries the opaque marker (never follows a symlink)."""
    try:
        return os.getxattr(path, names.opaque, follow_symlinks=False) == b"y"
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOENT):
            return False
        raise


def set_opaque(path: bytes | str, names: XattrNames = TRUSTED) -> None:
    os.setxattr(path, names.opaque, b"y", follow_symlinks=False)


def read_redirect(path: bytes | str, names: XattrNames = TRUSTED) -> bytes | None:
    try:
        return os.getxattr(path, names.redirect, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOENT):
            return None
        raise


def oci_whiteout_target(name: bytes) -> bytes | None:
    """`.wh.foo` -> `foo`; None for a name that is not an OCI whiteout (or is the opaque one)."""
    if name == OCI_OPAQUE_NAME or not name.startswith(OCI_WHITEOUT_PREFIX):
        return None
    target = name[len(OCI_WHITEOUT_PREFIX) :]
    return target or None


def oci_whiteout_name(name: bytes) -> bytes:
    return OCI_WHITEOUT_PREFIX + name
