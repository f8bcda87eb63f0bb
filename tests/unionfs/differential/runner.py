"""Run one op sequence on two mounts of identical layers and stop at the first difference.

Side "a" is the reference (the kernel overlayfs in CI): the generator aims each op at a's
merged view, then the op runs on both sides and the outcomes must be equal. Every
`check_every` ops, and at the end, the merged views must be equal; after unmounting, the
upper dirs must be equal and every lower layer must be exactly as it was built.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from tests.mounting import Layers, kernel_overlay, unionfs
from tests.unionfs.differential.executor import execute, release_all
from tests.unionfs.differential.layers import build_layers
from tests.unionfs.differential.ops import WEIGHTS, Op, OpGenerator, View
from tests.unionfs.differential.snapshot import (
    Masks,
    diff_snapshots,
    fingerprint,
    masked,
    masked_outcome,
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


def mount_ours_with_writeback(layers: Layers, mountpoint: Path) -> AbstractContextManager[Path]:
    return unionfs(layers, mountpoint, ("writeback",))  # opt-in; the default has none


def mount_fuse_overlayfs(layers: Layers, mountpoint: Path) -> AbstractContextManager[Path]:
    return unionfs(layers, mountpoint, program=FUSE_OVERLAYFS)


IMPLEMENTATIONS: dict[str, Mounter] = {
    "kernel": mount_kernel,
    "unionfs": mount_ours,
    "unionfs-writeback": mount_ours_with_writeback,
    "fuse-overlayfs": mount_fuse_overlayfs,
}


@dataclass(frozen=True)
class Scenario:
    """Where a sequence starts: the seed's layers, maybe already lived in by the kernel.

    With warmup > 0, both copies are first mounted with the kernel overlayfs and the same
    `warmup` generated ops run on each, so the upper dir starts with what a previous
    session leaves: copied-up files, whiteouts, opaque dirs and redirects in the kernel's
    own hand, which the implementation under test must read. With stacked, that upper
    then becomes the topmost lower layer under a fresh upper, as a committed image layer
    does: redirects, opaque dirs and whiteouts must then work from a lower layer.
    """

    seed: int
    warmup: int = 0
    stacked: bool = False

    def __str__(self) -> str:
        warmup = f", warm-up {self.warmup}" if self.warmup else ""
        return f"seed {self.seed}{warmup}{', stacked' if self.stacked else ''}"


@dataclass
class Mismatch(Exception):
    """The first difference between the two sides, with what is needed to replay it."""

    scenario: Scenario
    stage: str  # "outcome", "merged view", "upper dir", "lower layer", "kernel remount"
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
        lines = [f"{a} and {b} differ: {self.stage}, {self.scenario}, after op #{len(self.ops)}"]
        if self.stage == "outcome":
            lines.append(f"  op #{len(self.ops) - 1}: {self.ops[-1]}")
        lines += self.details
        lines.append("  the last ops:")
        first = max(0, len(self.ops) - 8)
        lines += [f"    #{i}: {op}" for i, op in enumerate(self.ops[first:], first)]
        warmup = f" --warmup {self.scenario.warmup}" if self.scenario.warmup else ""
        warmup += " --stacked" if self.scenario.stacked else ""
        lines.append(
            f"  reduce: python -m tests.unionfs.differential run --pair {a}:{b}"
            f" --seeds {self.scenario.seed}{warmup} --reduce"
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class Pair:
    """The two implementations to compare, reference first."""

    a: str = "kernel"
    b: str = "unionfs"

    @property
    def names(self) -> tuple[str, str]:
        return (self.a, self.b)


NextOp = Callable[[View, int], Op | None]


def generated(
    seed: int, n_ops: int, stream: str = "ops", weights: dict[str, int] | None = None
) -> NextOp:
    """n_ops ops drawn for seed, each aimed at the view it is given."""
    generator = OpGenerator(seed, weights, stream=stream)
    return lambda view, index: generator.next(view) if index < n_ops else None


def fixed(ops: Sequence[Op]) -> NextOp:
    return lambda _view, index: ops[index] if index < len(ops) else None


OP_DEADLINE = 30.0


def stack_upper(layers: Layers) -> Layers:
    """The upper dir becomes the topmost lower layer, under a fresh upper and workdir."""
    assert layers.upper is not None and layers.work is not None
    base = layers.upper.parent
    lower = base / f"lower-stacked{len(layers.lowers)}"
    layers.upper.rename(lower)
    shutil.rmtree(layers.work)
    upper, work = base / "upper", base / "work"
    upper.mkdir()
    work.mkdir()
    return Layers((lower, *layers.lowers), upper, work)


def daemons_serving(mountpoints: tuple[str, ...]) -> list[int]:
    """Pids of FUSE daemons whose command line ends with one of mountpoints."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-o" in argv and any(os.fsencode(m) in argv for m in mountpoints):
            pids.append(int(entry))
    return pids


