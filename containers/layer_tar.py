"""Unpack one OCI layer tar into an overlay-format directory, checking every member.

We never call `tarfile.extractall`: each member is validated here against our rules, then
created relative to the destination with no symlink followed. The destination is a fresh
directory nobody else writes, so checking each parent with lstat is race-free.

Refused (raise UnsafeLayerError): absolute names, `..` components, NUL in names, symlinks
whose target climbs out of the layer root, hard links to anything outside the layer or not
yet unpacked, whiteouts of `.`/`..`, device nodes unless allowed, unknown member types, a
path below a non-directory, a truncated archive or one that is not a tar at all.

OCI markers become overlay markers: `.wh.NAME` a 0/0 character device, `.wh..wh..opq` the
opaque xattr, whatever their order in the tar (OCI image-spec layer.md: a whiteout hides
only lower layers, never entries of its own layer).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tarfile

from containers.oci import ImageFormatError
from containers.records import Record, field
from unionfs.whiteouts import (
    OCI_OPAQUE_NAME,
    OCI_WHITEOUT_PREFIX,
    is_whiteout,
    make_whiteout,
    oci_whiteout_target,
    set_opaque,
)

# Never accept the overlay's own markers from a layer's xattrs: they would change what the
# union shows (opaque, redirect, origin...) behind the tar's back.
PRIVATE_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
XATTR_PAX_PREFIX = "SCHILY.xattr."
COPY_CHUNK = 1 << 20


class UnsafeLayerError(ImageFormatError):
    """A layer member breaks one of the safety rules; the whole layer is refused."""


def split_member_name(name: str | bytes) -> tuple[bytes, ...]:
    """A tar member name as validated path components; () for the layer root itself."""
    raw = os.fsencode(name)
    if b"\0" in raw:
        raise UnsafeLayerError(f"member name contains NUL: {raw!r}")
    if raw.startswith(b"/"):
        raise UnsafeLayerError(f"absolute member name: {raw!r}")
    parts = tuple(p for p in raw.split(b"/") if p not in (b"", b"."))
    if b".." in parts:
        raise UnsafeLayerError(f"member name with '..': {raw!r}")
    return parts


def symlink_stays_inside(link_parts: tuple[bytes, ...], target: bytes) -> bool:
    """True if target, read from the link's directory (or the root if absolute), never
    climbs above the layer root. Absolute targets are fine: a container sees them rooted."""
    if b"\0" in target or not target:
        return False
    depth = 0 if target.startswith(b"/") else len(link_parts) - 1
    for part in target.split(b"/"):
        if part == b"..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in (b"", b"."):
            depth += 1
    return True


class DataSpan(Record, frozen=True):
    """Where one regular file's bytes sit in the tar, so they can be left out of tar-split."""

    path: bytes
    offset: int
    size: int


class UnpackResult(Record):
    """What unpacking learned: where file data sits, every member's path, where the tar ends."""

    spans: list[DataSpan] = field(default_factory=list)
    names: list[bytes] = field(default_factory=list)
    end_offset: int = 0


