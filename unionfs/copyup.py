"""Atomic copy-up and the work directory (no FUSE here).

Everything new that must appear in the upper layer whole (a copied-up file, a directory
that replaces a whiteout) is built under `workdir/work` and only then put in place, so a
crash never shows a half-copied file in the upper layer. A regular file is built with no
name at all (O_TMPFILE, as the kernel overlayfs does) and linked into place: a crash
leaves nothing, and its fsync need not write a new name in work/ too. Everything else gets
a temporary name there and is renamed into place. The same `work` subdirectory is what
the kernel overlayfs uses, so a workdir can be shared.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat

from unionfs import acls
from unionfs.syscalls import RENAME_EXCHANGE, link_fd, renameat2
from unionfs.whiteouts import XattrNames, make_whiteout

COPY_CHUNK = 8 << 20


class WorkDir:
    """`workdir/work`: a private scratch directory on the upper's filesystem."""

    def __init__(self, workdir: bytes, lock: int | None = None) -> None:
        self.path = workdir + b"/work"
        self._counter = itertools.count(1)
        self.lock = lock  # the descriptor holding the workdir's flock (workdir_lock.hold)

    def let_go(self) -> None:
        """Release the workdir's lock: nothing more is written to the upper dir."""
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def prepare(self) -> None:
        """Create work/ if needed and empty it: leftovers are half-done operations.

        (Interrupted deferred copy-ups that were fsynced are finished before this.)
        """
        try:
            os.mkdir(self.path, 0o000)
        except FileExistsError:
            self.purge()

    def purge(self) -> None:
        for name in os.listdir(self.path):
            remove_tree(self.path + b"/" + name)

    def temp_name(self) -> bytes:
        return self.path + b"/#%x" % next(self._counter)

    def whiteout(self) -> bytes:
        """A new whiteout under a temporary name, to be renamed into place: a hard link to
        one shared whiteout kept in work/, as the kernel overlayfs makes them (since 5.8).
        Making an inode costs 10-200 µs on ext4 (its allocator searches for room), a link
        a few; readers of the format look at the type and device, not the link count."""
        temp = self.temp_name()
        try:
            os.link(self.shared_whiteout, temp)
            return temp
        except OSError as exc:  # none yet, or it has all the links it may have
            if exc.errno not in (errno.ENOENT, errno.EMLINK):
                raise
        make_whiteout(temp)
        self._share_whiteout(temp)
        return temp

    def _share_whiteout(self, whiteout: bytes) -> None:
        """Make whiteout the one later whiteouts link to (replacing a full one). Only
        faster: if it fails, the next whiteout is made anew, and nothing is left behind."""
        spare = self.temp_name()
        try:
            os.link(whiteout, spare)
            os.rename(spare, self.shared_whiteout)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(spare)

    @property
    def shared_whiteout(self) -> bytes:
        return self.path + b"/#whiteout"

    def tidy(self) -> None:
        """At unmount: work/ is left empty, as we found it (the upper keeps its links)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.shared_whiteout)

    def discard(self, path: bytes) -> None:
        """Remove something that was moved into work/ (a whole tree of whiteouts, say)."""
        remove_tree(path)


def remove_tree(path: bytes) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        import shutil  # rare (failures, fsck): kept off the start-up path

        shutil.rmtree(path)
    else:
        os.unlink(path)


def copy_xattrs(src: bytes, dst: bytes | int, markers: XattrNames) -> None:
    """Copy every xattr but the overlay's own markers to a path or an open file (never
    followed through symlinks)."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return
        raise
    for name in names:
        if markers.is_private(name.encode()):
            continue
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                continue
            raise
        os.setxattr(dst, name, value, follow_symlinks=isinstance(dst, int))


def copy_data(src_fd: int, dst_fd: int, length: int) -> None:
    """Copy `length` bytes, keeping holes: only the data extents are copied."""
    copy_range(src_fd, dst_fd, 0, length)
    os.ftruncate(dst_fd, length)


def copy_range(src_fd: int, dst_fd: int, start: int, end: int) -> None:
    """Copy bytes [start, end) at the same offsets, skipping holes of the source."""
    offset = start
    while offset < end:
        try:
            data = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        if data >= end:
            return
        hole = min(os.lseek(src_fd, data, os.SEEK_HOLE), end)
        position = data
        while position < hole:
            count = min(COPY_CHUNK, hole - position)
            copied = copy_between(src_fd, position, dst_fd, position, count)
            if copied == 0:
                raise OSError(errno.EIO, "the lower file shrank during copy-up")
            position += copied
        offset = hole


def copy_between(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, count: int) -> int:
    """One copy_file_range(2) between any two offsets (read and write where the kernel
    cannot copy between the two files); returns the bytes copied, 0 at the source's end."""
    try:
        return os.copy_file_range(src_fd, dst_fd, count, src_offset, dst_offset)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    data = os.pread(src_fd, min(count, COPY_CHUNK), src_offset)
    return os.pwrite(dst_fd, data, dst_offset) if data else 0


