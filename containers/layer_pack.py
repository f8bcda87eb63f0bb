"""Write a directory as a layer tar, deterministically: same tree, same bytes, same digest.

Used for `lamina import DIR` (a plain tree) and `lamina commit` (an overlay upper dir, whose
0/0 whiteouts become `.wh.NAME` entries and opaque dirs a `.wh..wh..opq` entry). Entries are
sorted by name, owners are numeric only, times whole seconds, xattrs as PAX `SCHILY.xattr.`,
hard links as link entries to the first path of the inode.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

from containers.layer_tar import XATTR_PAX_PREFIX, read_xattrs
from unionfs.whiteouts import (
    OCI_OPAQUE_NAME,
    is_opaque,
    is_whiteout,
    oci_whiteout_name,
    read_redirect,
)

# Called for a directory carrying an overlay redirect xattr: yields the entries to write
# in its place (commit turns it into a deletion plus the full merged directory).
# Each yielded entry comes with the host path holding its data (for regular files).
RedirectHandler = Callable[[bytes], Iterator[tuple[tarfile.TarInfo, bytes | None]]]


class UnsupportedEntry(Exception):
    """The tree holds something a layer tar cannot express faithfully."""


def tar_info(rel: bytes, path: bytes, st: os.stat_result) -> tarfile.TarInfo | None:
    """A TarInfo for one entry (no data yet); None for sockets, which tar cannot hold."""
    info = tarfile.TarInfo(os.fsdecode(rel))
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        info.type, info.size = tarfile.REGTYPE, st.st_size
    elif stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.fsdecode(os.readlink(path))
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
    else:
        return None
    info.pax_headers = {
        XATTR_PAX_PREFIX + name.decode("utf-8", "surrogateescape"): value.decode(
            "utf-8", "surrogateescape"
        )
        for name, value in read_xattrs(path).items()
    }
    return info


def marker_info(rel: bytes, st: os.stat_result) -> tarfile.TarInfo:
    """An empty regular file standing for an OCI whiteout or opaque marker."""
    info = tarfile.TarInfo(os.fsdecode(rel))
    info.mode, info.uid, info.gid, info.mtime = 0, st.st_uid, st.st_gid, int(st.st_mtime)
    info.uname = info.gname = ""
    return info


class LayerWriter:
    """Writes one directory tree into a tar stream."""

    def __init__(
        self,
        tar: tarfile.TarFile,
        *,
        overlay: bool,
        redirect: RedirectHandler | None = None,
    ) -> None:
        self.tar = tar
        self.overlay = overlay
        self.redirect = redirect
        self.inodes: dict[tuple[int, int], str] = {}

    def add_tree(self, root: bytes, rel: bytes = b"") -> None:
        """Add every entry below root/rel (not rel itself), sorted by name."""
        base = os.path.join(root, rel) if rel else root
        for name in sorted(os.listdir(base)):
            child_rel = os.path.join(rel, name) if rel else name
            self.add_entry(root, child_rel)

    def add_entry(self, root: bytes, rel: bytes) -> None:
        path = os.path.join(root, rel)
        st = os.lstat(path)
        if self.overlay and is_whiteout(st):
            parent, name = os.path.split(rel)
            self.tar.addfile(marker_info(os.path.join(parent, oci_whiteout_name(name)), st))
            return
        if self.overlay and stat.S_ISDIR(st.st_mode) and read_redirect(path) is not None:
            if self.redirect is None:
                raise UnsupportedEntry(f"{os.fsdecode(rel)}: renamed directory (redirect)")
            for merged, source in self.redirect(rel):
                self._add_info(merged, source)
            return
        if self.overlay and stat.S_ISREG(st.st_mode) and _is_metacopy(path):
            # metacopy=on keeps only metadata in the upper; the data is still below.
            raise UnsupportedEntry(f"{os.fsdecode(rel)}: metacopy upper (mount without metacopy)")
        info = tar_info(rel, path, st)
        if info is None:
            return
        if info.isreg() and st.st_nlink > 1:
            first = self.inodes.setdefault((st.st_dev, st.st_ino), info.name)
            if first != info.name:
                info.type, info.linkname, info.size = tarfile.LNKTYPE, first, 0
                info.pax_headers = {}
        self._add_info(info, path)
        if info.isdir():
            if self.overlay and is_opaque(path):
                self.tar.addfile(marker_info(os.path.join(rel, OCI_OPAQUE_NAME), st))
            self.add_tree(root, rel)

    def _add_info(self, info: tarfile.TarInfo, source: bytes | None) -> None:
        if info.isreg() and source is not None:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                self.tar.addfile(info, f)
        else:
            self.tar.addfile(info)


def _is_metacopy(path: bytes) -> bool:
    try:
        os.getxattr(path, b"trusted.overlay.metacopy", follow_symlinks=False)
    except OSError:
        return False
    return True


def pack_directory(
    src: str | os.PathLike[str],
    out: BinaryIO,
    *,
    overlay: bool,
    redirect: RedirectHandler | None = None,
) -> None:
    """Write the tree below src as an uncompressed layer tar to out."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        LayerWriter(tar, overlay=overlay, redirect=redirect).add_tree(os.fsencode(src))