class _Unpacker(Record):
    root: bytes
    allow_devices: bool
    same_owner: bool
    whited_out: set[tuple[bytes, ...]] = field(default_factory=set)
    dir_times: dict[tuple[bytes, ...], int] = field(default_factory=dict)
    # Directories already checked to be real dirs of this layer: saves an lstat per parent
    # per member. Only we write the tree, and a removed dir clears it.
    known_dirs: set[tuple[bytes, ...]] = field(default_factory=set)

    def path(self, parts: tuple[bytes, ...]) -> bytes:
        return self.root + b"/" + b"/".join(parts) if parts else self.root

    def lstat(self, parts: tuple[bytes, ...]) -> os.stat_result | None:
        try:
            return os.lstat(self.path(parts))
        except FileNotFoundError:
            return None

    def lstat_inside(self, parts: tuple[bytes, ...]) -> os.stat_result | None:
        """lstat parts only if every parent is a real directory (so no symlink is followed)."""
        for i in range(1, len(parts)):
            st = self.lstat(parts[:i])
            if st is None or not stat.S_ISDIR(st.st_mode):
                return None
        return self.lstat(parts) if parts else None

    def ensure_dir(self, parts: tuple[bytes, ...]) -> None:
        """Make parts a real directory (parents first); never through a symlink."""
        if parts in self.known_dirs:
            return
        for i in range(1, len(parts) + 1):
            prefix = parts[:i]
            if prefix in self.known_dirs:
                continue
            st = self.lstat(prefix)
            if st is None or not stat.S_ISDIR(st.st_mode):
                if st is not None and not (is_whiteout(st) and prefix in self.whited_out):
                    msg = f"{_show(parts)!r}: {_show(prefix)!r} is not a directory"
                    raise UnsafeLayerError(msg)
                if st is not None:
                    os.unlink(self.path(prefix))
                os.mkdir(self.path(prefix), 0o755)
                if prefix in self.whited_out:
                    set_opaque(self.path(prefix))
            self.known_dirs.add(prefix)

    def clear(self, parts: tuple[bytes, ...], keep_dir: bool) -> os.stat_result | None:
        """Remove what is at parts, so a later member replaces an earlier one."""
        st = self.lstat(parts)
        if st is None:
            return None
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return st
            shutil.rmtree(self.path(parts))
            self.known_dirs.clear()  # rare: a later member replaced a whole directory
        else:
            os.unlink(self.path(parts))
        return None

    def whiteout(self, parent: tuple[bytes, ...], target: bytes) -> None:
        if target in (b".", b"..") or b"/" in target:
            raise UnsafeLayerError(f"whiteout of {os.fsdecode(target)!r}")
        self.ensure_dir(parent)
        parts = (*parent, target)
        self.whited_out.add(parts)
        st = self.lstat(parts)
        if st is None:
            make_whiteout(self.path(parts))
        elif stat.S_ISDIR(st.st_mode):
            # The dir of this layer stays; only what lies below it is deleted.
            set_opaque(self.path(parts))

    def member(self, tar: tarfile.TarFile, m: tarfile.TarInfo, result: UnpackResult) -> None:
        parts = split_member_name(m.name)
        result.names.append(b"/".join(parts))
        name = parts[-1] if parts else b""
        if name == OCI_OPAQUE_NAME:
            self.ensure_dir(parts[:-1])
            set_opaque(self.path(parts[:-1]))
            return
        if name.startswith(OCI_WHITEOUT_PREFIX + OCI_WHITEOUT_PREFIX):
            return  # other `.wh..wh.` entries are aufs metadata, meaningless here
        target = oci_whiteout_target(name)
        if name.startswith(OCI_WHITEOUT_PREFIX):
            if target is None:
                raise UnsafeLayerError(f"empty whiteout name: {m.name!r}")
            self.whiteout(parts[:-1], target)
            return
        self.ensure_dir(parts[:-1])
        path = self.path(parts)
        if m.isdir():
            if self.clear(parts, keep_dir=True) is None:
                os.mkdir(path, 0o700)
            if parts in self.whited_out:
                set_opaque(path)
            self.dir_times[parts] = _mtime_ns(m)
        elif not parts:
            raise UnsafeLayerError(f"non-directory member for the layer root: {m.name!r}")
        elif m.isreg():
            self.clear(parts, keep_dir=False)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                src = tar.extractfile(m)
                assert src is not None  # a regular member always has a data stream
                shutil.copyfileobj(src, out, COPY_CHUNK)
            if not m.issparse():
                result.spans.append(DataSpan(b"/".join(parts), m.offset_data, m.size))
        elif m.issym():
            link = os.fsencode(m.linkname)
            if not symlink_stays_inside(parts, link):
                raise UnsafeLayerError(f"symlink {m.name!r} -> {m.linkname!r} leaves the layer")
            self.clear(parts, keep_dir=False)
            os.symlink(link, path)
        elif m.islnk():
            self.hard_link(parts, m)
            return  # a hard link shares the target's inode and metadata
        elif m.ischr() or m.isblk():
            if not self.allow_devices:
                raise UnsafeLayerError(f"device node {m.name!r} (only root may import devices)")
            self.clear(parts, keep_dir=False)
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        elif m.isfifo():
            self.clear(parts, keep_dir=False)
            os.mkfifo(path, 0o600)
        else:
            raise UnsafeLayerError(f"unsupported member type {m.type!r}: {m.name!r}")
        self.metadata(path, m)

    def hard_link(self, parts: tuple[bytes, ...], m: tarfile.TarInfo) -> None:
        try:
            target = split_member_name(m.linkname)
        except UnsafeLayerError:
            msg = f"hard link {m.name!r} -> {m.linkname!r} leaves the layer"
            raise UnsafeLayerError(msg) from None
        st = self.lstat_inside(target)
        if st is None or stat.S_ISDIR(st.st_mode) or is_whiteout(st):
            raise UnsafeLayerError(f"hard link {m.name!r} -> {m.linkname!r}: no such file here")
        if target == parts:
            return
        self.clear(parts, keep_dir=False)
        os.link(self.path(target), self.path(parts), follow_symlinks=False)

    def metadata(self, path: bytes, m: tarfile.TarInfo) -> None:
        """Owner, xattrs, mode, times; in this order since chown clears setuid and caps."""
        if self.same_owner:
            os.chown(path, m.uid, m.gid, follow_symlinks=False)
        for key, value in m.pax_headers.items():
            if not key.startswith(XATTR_PAX_PREFIX):
                continue
            xname = key[len(XATTR_PAX_PREFIX) :].encode("utf-8", "surrogateescape")
            if xname.startswith(PRIVATE_XATTR_PREFIXES):
                continue
            os.setxattr(
                path, xname, value.encode("utf-8", "surrogateescape"), follow_symlinks=False
            )
        if not m.issym():
            os.chmod(path, m.mode & 0o7777)
        ns = _mtime_ns(m)
        os.utime(path, ns=(ns, ns), follow_symlinks=False)

    def finish_dirs(self) -> None:
        """Directory times last, deepest first: creating children changed them."""
        for parts in sorted(self.dir_times, key=len, reverse=True):
            ns = self.dir_times[parts]
            os.utime(self.path(parts), ns=(ns, ns), follow_symlinks=False)


