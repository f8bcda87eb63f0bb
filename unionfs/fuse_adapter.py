"""pyfuse3.Operations over UnionFilesystem: convert types, map errors, nothing else."""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import pyfuse3

from unionfs.filesystem import DOT_ENTRIES, AttrChanges, Caller, UnionFilesystem
from unionfs.inodes import Node

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def errno_edge(handler: F) -> F:
    """OSError -> its errno; any other exception is a bug: log it loudly, answer EIO."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("internal error in %s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return cast(F, wrapper)


def caller_of(ctx: pyfuse3.RequestContext) -> Caller:
    return Caller(ctx.uid, ctx.gid, ctx.umask)


class FuseAdapter(pyfuse3.Operations):
    supports_dot_lookup = False

    def __init__(self, fs: UnionFilesystem, timeout: float) -> None:
        super().__init__()
        self.fs = fs
        self.timeout = timeout
        # Read by pyfuse3 at init: the kernel batches writes in its page cache and keeps
        # size and times itself (we are the only writer of the upper layer).
        self.enable_writeback_cache = fs.writeback
        fs.invalidate_attrs = self._invalidate_attrs

    @staticmethod
    def _invalidate_attrs(ino: int) -> None:
        # Attributes only: takes no page or inode lock, so it is safe inside a handler.
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # the kernel did not know the inode: nothing cached
                log.warning("cannot invalidate inode %d: %s", ino, exc)

    def _attrs(self, node: Node, st: os.stat_result) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.ino
        attrs.generation = 0
        # A placeholder (st_ino 0) must be asked about again each time: it answers errors.
        timeout = self.timeout if st.st_ino else 0
        attrs.entry_timeout = timeout
        attrs.attr_timeout = timeout
        attrs.st_mode = st.st_mode
        # Like the kernel overlayfs: a merged directory's link count is unknown, so 1.
        attrs.st_nlink = 1 if node.merged else st.st_nlink
        attrs.st_uid = st.st_uid
        attrs.st_gid = st.st_gid
        attrs.st_rdev = st.st_rdev
        attrs.st_size = st.st_size
        attrs.st_blksize = st.st_blksize
        attrs.st_blocks = st.st_blocks
        attrs.st_atime_ns = st.st_atime_ns
        attrs.st_mtime_ns = st.st_mtime_ns
        attrs.st_ctime_ns = st.st_ctime_ns
        return attrs

    @errno_edge
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            return self._attrs(*self.fs.lookup(parent_inode, name))
        except FileNotFoundError:
            # A negative entry the kernel may cache (inode 0): programs probe for missing
            # files all the time (imports, PATH, build tools). Every name we create goes
            # through the kernel, which replaces the negative entry itself.
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self.timeout
            return negative

    @errno_edge
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.fs.forget(inode, count)

    @errno_edge
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(*self.fs.getattr(inode))

    @errno_edge
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        changes = AttrChanges(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return self._attrs(*await self.fs.setattr(inode, changes, fh, caller_of(ctx)))

    @errno_edge
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.fs.readlink(inode)

    @errno_edge
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._attrs(*await self.fs.mknod(parent_inode, name, mode, rdev, caller_of(ctx)))

    @errno_edge
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._attrs(*await self.fs.mkdir(parent_inode, name, mode, caller_of(ctx)))

    @errno_edge
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.unlink(parent_inode, name)

    @errno_edge
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.rmdir(parent_inode, name)

    @errno_edge
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._attrs(*await self.fs.symlink(parent_inode, name, target, caller_of(ctx)))

    @errno_edge
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @errno_edge
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._attrs(*await self.fs.link(inode, new_parent_inode, new_name, caller_of(ctx)))

    @errno_edge
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        handle = await self.fs.open(inode, flags)
        return pyfuse3.FileInfo(fh=handle.fh, keep_cache=True)

    @errno_edge
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        handle, node, st = await self.fs.create(parent_inode, name, mode, flags, caller_of(ctx))
        return pyfuse3.FileInfo(fh=handle.fh, keep_cache=True), self._attrs(node, st)

    @errno_edge
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.fs.read(fh, off, size)

    @errno_edge
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.fs.write(fh, off, buf)

    async def flush(self, fh: int) -> None:
        # Nothing to do at close(2) time (data goes straight to the backing file): ENOSYS
        # tells the kernel to stop sending flush requests at all, one round trip per close.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @errno_edge
    async def release(self, fh: int) -> None:
        self.fs.release(fh)

    @errno_edge
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.fs.fsync(fh, datasync)

    @errno_edge
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return self.fs.opendir(inode)

    @errno_edge
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for name, node, st, next_id in self.fs.readdir(fh, start_id):
            dot = name in DOT_ENTRIES  # the kernel takes no reference for . and ..
            if not pyfuse3.readdir_reply(token, name, self._attrs(node, st), next_id):
                if not dot:
                    self.fs.inodes.discard_unreferenced(node)
                break
            if not dot:
                self.fs.inodes.lookup(node)

    @errno_edge
    async def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    @errno_edge
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.fs.fsyncdir(fh, datasync)

    @errno_edge
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        stats = self.fs.statfs()
        data = pyfuse3.StatvfsData()
        data.f_bsize = stats.block_size
        data.f_frsize = stats.fragment_size
        data.f_blocks = stats.blocks
        data.f_bfree = stats.blocks_free
        data.f_bavail = stats.blocks_available
        data.f_files = stats.files
        data.f_ffree = stats.files_free
        data.f_favail = stats.files_available
        data.f_namemax = stats.name_max
        return data

    @errno_edge
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return self.fs.getxattr(inode, name)

    @errno_edge
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return self.fs.listxattr(inode)

    @errno_edge
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.fs.setxattr(inode, name, value)

    @errno_edge
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.removexattr(inode, name)
