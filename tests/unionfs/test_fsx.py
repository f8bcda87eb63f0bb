"""Data integrity: an fsx-style exerciser on files that start in a lower layer.

Random pwrite, pread, truncate (grow and shrink), O_APPEND writes, shared mmap reads and
writes, fsync, close and reopen, on a small file and on files larger than the lazy copy-up
threshold (64k here, so the chunked background copy-up runs under the operations). After
every step the file must equal an in-memory model; after unmount the upper file must too,
and the lower must be untouched. A failure names the seed and the last operations.
"""

from __future__ import annotations

import mmap
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import mounting
from tests.unionfs.posix_helpers import write
from tests.unionfs.reliability_helpers import assert_upper_is_clean, scratch

pytestmark = pytest.mark.root

LAZY = "lazy_copyup=64k"
SIZES = {"small": 3000, "two-chunks": 100_000, "many-chunks": 600_000}
MAX_LEN = 70_000


@dataclass
class Exercised:
    """One file under exercise: its model, its open descriptor, the operations so far."""

    name: str
    path: Path
    model: bytearray
    fd: int = -1
    log: list[str] = field(default_factory=list)

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def step(f: Exercised, rng: random.Random) -> None:
    """One random operation on the file and on the model."""
    size = len(f.model)
    op = rng.choice(
        ["pwrite"] * 4 + ["pread"] * 2 + ["truncate", "append", "mmap-read", "mmap-write"]
        + ["fsync", "reopen"]
    )  # fmt: skip
    if op == "pwrite":
        offset, data = rng.randrange(size + MAX_LEN), rng.randbytes(rng.randrange(1, MAX_LEN))
        f.log.append(f"pwrite {len(data)} at {offset}")
        assert os.pwrite(f.fd, data, offset) == len(data)
        if offset > size:
            f.model.extend(bytes(offset - size))
        f.model[offset : offset + len(data)] = data
    elif op == "pread":
        offset, length = rng.randrange(size + 10), rng.randrange(1, MAX_LEN)
        f.log.append(f"pread {length} at {offset}")
        assert os.pread(f.fd, length, offset) == bytes(f.model[offset : offset + length])
    elif op == "truncate":
        new = rng.randrange(size * 2 + 10)
        f.log.append(f"truncate {size} -> {new}")
        os.ftruncate(f.fd, new)
        del f.model[new:]
        f.model.extend(bytes(new - len(f.model)))
    elif op == "append":
        data = rng.randbytes(rng.randrange(1, MAX_LEN // 4))
        f.log.append(f"append {len(data)}")
        fd = os.open(f.path, os.O_WRONLY | os.O_APPEND)
        try:
            assert os.write(fd, data) == len(data)
        finally:
            os.close(fd)
        f.model.extend(data)
    elif op in ("mmap-read", "mmap-write") and size > 0:
        offset = rng.randrange(size)
        length = rng.randrange(1, min(MAX_LEN, size - offset) + 1)
        f.log.append(f"{op} {length} at {offset}")
        with mmap.mmap(f.fd, size, mmap.MAP_SHARED) as m:
            if op == "mmap-read":
                assert m[offset : offset + length] == bytes(f.model[offset : offset + length])
            else:
                data = rng.randbytes(length)
                m[offset : offset + length] = data
                f.model[offset : offset + length] = data
                if rng.random() < 0.5:
                    m.flush()
    elif op == "fsync":
        f.log.append("fsync")
        os.fsync(f.fd)
    elif op == "reopen":
        f.log.append("close and reopen")
        f.close()
        f.open()


def check(f: Exercised, where: str) -> None:
    size = os.fstat(f.fd).st_size
    assert size == len(f.model), f"{where}: size {size}, model {len(f.model)}"
    assert os.stat(f.path).st_size == len(f.model), f"{where}: stat size differs"
    data = os.pread(f.fd, len(f.model) + 1, 0)
    if data != f.model:
        first = next(
            (i for i, (a, b) in enumerate(zip(data, f.model, strict=False)) if a != b),
            min(len(data), len(f.model)),
        )
        raise AssertionError(f"{where}: data differs from byte {first}")


def exercise(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    with scratch("fsx") as base:
        layers = mounting.make_layers(base, 1)
        originals = {name: rng.randbytes(size) for name, size in SIZES.items()}
        for name, data in originals.items():
            write(layers.lowers[0] / "d" / name, data)
        mnt = base / "mnt"
        mnt.mkdir()
        with mounting.unionfs(layers, mnt, [LAZY]):
            files = [
                Exercised(name, mnt / "d" / name, bytearray(data))
                for name, data in originals.items()
            ]
            try:
                for f in files:
                    f.open()
                for i in range(steps):
                    f = rng.choice(files)
                    where = f"seed {seed} step {i} {f.name}"
                    try:
                        step(f, rng)
                        check(f, where)
                    except (AssertionError, OSError) as exc:
                        recent = "; ".join(f.log[-8:])
                        raise AssertionError(
                            f"{where}: {exc!r}; last operations: {recent}"
                        ) from exc
            finally:
                for f in files:
                    f.close()
        assert layers.upper is not None
        for f in files:
            assert (layers.upper / "d" / f.name).read_bytes() == f.model, (
                f"seed {seed}: the upper copy of {f.name} differs from the model"
            )
        for name, data in originals.items():
            assert (layers.lowers[0] / "d" / name).read_bytes() == data, "the lower changed"
        assert_upper_is_clean(layers)


@pytest.mark.parametrize("seed", range(4))
def test_files_from_a_lower_layer_always_hold_what_was_written(seed: int) -> None:
    exercise(seed, steps=400)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 140))
def test_files_from_a_lower_layer_always_hold_what_was_written_long(seed: int) -> None:
    exercise(seed, steps=2000)
