"""Run one op sequence on two mounts of identical layers and stop at the first difference.

Side "a" is the reference (the kernel overlayfs in CI): the generator aims each op at a's
merged view, then the op runs on both sides and the outcomes must be equal. Every
`check_every` ops, and at the end, the merged views must be equal; after unmounting, the
upper dirs must be equal and every lower layer must be exactly as it was built.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from tests.mounting import Layers, kernel_overlay, unionfs
from tests.unionfs.differential.executor import execute
from tests.unionfs.differential.layers import build_layers
from tests.unionfs.differential.ops import Op, OpGenerator, View
from tests.unionfs.differential.snapshot import (
    diff_snapshots,
    fingerprint,
    snapshot,
    view_of,
)

Mounter = Callable[[Layers, Path], AbstractContextManager[Path]]

# The reference the issue describes: directories with lower parts rename with
# trusted.overlay.redirect (the module default may be off), no index, no metacopy.
KERNEL_OPTIONS = ("redirect_dir=on", "index=off", "xino=off", "metacopy=off")
FUSE_OVERLAYFS = Path("/usr/bin/fuse-overlayfs")


def mount_kernel(layers: Layers, mountpoint: Path) -> AbstractContextManager[Path]:
    return kernel_overlay(layers, mountpoint, KERNEL_OPTIONS)


def mount_ours(layers: Layers, mountpoint: Path) -> AbstractContextManager[Path]:
    return unionfs(layers, mountpoint)


def mount_fuse_overlayfs(layers: Layers, mountpoint: Path) -> AbstractContextManager[Path]:
    return unionfs(layers, mountpoint, program=FUSE_OVERLAYFS)


IMPLEMENTATIONS: dict[str, Mounter] = {
    "kernel": mount_kernel,
    "unionfs": mount_ours,
    "fuse-overlayfs": mount_fuse_overlayfs,
}


@dataclass
class Mismatch(Exception):
    """The first difference between the two sides, with what is needed to replay it."""

    seed: int
    stage: str  # "outcome", "merged view", "upper dir", "lower layer"
    names: tuple[str, str]
    ops: list[Op]  # every op run so far, the failing one last
    details: list[str] = field(default_factory=list)

    @property
    def signature(self) -> tuple[str, str]:
        """What kind of difference this is: kept equal while a reproduction shrinks."""
        if self.stage == "outcome":
            return (self.stage, self.ops[-1].name)
        first = self.details[0].split(":")[1].strip() if self.details else ""
        return (self.stage, first)

    def __str__(self) -> str:
        a, b = self.names
        lines = [f"{a} and {b} differ: {self.stage}, seed {self.seed}, after op #{len(self.ops)}"]
        if self.stage == "outcome":
            lines.append(f"  op #{len(self.ops) - 1}: {self.ops[-1]}")
        lines += self.details
        lines.append("  the last ops:")
        first = max(0, len(self.ops) - 8)
        lines += [f"    #{i}: {op}" for i, op in enumerate(self.ops[first:], first)]
        return "\n".join(lines)


@dataclass(frozen=True)
class Pair:
    """The two implementations to compare, reference first."""

    a: str = "kernel"
    b: str = "unionfs"

    @property
    def names(self) -> tuple[str, str]:
        return (self.a, self.b)


@contextlib.contextmanager
def _mounted_pair(seed: int, pair: Pair, base: Path) -> Iterator[tuple[Layers, Layers, Path, Path]]:
    """Build the seed's layers twice and mount them: side a and side b."""
    sides = []
    for side in ("a", "b"):
        layers = build_layers(seed, base / side)
        mountpoint = base / side / "mnt"
        mountpoint.mkdir()
        sides.append((layers, mountpoint))
    (layers_a, mnt_a), (layers_b, mnt_b) = sides
    with (
        IMPLEMENTATIONS[pair.a](layers_a, mnt_a),
        IMPLEMENTATIONS[pair.b](layers_b, mnt_b),
    ):
        yield layers_a, layers_b, mnt_a, mnt_b