class _Session:
    """One side-by-side run on two copies of a scenario's layers."""

    def __init__(self, scenario: Scenario, pair: Pair, base: Path, masks: Masks) -> None:
        self.scenario, self.pair, self.masks = scenario, pair, masks
        self.layers = (
            build_layers(scenario.seed, base / "a"),
            build_layers(scenario.seed, base / "b"),
        )
        self.mounts = (base / "a" / "mnt", base / "b" / "mnt")
        for mountpoint in self.mounts:
            mountpoint.mkdir()
        self.ops: list[Op] = []
        self.hung: list[str] = []

    def fail(self, stage: str, details: list[str]) -> Mismatch:
        details = [*self.hung, *details]
        return Mismatch(self.scenario, stage, self.pair.names, list(self.ops), details)

    @contextlib.contextmanager
    def deadline(self, mountpoints: tuple[str, str]) -> Iterator[None]:
        """Kill the daemons serving mountpoints if the body outlives OP_DEADLINE.

        A hung FUSE request would block the test forever; without its daemon the mount
        answers ENOTCONN, so the run fails with a message instead.
        """

        def fire() -> None:
            for pid in daemons_serving(mountpoints):
                self.hung.append(f"  HUNG: killed pid {pid} after {OP_DEADLINE} s")
                os.kill(pid, signal.SIGKILL)

        timer = threading.Timer(OP_DEADLINE, fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    @contextlib.contextmanager
    def mounted(self, names: tuple[str, str]) -> Iterator[tuple[str, str]]:
        with (
            IMPLEMENTATIONS[names[0]](self.layers[0], self.mounts[0]),
            IMPLEMENTATIONS[names[1]](self.layers[1], self.mounts[1]),
        ):
            yield str(self.mounts[0]), str(self.mounts[1])

    def warm_up(self) -> None:
        if not self.scenario.warmup:
            return
        with self.mounted(("kernel", "kernel")) as (mnt_a, mnt_b):
            weights = WEIGHTS | {"remount": 0}
            next_op = generated(self.scenario.seed, self.scenario.warmup, "warmup", weights)
            try:
                while (op := next_op(view_of(mnt_a), len(self.ops))) is not None:
                    self.ops.append(op)
                    if execute(op, mnt_a) != execute(op, mnt_b):
                        raise self.fail("warm-up (kernel against itself)", [f"  {op}"])
            finally:
                release_held(self.mounts)
        self.ops = []
        if self.scenario.stacked:
            self.layers = (stack_upper(self.layers[0]), stack_upper(self.layers[1]))

    def run_ops(self, next_op: NextOp, check_every: int) -> None:
        with contextlib.ExitStack() as mounts:
            mnt_a, mnt_b = mounts.enter_context(self.mounted(self.pair.names))
            mounts.callback(release_held, self.mounts)  # before the unmounts
            while (op := next_op(view_of(mnt_a), len(self.ops))) is not None:
                self.ops.append(op)
                if op.name == "remount":  # what lives only in memory is gone after this
                    mounts.close()
                    mnt_a, mnt_b = mounts.enter_context(self.mounted(self.pair.names))
                    mounts.callback(release_held, self.mounts)
                    self.compare_views(mnt_a, mnt_b)
                    continue
                with self.deadline((mnt_a, mnt_b)):
                    self.run_op(op, mnt_a, mnt_b)
                    if check_every and len(self.ops) % check_every == 0:
                        self.compare_trees("merged view", mnt_a, mnt_b)
            with self.deadline((mnt_a, mnt_b)):
                self.compare_trees("merged view", mnt_a, mnt_b)

    def run_op(self, op: Op, mnt_a: str, mnt_b: str) -> None:
        outcome_a, outcome_b = execute(op, mnt_a), execute(op, mnt_b)
        masks = self.masks
        if masked_outcome(op.name, outcome_a, masks) != masked_outcome(op.name, outcome_b, masks):
            details = [f"  {self.pair.a}: {outcome_a}", f"  {self.pair.b}: {outcome_b}"]
            raise self.fail("outcome", details)
        self.compare_views(mnt_a, mnt_b)

    def compare_views(self, mnt_a: str, mnt_b: str) -> None:
        """After every op: the same paths with the same kinds (cheap; full checks are rarer)."""
        view_a, view_b = view_of(mnt_a), view_of(mnt_b)
        if view_a != view_b:
            diff = [
                f"  {path or '/'}: kind: {self.pair.a}={view_a.get(path)!r} "
                f"{self.pair.b}={view_b.get(path)!r}"
                for path in sorted(view_a.keys() | view_b.keys())
                if view_a.get(path) != view_b.get(path)
            ]
            raise self.fail("merged view", diff)

    def compare_trees(self, stage: str, a: str | Path, b: str | Path, upper: bool = False) -> None:
        snap_a = masked(snapshot(a, upper=upper), self.masks, upper=upper)
        snap_b = masked(snapshot(b, upper=upper), self.masks, upper=upper)
        diff = diff_snapshots(snap_a, snap_b, self.pair.names)
        if diff:
            raise self.fail(stage, diff)

    def compare_uppers(self) -> None:
        upper_a, upper_b = self.layers[0].upper, self.layers[1].upper
        assert upper_a is not None and upper_b is not None
        self.compare_trees("upper dir", upper_a, upper_b, upper=True)

    def compare_kernel_remounts(self) -> None:
        """The kernel reads both uppers the same way: checks what RULE_REDIRECT_PRESENCE skips."""
        with self.mounted(("kernel", "kernel")) as (mnt_a, mnt_b):
            self.compare_trees("kernel remount", mnt_a, mnt_b)

    def lowers(self) -> list[Path]:
        return [*self.layers[0].lowers, *self.layers[1].lowers]


def release_held(mountpoints: tuple[Path, Path]) -> None:
    for mountpoint in mountpoints:
        release_all(str(mountpoint))


def run(
    scenario: Scenario,
    pair: Pair,
    base: Path,
    next_op: NextOp,
    check_every: int = 0,
    masks: Masks = frozenset(),
) -> list[Op]:
    """Run ops from next_op(view of side a, index) until it returns None; raise Mismatch."""
    base.mkdir(parents=True, exist_ok=True)
    session = _Session(scenario, pair, base, masks)
    session.warm_up()
    lowers_before = [fingerprint(p) for p in session.lowers()]
    session.run_ops(next_op, check_every)
    session.compare_uppers()
    session.compare_kernel_remounts()
    for path, before in zip(session.lowers(), lowers_before, strict=True):
        after = fingerprint(path)
        if before != after:
            changed = sorted(
                k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
            )
            raise session.fail("lower layer", [f"  {path} changed: {changed}"])
    return session.ops


def run_generated(
    scenario: Scenario,
    n_ops: int,
    pair: Pair,
    base: Path,
    check_every: int = 50,
    weights: dict[str, int] | None = None,
    masks: Masks = frozenset(),
) -> list[Op]:
    """The differential test proper: n_ops generated ops on the scenario."""
    next_op = generated(scenario.seed, n_ops, weights=weights)
    return run(scenario, pair, base, next_op, check_every, masks)


def replay(
    scenario: Scenario, ops: Sequence[Op], pair: Pair, base: Path, masks: Masks = frozenset()
) -> None:
    """Run a fixed op list (a reproduction) on fresh layers; raise Mismatch."""
    try:
        run(scenario, pair, base, fixed(ops), masks=masks)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def reduce(
    mismatch: Mismatch,
    pair: Pair,
    base: Path,
    log: Callable[[str], None],
    masks: Masks = frozenset(),
    max_trials: int = 300,
) -> Mismatch:
    """Shrink the op list (ddmin) while a mismatch of the same signature still occurs.

    Stops after max_trials replays with the shortest reproduction found so far.
    """
    trials = 0

    def failing(ops: list[Op]) -> Mismatch | None:
        nonlocal trials
        trials += 1
        try:
            replay(mismatch.scenario, ops, pair, base / f"trial{trials}", masks)
        except Mismatch as found:
            return found if found.signature == mismatch.signature else None
        return None

    best = mismatch
    ops = list(mismatch.ops)
    chunks = 2
    while len(ops) >= 2 and trials < max_trials:
        size = max(1, len(ops) // chunks)
        for start in range(0, len(ops), size):
            found = failing(ops[:start] + ops[start + size :])
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
