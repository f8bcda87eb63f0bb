"""Deferred, chunked copy-up of large files (no FUSE here).

Opening a large lower file for writing must not wait for a full copy. Instead the upper
copy starts as a sparse file in `workdir/work/` with the lower file's metadata; a chunk is
copied from the lower file just before anything reads or writes it, and a background
worker copies the rest. Only when every chunk is there is the file renamed into the upper
layer, so the upper dir never holds a partial file and is plain overlayfs format at every
moment. fsync() makes the state recoverable: the data is synced first, then a small
`.pending` record (which chunks are valid, where the file belongs) is written atomically
beside it; a mount that finds such a record completes the copy before serving.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time

from unionfs.copyup import copy_range, remove_tree
from unionfs.logger import get_logger
from unionfs.syscalls import (
    SYNC_FILE_RANGE_WAIT_AFTER,
    SYNC_FILE_RANGE_WAIT_BEFORE,
    SYNC_FILE_RANGE_WRITE,
    sync_file_range,
)

log = get_logger(__name__)

CHUNK = 1 << 20
RECORD_SUFFIX = b".pending"


def reserve_like(src_path: bytes, dst_fd: int, length: int) -> None:
    """Allocate in dst the ranges that hold data in src (holes stay holes)."""
    src_fd = os.open(src_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        offset = 0
        while offset < length:
            try:
                data = os.lseek(src_fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    return
                raise
            hole = min(os.lseek(src_fd, data, os.SEEK_HOLE), length)
            if hole > data:
                os.posix_fallocate(dst_fd, data, hole - data)
            offset = hole
    finally:
        os.close(src_fd)


def with_times(st: os.stat_result, atime_ns: int, mtime_ns: int) -> os.stat_result:
    """A copy of st with other access and modification times."""
    fields = [*st[:7], atime_ns // 10**9, mtime_ns // 10**9, st[9]]
    fields += [atime_ns / 1e9, mtime_ns / 1e9, st.st_ctime, atime_ns, mtime_ns, st.st_ctime_ns]
    fields += [st.st_blksize, st.st_blocks, st.st_rdev]
    return os.stat_result(fields)


class Record:
    """What recovery needs to finish a copy-up after a crash."""

    def __init__(
        self,
        target: bytes,  # path relative to the upper root
        lower: bytes,  # absolute path of the lower file
        length: int,  # bytes that come from the lower file
        chunk: int,
        valid: bytes,  # one byte per chunk: 1 = the work file holds it
        atime_ns: int,
        mtime_ns: int,
    ) -> None:
        self.target = target
        self.lower = lower
        self.length = length
        self.chunk = chunk
        self.valid = valid
        self.atime_ns = atime_ns
        self.mtime_ns = mtime_ns

    def dumps(self) -> bytes:
        import json  # only at fsync and recovery: kept off the start-up path

        return json.dumps(
            {
                "target": self.target.hex(),
                "lower": self.lower.hex(),
                "length": self.length,
                "chunk": self.chunk,
                "valid": self.valid.hex(),
                "atime_ns": self.atime_ns,
                "mtime_ns": self.mtime_ns,
            }
        ).encode()

    @classmethod
    def loads(cls, raw: bytes) -> Record:
        import json

        data = json.loads(raw)
        return cls(
            bytes.fromhex(data["target"]),
            bytes.fromhex(data["lower"]),
            int(data["length"]),
            int(data["chunk"]),
            bytes.fromhex(data["valid"]),
            int(data["atime_ns"]),
            int(data["mtime_ns"]),
        )


class PendingCopy:
    """One file being copied up in the background; its bytes are always the right ones.

    `prepare(offset, size)` before every read or write makes the chunks of that range
    valid in the work file. The worker thread and the request path take turns under a
    lock, one chunk at a time.
    """

    def __init__(
        self, work_path: bytes, lower_path: bytes, length: int, st: os.stat_result
    ) -> None:
        self.work_path = work_path
        self.lower_path = lower_path
        self.length = length
        self.chunks = (length + CHUNK - 1) // CHUNK
        self.valid = bytearray(self.chunks)
        self.missing = self.chunks
        self.lower_fd = os.open(lower_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self.fd = os.open(work_path, os.O_RDWR | os.O_CLOEXEC)
        except BaseException:
            os.close(self.lower_fd)
            raise
        self.atime_ns = st.st_atime_ns
        self.mtime_ns = st.st_mtime_ns
        self._lock = threading.Lock()
        self.closed = False
        self._copier_may_run = threading.Event()  # cleared while a user's fsync runs
        self._copier_may_run.set()

    @property
    def complete(self) -> bool:
        return self.missing == 0

    def _fill(self, index: int) -> None:
        if self.valid[index]:
            return
        start = index * CHUNK
        copy_range(self.lower_fd, self.fd, start, min(start + CHUNK, self.length))
        self.valid[index] = 1
        self.missing -= 1

    def prepare(self, offset: int, size: int) -> None:
        """Make [offset, offset+size) hold the right bytes before it is read or written."""
        if self.missing == 0 or offset >= self.length or size <= 0:
            return
        first, last = offset // CHUNK, min(offset + size, self.length) - 1
        with self._lock:
            for index in range(first, last // CHUNK + 1):
                self._fill(index)

    def set_times(self, atime_ns: int | None, mtime_ns: int | None) -> None:
        if atime_ns is not None:
            self.atime_ns = atime_ns
        if mtime_ns is not None:
            self.mtime_ns = mtime_ns

    def wrote(self) -> None:
        """A write went to the file: its logical mtime is now (not the copier's)."""
        self.mtime_ns = time.time_ns()

    def copy_rest(self, sync: bool) -> None:
        """Copy every chunk still missing, then sync if asked. Two threads may run it at
        once (the background copier and a request that needs the file whole); the one that
        loses the race finds the copy closed and leaves.

        With sync, the copy goes at the disk's pace: each chunk's write-back starts as soon
        as it is copied, and the copier waits for the one before. So at most two chunks
        are ever dirty, and the user's fsync() flushes those and its own writes, not the
        hundreds of megabytes a free-running copier leaves in the page cache.
        """
        with self._lock:
            if self.closed:
                return
            fd = os.dup(self.fd)  # our own reference: close() may run meanwhile
        try:
            previous = -1
            for index in range(self.chunks):
                if self.valid[index]:
                    continue
                self._copier_may_run.wait()
                with self._lock:
                    if self.closed:
                        return
                    self._fill(index)
                if sync:
                    _pace(fd, index, previous)
                    previous = index
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def stat(self) -> os.stat_result:
        return with_times(os.fstat(self.fd), self.atime_ns, self.mtime_ns)

    def snapshot(self, target: bytes) -> Record:
        with self._lock:
            valid = bytes(self.valid)
        return Record(
            target, self.lower_path, self.length, CHUNK, valid, self.atime_ns, self.mtime_ns
        )

    def persist(self, target: bytes) -> None:
        """fsync: the data first, then the record that says which chunks it holds.

        The background copier waits meanwhile: its writes would compete with the user's
        for the disk, and fsync would wait for both.
        """
        self._copier_may_run.clear()
        try:
            record = self.snapshot(target)
            os.fsync(self.fd)
            write_record(self.work_path + RECORD_SUFFIX, record)
        finally:
            self._copier_may_run.set()

    def finish_times(self) -> None:
        os.utime(self.fd, ns=(self.atime_ns, self.mtime_ns))

    def abandon(self) -> None:
        """The copy cannot be finished (a full upper, a failing lower): drop it whole."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.work_path)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            os.close(self.lower_fd)
            os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.work_path + RECORD_SUFFIX)


def _pace(fd: int, index: int, previous: int) -> None:
    """Start writing chunk `index` back; wait until chunk `previous` is on disk."""
    sync_file_range(fd, index * CHUNK, CHUNK, SYNC_FILE_RANGE_WRITE)
    if previous >= 0:
        wait = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
        sync_file_range(fd, previous * CHUNK, CHUNK, wait)


def write_record(path: bytes, record: Record) -> None:
    temp = path + b".tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            data = record.dumps()
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write of a copy-up record")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    dir_fd = os.open(os.path.dirname(path) or b".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def recover(work_dir: bytes, upper_root: bytes) -> list[str]:
    """Finish every copy-up a crash interrupted after an fsync; returns what was done."""
    done: list[str] = []
    for name in os.listdir(work_dir):
        if not name.endswith(RECORD_SUFFIX):
            continue
        record_path = work_dir + b"/" + name
        data_path = record_path[: -len(RECORD_SUFFIX)]
        try:
            with open(record_path, "rb") as f:
                record = Record.loads(f.read())
        except (OSError, ValueError, KeyError) as exc:
            done.append(f"dropped an unreadable copy-up record {name!r}: {exc}")
            os.unlink(record_path)
            continue
        done.append(finish_from_record(record, data_path, upper_root))
        os.unlink(record_path)
    return done


def finish_from_record(record: Record, data_path: bytes, upper_root: bytes) -> str:
    target = upper_root + b"/" + record.target
    shown = record.target.decode(errors="replace")
    if not os.path.lexists(data_path):
        return f"copy-up of {shown} had already finished"
    if os.path.lexists(target) or not os.path.isdir(os.path.dirname(target)):
        remove_tree(data_path)
        return f"dropped an interrupted copy-up of {shown}: its place is gone or taken"
    fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
    try:
        lower_fd = os.open(record.lower, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for index, valid in enumerate(record.valid):
                if not valid:
                    start = index * record.chunk
                    copy_range(lower_fd, fd, start, min(start + record.chunk, record.length))
        finally:
            os.close(lower_fd)
        os.fsync(fd)
        os.utime(fd, ns=(record.atime_ns, record.mtime_ns))
    finally:
        os.close(fd)
    os.rename(data_path, target)
    return f"completed an interrupted copy-up of {shown}"