def copy_metadata(
    src: bytes,
    dst: bytes | int,
    st: os.stat_result,
    markers: XattrNames,
    *,
    is_link: bool = False,
) -> None:
    """Owner first (chown clears set-id bits and security.capability), then the xattrs,
    then the mode, then the times (which every other change would touch). dst: a path
    (never followed) or an open file."""
    follow = isinstance(dst, int)  # a path is never followed; a descriptor may not say so
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=follow)
    copy_xattrs(src, dst, markers)
    if not is_link:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=follow)


# open(2)'s answers for a filesystem (or kernel) without O_TMPFILE, and linkat(2)'s for a
# process that may not link a descriptor (AT_EMPTY_PATH wants CAP_DAC_READ_SEARCH).
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
_NO_LINK_FD = (errno.ENOENT, errno.EPERM, errno.EACCES)


class CopyUp:
    """Builds upper copies of lower entries in the work dir and renames them into place."""

    def __init__(self, work: WorkDir, markers: XattrNames, *, sync: bool) -> None:
        self.work = work
        self.markers = markers
        self.sync = sync
        self.unnamed = True  # build regular files as O_TMPFILE files, until that fails

    def copy(self, src: bytes, dst: bytes, st: os.stat_result, length: int | None = None) -> None:
        """Copy the lower entry at src to the upper path dst (whose parent exists).

        `length` limits the data copied (a copy-up for a truncate needs no more).
        """
        if stat.S_ISREG(st.st_mode) and self.unnamed:
            size = st.st_size if length is None else length
            if self._copy_unnamed(src, dst, st, size):
                return
        temp = self.work.temp_name()
        mode = st.st_mode
        try:
            if stat.S_ISREG(mode):
                self._build_file(src, temp, st, st.st_size if length is None else length)
            elif stat.S_ISDIR(mode):
                os.mkdir(temp, 0o700)
                self._finish(src, temp, st)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(src), temp)
                self._finish(src, temp, st, is_link=True)
            else:
                os.mknod(temp, mode, st.st_rdev)
                self._finish(src, temp, st)
            os.rename(temp, dst)
        except BaseException:
            remove_tree(temp)
            raise

    def _copy_unnamed(self, src: bytes, dst: bytes, st: os.stat_result, length: int) -> bool:
        """copy() of a regular file built with no name; False where this cannot be done
        (then nothing was made, and the caller builds it under a temporary name)."""
        try:
            fd = os.open(self.work.path, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
            self.unnamed = False
            return False
        try:
            self._fill(src, fd, st, length)
            try:
                link_fd(fd, dst)
            except FileExistsError:  # a stale upper entry: replaced, as a rename would
                temp = self.work.temp_name()
                link_fd(fd, temp)
                try:
                    os.rename(temp, dst)
                except BaseException:
                    remove_tree(temp)
                    raise
            except OSError as exc:
                if exc.errno not in _NO_LINK_FD or not os.path.isdir(os.path.dirname(dst)):
                    raise
                self.unnamed = False  # this process may not link a descriptor
                return False
        finally:
            os.close(fd)
        return True

    def _fill(self, src: bytes, dst_fd: int, st: os.stat_result, length: int) -> None:
        """Data, then metadata, then (if asked) the fsync: everything before the name."""
        if length:
            src_fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                copy_data(src_fd, dst_fd, min(length, st.st_size))
            finally:
                os.close(src_fd)
        copy_metadata(src, dst_fd, st, self.markers)
        if self.sync:
            os.fsync(dst_fd)

    def _build_file(self, src: bytes, temp: bytes, st: os.stat_result, length: int) -> None:
        dst_fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            self._fill(src, dst_fd, st, length)
        finally:
            os.close(dst_fd)

    def _finish(
        self, src: bytes, temp: bytes, st: os.stat_result, *, is_link: bool = False
    ) -> None:
        copy_metadata(src, temp, st, self.markers, is_link=is_link)

    def new_dir(
        self,
        dst: bytes,
        mode: int,
        uid: int,
        gid: int,
        *,
        opaque: bool,
        inherited: acls.Inherited | None = None,
        over_whiteout: bool = False,
    ) -> None:
        """Put a new directory, complete with owner and markers, at dst: a free name, or
        (over_whiteout) one holding a whiteout, exchanged in one step. inherited: the ACLs
        and mode its parent's default ACL gives it."""
        temp = self.work.temp_name()
        os.mkdir(temp, 0o700)
        try:
            os.chown(temp, uid, gid)
            if inherited is None:
                os.chmod(temp, mode)
            else:
                acls.give(temp, inherited)
            if opaque:
                os.setxattr(temp, self.markers.opaque, b"y")
            if not over_whiteout:
                os.rename(temp, dst)
                return
            renameat2(temp, dst, RENAME_EXCHANGE)
        except BaseException:
            remove_tree(temp)
            raise
        remove_tree(temp)  # now the old whiteout