def _show(parts: tuple[bytes, ...]) -> str:
    return os.fsdecode(b"/".join(parts))


def _mtime_ns(m: tarfile.TarInfo) -> int:
    return round(float(m.mtime) * 1e9)


def unpack_layer(
    tar_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    allow_devices: bool | None = None,
) -> UnpackResult:
    """Unpack an uncompressed layer tar into the empty directory dest (overlay format)."""
    euid_root = os.geteuid() == 0
    unpacker = _Unpacker(
        root=os.fsencode(dest),
        allow_devices=euid_root if allow_devices is None else allow_devices,
        same_owner=euid_root,
    )
    result = UnpackResult()
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for m in tar:
                unpacker.member(tar, m, result)
            result.end_offset = tar.offset
        _check_end_marker(tar_path, result.end_offset)
        unpacker.finish_dirs()
    except tarfile.TarError as exc:
        raise UnsafeLayerError(f"not a valid tar archive: {exc}") from None
    except EOFError as exc:
        raise UnsafeLayerError(f"truncated archive: {exc}") from None
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL):
            raise UnsafeLayerError(f"cannot create a member: {exc}") from None
        raise
    return result


def _check_end_marker(tar_path: str | os.PathLike[str], end_offset: int) -> None:
    """tarfile takes a tar cut at a header boundary for a complete one; we want the
    end-of-archive block every writer emits."""
    with open(tar_path, "rb") as f:
        f.seek(end_offset)
        block = f.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        raise UnsafeLayerError("truncated archive: no end-of-archive marker")


def is_private_xattr(name: bytes) -> bool:
    return name.startswith(PRIVATE_XATTR_PREFIXES)


def read_xattrs(path: bytes) -> dict[bytes, bytes]:
    """The entry's xattrs except the overlay's own, for writing a layer tar."""
    out: dict[bytes, bytes] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return out
        raise
    for name in sorted(names):
        raw = os.fsencode(name)
        if is_private_xattr(raw):
            continue
        with contextlib.suppress(OSError):
            out[raw] = os.getxattr(path, name, follow_symlinks=False)
    return out
