"""Stress: many processes doing random operations on one mount at once, for a bounded time.

Parallel tar extraction and `rm -rf` (also over lower trees, leaving whiteouts and opaque
dirs), a rename storm over lower files and dirs, concurrent writers and readers of one large
lower file (chunked lazy copy-up under way), O_APPEND writers of one log, and directory
listings while entries come and go. Afterwards the daemon is alive, every process saw only
POSIX results, the merged view holds what the operations promise, and the upper dir is
plain overlayfs: `unionfs fsck` is clean, workdir/work is empty, and the kernel overlayfs
mounting the same dirs shows the same promises kept.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import random
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import mounting
from tests.archives import extract_trusted
from tests.mounting import daemon_pid, is_alive
from tests.unionfs.conftest import KERNEL_OPTIONS
from tests.unionfs.posix_helpers import RENAME_NOREPLACE, renameat2, tree_snapshot, write
from tests.unionfs.reliability_helpers import (
    Tally,
    Worker,
    answers,
    assert_upper_is_clean,
    run_workers,
    scratch,
    summary,
)

pytestmark = pytest.mark.root

LAZY = "lazy_copyup=64k"
REC = 512  # one record of the shared file: inside one page, so reads see it whole or not
RECORDS = 1024  # 512 KiB: eight lazy chunks
WRITERS = 2
APPEND_REC = 64
# Appends each appender makes at most: written straight to the layer (FUSE passthrough),
# appending for the whole time made a log of gigabytes for the checks to read.
APPEND_MAX = 50_000
STORM_FILES = 40
STORM_DIRS = 6
SPOTS = ("a/f", "a/g", "b/f", "b/g")
KEEP = 20
TAR_FILES = 30


# --- the records of the shared file -------------------------------------------------------


def lower_record(r: int) -> bytes:
    return (b"lower %08d " % r).ljust(REC, b".")


def written_record(r: int, seq: int) -> bytes:
    return (b"w%02d r%08d s%010d " % (r % WRITERS, r, seq)).ljust(
        REC, b"abcdefghij"[seq % 10 : seq % 10 + 1]
    )


def record_is_valid(r: int, data: bytes) -> bool:
    if data == lower_record(r):
        return True
    try:
        seq = int(data[14:25].split(b"s")[1])
    except (IndexError, ValueError):
        return False
    return data == written_record(r, seq)


# --- the workers --------------------------------------------------------------------------


def tar_worker(tarball: Path, root: Path, seed: int, deadline: float) -> Tally:
    """Extract a tarball, check it, rm -rf it; every other round over a lower tree."""
    tally, rng = Tally(), random.Random(seed)
    while time.monotonic() < deadline:
        dest = root / (f"tree{seed}" if rng.random() < 0.5 else f"tar{seed}")
        tally.ops["rm -rf"] += 1
        rm = subprocess.run(["rm", "-rf", str(dest)], capture_output=True, text=True)
        if rm.returncode != 0:
            tally.surprise(f"rm -rf {dest.name}: {rm.stderr.strip()}")
        tally.call("mkdir", (), os.mkdir, dest)
        tally.ops["tar -x"] += 1
        tar = subprocess.run(
            ["tar", "-xf", str(tarball), "-C", str(dest)], capture_output=True, text=True
        )
        if tar.returncode != 0:
            tally.surprise(f"tar -x into {dest.name}: {tar.stderr.strip()}")
        found = sum(len(files) for _d, _s, files in os.walk(dest))
        if found != TAR_FILES:
            tally.surprise(f"{dest.name} holds {found} files after tar -x, not {TAR_FILES}")
    return tally


def rename_worker(root: Path, seed: int, deadline: float) -> Tally:
    """Move lower files and dirs among four spots each; a lost race is ENOENT, nothing else."""
    tally, rng = Tally(), random.Random(seed)
    storm = root / "storm"
    while time.monotonic() < deadline:
        is_file = rng.random() < 0.8
        kind, n = ("", rng.randrange(STORM_FILES)) if is_file else ("d", rng.randrange(STORM_DIRS))
        src, dst = rng.sample(SPOTS, 2)
        old, new = storm / f"{src}{kind}{n}", storm / f"{dst}{kind}{n}"
        if rng.random() < 0.3:
            tally.call("renameat2", (errno.ENOENT,), renameat2, old, new, RENAME_NOREPLACE)
        else:
            tally.call("rename", (errno.ENOENT,), os.rename, old, new)
        if is_file:
            tally.call("read", (errno.ENOENT,), check_token, tally, new, n)
    return tally


def check_token(tally: Tally, path: Path, n: int) -> None:
    data = path.read_bytes()
    if data != token(n):
        tally.surprise(f"{path.name} holds {data[:40]!r}")


def token(n: int) -> bytes:
    return b"storm file %d\n" % n


def writer_worker(root: Path, seed: int, deadline: float) -> Tally:
    """Write its own records of the shared file; each must read back as written."""
    tally, rng = Tally(), random.Random(seed)
    wid = seed % WRITERS
    mine = list(range(wid, RECORDS, WRITERS))
    last: dict[int, bytes] = {}
    fd = os.open(root / "shared.dat", os.O_RDWR)
    try:
        seq = 0
        while time.monotonic() < deadline:
            r, seq = rng.choice(mine), seq + 1
            data = written_record(r, seq)
            if tally.call("pwrite", (), os.pwrite, fd, data, r * REC):
                last[r] = data
            back = os.pread(fd, REC, r * REC)
            tally.ops["pread"] += 1
            if back != data:
                tally.surprise(f"record {r} read back {back[:30]!r} after writing seq {seq}")
            if seq % 50 == 0:
                tally.call("fsync", (), os.fsync, fd)
        for r, data in last.items():
            if os.pread(fd, REC, r * REC) != data:
                tally.surprise(f"record {r} lost its last write")
    finally:
        os.close(fd)
    return tally


def reader_worker(fd: int, root: Path, seed: int, deadline: float) -> Tally:
    """Read random records of the shared file while it is written: each is whole.

    fd was opened before the writers' copy-up: its reads fill the page cache the writers
    read back from, so it must read the copy (it once read the lower file)."""
    tally, rng = Tally(), random.Random(seed)
    try:
        while time.monotonic() < deadline:
            r = rng.randrange(RECORDS)
            if rng.random() < 0.01:  # memory pressure: the next reads come from the daemon
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            for _attempt in range(3):  # a read racing the one write of this record may tear
                tally.ops["pread"] += 1
                if record_is_valid(r, os.pread(fd, REC, r * REC)):
                    break
            else:
                tally.surprise(f"record {r} is not a record: {os.pread(fd, 40, r * REC)!r}")
            if os.fstat(fd).st_size != RECORDS * REC:
                tally.surprise(f"shared.dat has size {os.fstat(fd).st_size}")
    finally:
        os.close(fd)
    return tally


def appender_worker(root: Path, seed: int, deadline: float) -> Tally:
    tally = Tally()
    fd = os.open(root / "log", os.O_WRONLY | os.O_APPEND)
    try:
        seq = 0
        while time.monotonic() < deadline and seq < APPEND_MAX:
            seq += 1
            rec = (b"appender %d seq %d" % (seed, seq)).ljust(APPEND_REC - 1, b" ") + b"\n"
            tally.call("append", (), os.write, fd, rec)
    finally:
        os.close(fd)
    return tally


def churn_worker(root: Path, seed: int, deadline: float) -> Tally:
    """Create, rename and unlink entries in the listed dir, lower ones included."""
    tally, rng = Tally(), random.Random(seed)
    d = root / "listing"
    while time.monotonic() < deadline:
        n = rng.randrange(30)
        a, b = d / f"churn-{seed}-{n}", d / f"churned-{seed}-{n}"
        op = rng.randrange(4)
        if op == 0:
            tally.call(
                "create",
                (errno.EEXIST,),
                create_new,
                a,
            )
        elif op == 1:
            tally.call("rename", (errno.ENOENT,), os.rename, a, b)
        elif op == 2:
            tally.call("unlink", (errno.ENOENT,), os.unlink, b if rng.random() < 0.5 else a)
        else:  # a lower entry: unlink leaves a whiteout, create replaces it
            low = d / f"lowchurn-{n}"
            if rng.random() < 0.5:
                tally.call("unlink lower", (errno.ENOENT,), os.unlink, low)
            else:
                tally.call("mkdir over whiteout", (errno.EEXIST,), os.mkdir, low)
                tally.call("rmdir", (errno.ENOENT, errno.ENOTDIR), os.rmdir, low)
    return tally


def create_new(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))


def lister_worker(root: Path, seed: int, deadline: float) -> Tally:
    """List the churned dir: no duplicates, and every untouched entry appears every time."""
    tally = Tally()
    d = root / "listing"
    keep = {f"keep-{i}" for i in range(KEEP)} | {f"ukeep-{i}" for i in range(KEEP)}
    while time.monotonic() < deadline:
        tally.ops["listdir"] += 1
        try:
            listed = [e.name for e in os.scandir(d)]
        except OSError as exc:
            tally.surprise(f"listdir: {exc!r}")
            continue
        if len(listed) != len(set(listed)):
            tally.surprise(
                f"duplicates in a listing: {sorted(n for n in listed if listed.count(n) > 1)[:5]}"
            )
        if missing := keep - set(listed):
            tally.surprise(f"untouched entries missing from a listing: {sorted(missing)[:5]}")
        for name in listed[:: max(1, len(listed) // 8)]:
            tally.call("stat listed", (errno.ENOENT,), os.lstat, d / name)
    return tally


# --- the scene ----------------------------------------------------------------------------


@dataclass
class Scene:
    base: Path
    layers: mounting.Layers
    mnt: Path
    tarball: Path


@pytest.fixture
def scene() -> Iterator[Scene]:
    with scratch("stress") as base:
        layers = mounting.make_layers(base, 2)
        low = layers.lowers[0]
        src = base / "src"
        for i in range(TAR_FILES):
            write(src / f"d{i % 3}" / f"sub{i % 2}" / f"file{i}", os.urandom(1 + i * 97))
        tarball = base / "tree.tar"
        with tarfile.open(tarball, "w") as tar:
            tar.add(src, arcname=".")
        for seed in range(8):  # lower trees the tar workers remove and extract over
            extract_trusted(tarball, low / f"tree{seed}")
        for n in range(STORM_FILES):
            write(low / "storm" / "a" / f"f{n}", token(n))
        for n in range(STORM_DIRS):
            write(low / "storm" / "a" / f"fd{n}" / "inside", token(1000 + n))
        (low / "storm" / "b").mkdir()
        write(low / "shared.dat", b"".join(lower_record(r) for r in range(RECORDS)))
        for i in range(KEEP):
            write(layers.lowers[1] / "listing" / f"keep-{i}")
        for n in range(30):
            write(low / "listing" / f"lowchurn-{n}")
        mnt = base / "mnt"
        mnt.mkdir()
        yield Scene(base, layers, mnt, tarball)


def storm_and_records_intact(root: Path) -> None:
    """No storm file or dir lost, doubled or half-written; no record of shared.dat torn."""
    storm = root / "storm"
    for n in range(STORM_FILES):
        where = [s for s in SPOTS if (storm / f"{s}{n}").exists()]
        assert len(where) == 1, f"storm file {n} is at {where}"
        assert (storm / f"{where[0]}{n}").read_bytes() == token(n)
    for n in range(STORM_DIRS):
        where = [s for s in SPOTS if (storm / f"{s}d{n}").is_dir()]
        assert len(where) == 1, f"storm dir {n} is at {where}"
        assert (storm / f"{where[0]}d{n}" / "inside").read_bytes() == token(1000 + n)
    data = (root / "shared.dat").read_bytes()
    assert len(data) == RECORDS * REC, "shared.dat changed size"
    bad = [r for r in range(RECORDS) if not record_is_valid(r, data[r * REC : (r + 1) * REC])]
    assert bad == [], f"torn or foreign records: {bad[:10]}"


def check_promises(root: Path, appends: int) -> None:
    """What the operations promise, whoever serves the view."""
    storm_and_records_intact(root)
    log = (root / "log").read_bytes()
    assert len(log) == appends * APPEND_REC, (len(log), appends)
    recs = [log[i : i + APPEND_REC] for i in range(0, len(log), APPEND_REC)]
    assert all(r.startswith(b"appender ") and r.endswith(b"\n") for r in recs)
    assert len(set(recs)) == len(recs), "an append landed twice"
    for i in range(KEEP):
        assert (root / "listing" / f"keep-{i}").exists()
        assert (root / "listing" / f"ukeep-{i}").exists()


def stress(scene: Scene, seconds: float) -> None:
    lowers_before = [tree_snapshot(d) for d in scene.layers.lowers]
    with mounting.unionfs(scene.layers, scene.mnt, [LAZY]) as mnt:
        pid = daemon_pid(mnt)
        (mnt / "log").touch()
        for i in range(KEEP):
            (mnt / "listing" / f"ukeep-{i}").touch()
        early = os.open(mnt / "shared.dat", os.O_RDONLY)  # inherited by the reader
        workers: list[tuple[Worker, Path]] = [
            (functools.partial(tar_worker, scene.tarball), mnt),
            (functools.partial(tar_worker, scene.tarball), mnt),
            (rename_worker, mnt),
            (rename_worker, mnt),
            *[(writer_worker, mnt) for _ in range(WRITERS)],
            (functools.partial(reader_worker, early), mnt),
            (appender_worker, mnt),
            (appender_worker, mnt),
            (churn_worker, mnt),
            (lister_worker, mnt),
        ]
        try:
            tallies = run_workers(workers, seconds)
        finally:
            os.close(early)
        ops, expected, surprises = summary(tallies)
        print(f"\nstress {seconds}s: {sum(ops.values())} operations: {dict(ops)}")
        print(f"expected errors: {dict(expected)}")
        assert surprises == [], "\n".join(surprises)
        assert is_alive(pid) and answers(mnt), "the daemon died under load"
        appends = sum(t.ops["append"] for t in tallies)
        check_promises(mnt, appends)
    assert_upper_is_clean(scene.layers)
    for lower, before in zip(scene.layers.lowers, lowers_before, strict=True):
        assert tree_snapshot(lower) == before, f"{lower} was changed"
    with mounting.kernel_overlay(scene.layers, scene.mnt, KERNEL_OPTIONS) as mnt:
        check_promises(mnt, appends)


def test_a_mount_under_ten_processes_of_random_operations_keeps_every_promise(
    scene: Scene,
) -> None:
    stress(scene, seconds=10)


@pytest.mark.slow
def test_a_mount_under_two_minutes_of_random_operations_keeps_every_promise(
    scene: Scene,
) -> None:
    stress(scene, seconds=120)


# --- regressions found by the stress test -------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
UTIME_OMIT = (1 << 30) - 2


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


def set_mtime_only(fd: int, seconds: int) -> None:
    """futimens(fd, {UTIME_OMIT, mtime}): what tar -x does to every file it wrote."""
    times = (_Timespec * 2)(_Timespec(0, UTIME_OMIT), _Timespec(seconds, 0))
    if _libc.futimens(fd, times) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_setting_only_the_mtime_of_a_file_just_written_works(scene: Scene) -> None:
    """Found by the tar workers: EIO (an internal error in setattr, which statted the open
    descriptor with follow_symlinks=False) for writes followed by an mtime-only change."""
    with mounting.unionfs(scene.layers, scene.mnt, [LAZY]) as mnt:
        failed = []
        for i in range(20):
            fd = os.open(mnt / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"x" * (1 + i * 300))
                try:
                    set_mtime_only(fd, 1_000_000 + i)
                except OSError as exc:
                    failed.append((i, exc.errno))
            finally:
                os.close(fd)
        assert failed == []
        assert [os.stat(mnt / f"f{i}").st_mtime for i in range(20)] == [
            1_000_000 + i for i in range(20)
        ]
        (mnt / "x").mkdir()
        tar = subprocess.run(
            ["tar", "-xf", str(scene.tarball), "-C", str(mnt / "x")], capture_output=True, text=True
        )
        assert (tar.returncode, tar.stderr) == (0, "")