def run(
    seed: int,
    pair: Pair,
    base: Path,
    next_op: Callable[[View, int], Op | None],
    check_every: int = 0,
) -> list[Op]:
    """Run ops from next_op(view of a, index) until it returns None; raise Mismatch."""
    ops: list[Op] = []

    def fail(stage: str, details: list[str]) -> Mismatch:
        return Mismatch(seed, stage, pair.names, list(ops), details)

    def compare_merged(mnt_a: Path, mnt_b: Path) -> None:
        diff = diff_snapshots(snapshot(mnt_a), snapshot(mnt_b), pair.names)
        if diff:
            raise fail("merged view", diff)

    base.mkdir(parents=True, exist_ok=True)
    with _mounted_pair(seed, pair, base) as (layers_a, layers_b, mnt_a, mnt_b):
        lowers_before = [fingerprint(p) for p in layers_a.lowers + layers_b.lowers]
        while (op := next_op(view_of(str(mnt_a)), len(ops))) is not None:
            ops.append(op)
            outcome_a, outcome_b = execute(op, str(mnt_a)), execute(op, str(mnt_b))
            if outcome_a != outcome_b:
                raise fail("outcome", [f"  {pair.a}: {outcome_a}", f"  {pair.b}: {outcome_b}"])
            if check_every and len(ops) % check_every == 0:
                compare_merged(mnt_a, mnt_b)
        compare_merged(mnt_a, mnt_b)
    assert layers_a.upper is not None and layers_b.upper is not None
    upper_diff = diff_snapshots(
        snapshot(layers_a.upper, upper=True), snapshot(layers_b.upper, upper=True), pair.names
    )
    if upper_diff:
        raise fail("upper dir", upper_diff)
    lowers_after = [fingerprint(p) for p in layers_a.lowers + layers_b.lowers]
    for path, before, after in zip(
        layers_a.lowers + layers_b.lowers, lowers_before, lowers_after, strict=True
    ):
        if before != after:
            changed = sorted(
                k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
            )
            raise fail("lower layer", [f"  {path} changed: {changed}"])
    return ops


def run_generated(seed: int, n_ops: int, pair: Pair, base: Path, check_every: int = 50) -> list[Op]:
    """The differential test proper: n_ops generated ops for seed."""
    generator = OpGenerator(seed)

    def next_op(view: View, index: int) -> Op | None:
        return generator.next(view) if index < n_ops else None

    return run(seed, pair, base, next_op, check_every)


def replay(seed: int, ops: Sequence[Op], pair: Pair, base: Path) -> None:
    """Run a fixed op list (a reproduction) on fresh layers for seed; raise Mismatch."""
    try:
        run(seed, pair, base, lambda _view, i: ops[i] if i < len(ops) else None)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def reduce(mismatch: Mismatch, pair: Pair, base: Path, log: Callable[[str], None]) -> Mismatch:
    """Shrink the op list (ddmin) while a mismatch of the same signature still occurs."""
    trials = 0

    def failing(ops: list[Op]) -> Mismatch | None:
        nonlocal trials
        trials += 1
        try:
            replay(mismatch.seed, ops, pair, base / f"trial{trials}")
        except Mismatch as found:
            return found if found.signature == mismatch.signature else None
        return None

    best = mismatch
    ops = list(mismatch.ops)
    chunks = 2
    while len(ops) >= 2:
        size = max(1, len(ops) // chunks)
        for start in range(0, len(ops), size):
            candidate = ops[:start] + ops[start + size :]
            found = failing(candidate)
            if found is not None:
                ops, best = list(found.ops), found
                chunks = max(chunks - 1, 2)
                log(f"  reduced to {len(ops)} ops ({trials} trials)")
                break
        else:
            if size == 1:
                break
            chunks = min(len(ops), chunks * 2)
    return best
