"""The filesystem workloads: each times one operation on a freshly mounted union and then
checks the answer (the copy really happened, the lowers are untouched, the output is the
one every other system gave), so a fast wrong answer cannot win.

A workload gets a `Context` and returns a `Measurement`; only the operation itself sits
between the two `perf_counter()` calls. It raises `Unsupported` when the system refuses the
operation by design (EXDEV) and `CheckFailed` when the answer is wrong.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

from benchmarks.config import Sizes, human_bytes
from benchmarks.dataset import CHUNK, HEADER, Dataset, chunk_header
from benchmarks.systems import Mounted


class Unsupported(Exception):
    """The system refuses this operation by design; reported, not counted as a failure."""


class CheckFailed(Exception):
    """The operation finished but its result is wrong."""


@dataclass(frozen=True)
class Context:
    mounted: Mounted
    data: Dataset

    @property
    def root(self) -> Path:
        return self.mounted.root

    @property
    def sizes(self) -> Sizes:
        return self.data.sizes


@dataclass(frozen=True)
class Measurement:
    seconds: float
    digest: str  # what the workload saw; must be the same on every system
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FsWorkload:
    name: str
    description: str
    parts: tuple[str, ...]
    run: Callable[[Context], Measurement]


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def pread_exact(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def lower_header_intact(data: Dataset, rel: str, tag: str) -> None:
    head = pread_exact(data.lowers[1] / rel, 0, HEADER)
    check(head == chunk_header(tag, 0), f"lower file {rel} was modified")


# --- copy-up ------------------------------------------------------------------------------

WRITE_PATTERN = b"lamina benchmark write\n"


def wait_for_copy(copied: Path, size: int, pattern: bytes, start: float) -> float:
    """Seconds from `start` until the whole copy, with the write, is in the upper layer.

    A union may finish a copy-up in the background after fsync() has returned; the app saw
    the fast answer, but the copy is not in the upper yet. Both times are reported."""
    deadline = perf_counter() + 300
    while True:
        try:
            if copied.stat().st_size == size and pread_exact(copied, 0, len(pattern)) == pattern:
                last = (size - 1) // CHUNK
                tail = pread_exact(copied, last * CHUNK, HEADER)
                if last == 0 or tail == chunk_header(copied.name, last):
                    return perf_counter() - start
        except FileNotFoundError:
            pass
        if perf_counter() > deadline:
            raise CheckFailed("the copy did not reach the upper layer within 300 s")
        time.sleep(0.005)


def copy_up(tag: str) -> Callable[[Context], Measurement]:
    def run(ctx: Context) -> Measurement:
        size = ctx.data.cow_files[tag]
        path = ctx.root / "cow" / tag
        pattern = (WRITE_PATTERN * (ctx.sizes.write_size // len(WRITE_PATTERN) + 1))[
            : ctx.sizes.write_size
        ]
        start = perf_counter()
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, pattern, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        seconds = perf_counter() - start
        check(os.stat(path).st_size == size, "size changed by a 4 KiB write")
        check(pread_exact(path, 0, len(pattern)) == pattern, "written bytes not read back")
        last = (size - 1) // CHUNK
        if last > 0:
            got = pread_exact(path, last * CHUNK, HEADER)
            check(got == chunk_header(tag, last), "the rest of the file was not copied")
        landed = seconds
        if ctx.mounted.upper is not None:
            landed = wait_for_copy(ctx.mounted.upper / "cow" / tag, size, pattern, start)
        lower_header_intact(ctx.data, f"cow/{tag}", tag)
        return Measurement(seconds, f"size={size}", {"in_upper_s": landed})

    return run


# --- sequential read ----------------------------------------------------------------------


def io_buffer(size: int) -> memoryview:
    """A page-aligned buffer, as cat and dd read into. Not a bytearray: where malloc puts
    one is luck, and on the AMD EPYC host a 1 GiB warm read took 111 ms into a page-aligned
    buffer and 579 ms into one 16 bytes past a page's start (native ext4; through a FUSE
    page cache 208 and 664 ms, elsewhere 140-165)."""
    import mmap

    return memoryview(mmap.mmap(-1, size))


def read_into(fd: int, buf: memoryview) -> int:
    """Fill buf from fd (reads may come back short); returns the bytes read, 0 at EOF."""
    got = 0
    while got < len(buf):
        n = os.readv(fd, [buf[got:]])
        if n == 0:
            break
        got += n
    return got


def sequential_read(cold: bool) -> Callable[[Context], Measurement]:
    def run(ctx: Context) -> Measurement:
        path = ctx.root / "read" / "big"
        block = ctx.sizes.read_block
        buf = io_buffer(block)
        if cold:
            drop_caches()
        else:
            fd = os.open(path, os.O_RDONLY)
            while read_into(fd, buf):
                pass
            os.close(fd)
        heads: list[bytes] = []
        total = 0
        start = perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            while n := read_into(fd, buf):
                heads.append(buf[:HEADER].tobytes())
                total += n
        finally:
            os.close(fd)
        seconds = perf_counter() - start
        size = ctx.sizes.big_file
        check(total == size, f"read {total} bytes of {size}")
        if block == CHUNK:
            expected = [chunk_header("read", i) for i in range(len(heads))]
            check(heads == expected, "bytes read in the wrong order or corrupted")
        return Measurement(seconds, f"bytes={total}", {"MiB/s": size / seconds / 2**20})

    return run


def sequential_write(ctx: Context) -> Measurement:
    """A new file of big_file bytes in read_block writes, closed (no fsync: what a write
    costs the caller, not the disk's pace); each block starts with its own header."""
    path = ctx.root / "create" / "written"
    block = ctx.sizes.read_block
    count = ctx.sizes.big_file // block
    buf = io_buffer(block)
    buf[:] = os.urandom(block)
    start = perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for i in range(count):
            buf[:HEADER] = chunk_header("written", i)
            view = buf
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    seconds = perf_counter() - start
    size = count * block
    check(os.stat(path).st_size == size, "the written file has the wrong size")
    for i in (0, count // 2, count - 1):
        check(pread_exact(path, i * block, HEADER) == chunk_header("written", i), "bad block")
    if ctx.mounted.upper is not None:
        landed = ctx.mounted.upper / "create" / "written"
        check(landed.stat().st_size == size, "the file is not whole in the upper layer")
    check(not os.listdir(ctx.data.lowers[1] / "create"), "a lower layer was written to")
    return Measurement(seconds, f"bytes={size}", {"MiB/s": size / seconds / 2**20})


# --- metadata -----------------------------------------------------------------------------


def stat_tree(first: bool) -> Callable[[Context], Measurement]:
    def run(ctx: Context) -> Measurement:
        paths = [str(ctx.root / "tree" / rel) for rel, _ in ctx.data.tree_names()]
        if not first:
            for p in paths:
                os.lstat(p)
        before = daemon_rss(ctx.root)
        start = perf_counter()
        total = sum(os.lstat(p).st_size for p in paths)
        seconds = perf_counter() - start
        after = daemon_rss(ctx.root)
        expected = ctx.data.tree_total_size()
        check(total == expected, f"sizes add up to {total}, expected {expected}")
        extra = {} if before is None or after is None else {"daemon_growth": after - before}
        return Measurement(seconds, f"files={len(paths)} bytes={total}", extra)

    return run


def hold_names(ctx: Context) -> Measurement:
    """stat every file of held/ once: the kernel keeps them all (no memory pressure here),
    so the daemon must know each until the kernel forgets it. What a name costs the daemon
    is its growth over the pass."""
    top = ctx.root / "held"
    paths = [str(top / rel) for rel in ctx.data.held_names()]
    before = daemon_rss(ctx.root)
    start = perf_counter()
    found = sum(1 for p in paths if os.lstat(p).st_size == 0)
    seconds = perf_counter() - start
    after = daemon_rss(ctx.root)
    check(found == len(paths), f"{found} of {len(paths)} held files found empty")
    extra = {} if before is None or after is None else {"daemon_growth": after - before}
    return Measurement(seconds, f"files={found}", extra)


def daemon_rss(mnt: Path) -> float | None:
    """The resident memory of the FUSE daemon serving mnt (bytes), or None if none does:
    the process holding /dev/fuse whose command line names mnt."""
    wanted = os.fsencode(mnt)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if wanted not in f.read().split(b"\0"):
                    continue
            fds = os.listdir(f"/proc/{entry}/fd")
            if not any(_is_fuse_device(f"/proc/{entry}/fd/{fd}") for fd in fds):
                continue
            with open(f"/proc/{entry}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return float(line.split()[1]) * 1024
        except OSError:
            continue
    return None


def _is_fuse_device(fd_link: str) -> bool:
    try:
        return os.readlink(fd_link) == "/dev/fuse"
    except OSError:
        return False


def walk_tree(ctx: Context) -> Measurement:
    top = str(ctx.root / "tree")
    names: list[str] = []
    start = perf_counter()
    for dirpath, _dirnames, filenames in os.walk(top):
        for name in filenames:
            names.append(os.path.join(dirpath, name))
    seconds = perf_counter() - start
    check(len(names) == ctx.sizes.tree_files, f"walk found {len(names)} files")
    rel = sorted(os.path.relpath(n, top) for n in names)
    return Measurement(seconds, "sha1=" + hashlib.sha1("\n".join(rel).encode()).hexdigest())


def upper_count(ctx: Context, rel: str) -> int | None:
    if ctx.mounted.upper is None:
        return None
    d = ctx.mounted.upper / rel
    return len(os.listdir(d)) if d.is_dir() else 0


def create_files(ctx: Context) -> Measurement:
    d = ctx.root / "create"
    paths = [str(d / f"n{i:05d}") for i in range(ctx.sizes.create_files)]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    start = perf_counter()
    for p in paths:
        fd = os.open(p, flags, 0o644)
        try:
            os.write(fd, b"new\n")
        finally:  # an interrupt must not leave the mount busy
            os.close(fd)
    seconds = perf_counter() - start
    n = len(paths)
    check(len(os.listdir(d)) == n, "not every file shows in the union")
    in_upper = upper_count(ctx, "create")
    check(in_upper is None or in_upper == n, f"{in_upper} of {n} files in the upper layer")
    check(not os.listdir(ctx.data.lowers[1] / "create"), "a lower layer was written to")
    return Measurement(seconds, f"files={n}")


def lower_names(ctx: Context, rel: str) -> int:
    return sum(len(os.listdir(lo / rel)) for lo in ctx.data.lowers if (lo / rel).is_dir())


def delete_files(ctx: Context) -> Measurement:
    d = ctx.root / "del"
    n = ctx.sizes.delete_files
    paths = [str(d / f"f{i:05d}") for i in range(n)]
    start = perf_counter()
    for p in paths:
        os.unlink(p)
    seconds = perf_counter() - start
    check(os.listdir(d) == [], "deleted files still listed")
    check(not os.path.exists(paths[0]), "deleted file still found")
    if ctx.mounted.upper is not None:
        check(lower_names(ctx, "del") == n, "a lower layer was changed")
    return Measurement(seconds, f"files={n}")


def check_renamed(ctx: Context) -> str:
    ren = ctx.root / "ren"
    n = ctx.sizes.rename_files
    check(not (ren / "src").exists(), "source directory still there")
    names = sorted(os.listdir(ren / "dst"))
    check(names == [f"f{i:05d}" for i in range(n)], "renamed directory lost entries")
    check((ren / "dst" / "f00001").read_bytes() == b"1\n", "renamed file has wrong content")
    if ctx.mounted.upper is not None:
        check(lower_names(ctx, "ren/src") == n, "a lower layer was changed")
    return f"files={n}"


def rename_dir(ctx: Context) -> Measurement:
    src, dst = ctx.root / "ren" / "src", ctx.root / "ren" / "dst"
    start = perf_counter()
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise Unsupported("unsupported (EXDEV)") from exc
        raise
    seconds = perf_counter() - start
    return Measurement(seconds, check_renamed(ctx))


def rename_dir_mv(ctx: Context) -> Measurement:
    start = perf_counter()
    subprocess.run(["mv", "src", "dst"], cwd=ctx.root / "ren", check=True, capture_output=True)
    seconds = perf_counter() - start
    return Measurement(seconds, check_renamed(ctx))


# --- a realistic source tree --------------------------------------------------------------


def timed_command(argv: list[str], cwd: Path, ok: tuple[int, ...] = (0,)) -> tuple[float, bytes]:
    start = perf_counter()
    out = subprocess.run(argv, cwd=cwd, capture_output=True, check=False, timeout=900)
    seconds = perf_counter() - start
    if out.returncode not in ok:
        tail = out.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise CheckFailed(f"{argv[0]} exited {out.returncode}: {' '.join(tail)}"[:300])
    return seconds, out.stdout


def tar_stdlib(ctx: Context) -> Measurement:
    seconds, out = timed_command(["sh", "-c", "tar -cf - . | cat"], ctx.root / "stdlib")
    check(len(out) > 0, "tar wrote nothing")
    return Measurement(seconds, f"tar bytes={len(out)}")


def grep_stdlib(ctx: Context) -> Measurement:
    seconds, out = timed_command(["grep", "-r", "-c", "-e", "import", "."], ctx.root / "stdlib")
    lines = sorted(out.splitlines())
    check(len(lines) == ctx.data.stdlib_count, f"grep saw {len(lines)} files")
    return Measurement(seconds, "sha1=" + hashlib.sha1(b"\n".join(lines)).hexdigest())


def count_pyc(top: Path) -> int:
    return sum(
        1
        for dirpath, _d, files in os.walk(top)
        if os.path.basename(dirpath) == "__pycache__"
        for f in files
        if f.endswith(".pyc")
    )


def compileall_stdlib(ctx: Context) -> Measurement:
    argv = [sys.executable, "-m", "compileall", "-q", "."]
    # Exit status 1: some test files in the standard library are deliberately invalid.
    seconds, _ = timed_command(argv, ctx.root / "stdlib", ok=(0, 1))
    made = count_pyc(ctx.root / "stdlib")
    check(made > 0, "no .pyc files written")
    if ctx.mounted.upper is not None:
        check(count_pyc(ctx.mounted.upper / "stdlib") == made, ".pyc files not in the upper")
        check(all(count_pyc(lo) == 0 for lo in ctx.data.lowers), "a lower layer was written to")
    return Measurement(seconds, f"pyc={made}")


def fs_workloads(s: Sizes) -> tuple[FsWorkload, ...]:
    big, mid, small = human_bytes(s.big_file), human_bytes(s.mid_file), human_bytes(s.small_file)
    w = human_bytes(s.write_size)
    blk = human_bytes(s.read_block)
    return (
        FsWorkload(
            "copyup-big", f"copy-up {big} file (write {w}, fsync)", ("cow",), copy_up("big")
        ),
        FsWorkload(
            "copyup-mid", f"copy-up {mid} file (write {w}, fsync)", ("cow",), copy_up("mid")
        ),
        FsWorkload(
            "copyup-small",
            f"copy-up {small} file (write {w}, fsync)",
            ("cow",),
            copy_up("small"),
        ),
        FsWorkload(
            "read-cold", f"read {big} in {blk} reads, cold", ("read",), sequential_read(True)
        ),
        FsWorkload(
            "read-warm", f"read {big} in {blk} reads, warm", ("read",), sequential_read(False)
        ),
        FsWorkload(
            "write", f"write {big} in {blk} writes, new file", ("create",), sequential_write
        ),
        FsWorkload(
            "stat-first",
            f"stat {s.tree_files:,} files, first pass",
            ("tree",),
            stat_tree(True),
        ),
        FsWorkload("stat-warm", f"stat {s.tree_files:,} files, warm", ("tree",), stat_tree(False)),
        FsWorkload("held", f"stat {s.held_files:,} files once, all kept", ("held",), hold_names),
        FsWorkload("walk", f"walk a {s.tree_files:,}-file tree", ("tree",), walk_tree),
        FsWorkload("create", f"create {s.create_files:,} files", ("create",), create_files),
        FsWorkload("delete", f"delete {s.delete_files:,} lower files", ("del",), delete_files),
        FsWorkload(
            "rename-dir",
            f"rename() a lower dir of {s.rename_files:,} files",
            ("ren",),
            rename_dir,
        ),
        FsWorkload(
            "rename-dir-mv",
            f"mv a lower dir of {s.rename_files:,} files (copies on EXDEV)",
            ("ren",),
            rename_dir_mv,
        ),
        FsWorkload("tar", "stdlib copy: tar -cf - . | cat", ("stdlib",), tar_stdlib),
        FsWorkload("grep", "stdlib copy: grep -r -c import", ("stdlib",), grep_stdlib),
        FsWorkload(
            "compileall", "stdlib copy: python -m compileall", ("stdlib",), compileall_stdlib
        ),
    )
