"""Differential test (issue 2): our unionfs against the kernel overlayfs, op by op.

The same seeded layers are built twice, one copy mounted with each implementation; the
same seeded random operations run on both. Each op's result or errno, the merged views
(every 50 ops and at the end), the upper dirs on disk and the untouched lower layers must
match. What is deliberately not compared is listed, rule by rule, in
`differential/snapshot.py`. A failure prints the seed, the op and both outcomes; reduce it
to a few ops with `python -m tests.unionfs.differential run --seeds N --reduce`.
"""

from __future__ import annotations

import os
import signal
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.mounting import Layers, kernel_overlay
from tests.unionfs.differential import runner
from tests.unionfs.differential.executor import execute
from tests.unionfs.differential.layers import build_layers
from tests.unionfs.differential.ops import Op
from tests.unionfs.differential.runner import Mismatch, Pair, Scenario, replay, run_generated
from tests.unionfs.differential.snapshot import REDIRECT, fingerprint, snapshot, upper_xattrs

pytestmark = pytest.mark.root

SEEDS = range(8)
OPS_PER_SEED = 300
WARMUP_OPS = 100


def assert_same(scenario: Scenario, pair: Pair, base: Path, n_ops: int = OPS_PER_SEED) -> None:
    report = None
    try:
        run_generated(scenario, n_ops, pair, base)
    except Mismatch as mismatch:
        report = str(mismatch)
    if report is not None:  # failed outside the except block: one report, not two
        pytest.fail(report, pytrace=False)


def scenario_for(seed: int) -> Scenario:
    """Even seeds start from fresh layers; odd ones from an upper dir the kernel has lived
    in, and every other odd one with that upper stacked as a lower layer (see Scenario)."""
    if seed % 2 == 0:
        return Scenario(seed)
    return Scenario(seed, warmup=WARMUP_OPS, stacked=seed % 4 == 3)


SCENARIOS = [scenario_for(seed) for seed in SEEDS]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_unionfs_behaves_like_the_kernel_overlayfs(scenario: Scenario, tmp_path: Path) -> None:
    assert_same(scenario, Pair("kernel", "unionfs"), tmp_path)


# Reductions of differences the generated runs found, kept as short regression specs.
REPRODUCTIONS = {
    "create keeps the setgid bit": (Scenario(1), ["create('n2', 0o2755)"]),
    "mkdir in a merged dir marks it opaque": (Scenario(0), ["mkdir('n2', 0o755)"]),
    "readdir returns dot and dotdot": (Scenario(1), ["listdir('')"]),
    "a failing setxattr(XATTR_REPLACE) still copies the entry up": (
        Scenario(4),
        ["setxattr('c/b/a', 'user.missing', b'x', 2)"],
    ),
    "hard links of exchanged files stay reachable": (
        Scenario(17),
        [
            "create('n1', 0o644)",
            "create('n3', 0o644)",
            "renameat2('n3', 'n1', 2)",
            "link('n1', 'n2')",
            "unlink('n1')",
            "truncate('n2', 0)",
        ],
    ),
    "whiteouts belong to the mounter, not to a setgid dir's group": (
        Scenario(4),
        ["unlink('c/b/a')"],
    ),
    "a redirect stops at a lower symlink (no ELOOP)": (
        Scenario(220),
        ["rename('d/a', 'a/n7')", "remount()", "listdir('a')"],
    ),
    "a redirect stops at a lower non-directory": (
        Scenario(25),
        ["rename('f', 'd/a/n0')", "rename('d/a/n0/e', 'd/n4')", "remount()"],
    ),
    "a kernel-made redirect is followed the kernel's way": (
        Scenario(310, warmup=150),
        ["listdir('f')"],
    ),
    "a relative redirect in a lower layer is relative to its parent": (
        Scenario(3, warmup=100, stacked=True),
        ["renameat2('f', 'a/x', 2)", "remount()"],
    ),
    "truncate to the current size updates mtime": (
        Scenario(3),
        [
            "create('n1', 0o644)",
            "utime('n1', 1000000000000000000, 1000000000000000000)",
            "truncate('n1', 0)",
            "stat('n1')",
        ],
    ),
}


@pytest.mark.parametrize("name", REPRODUCTIONS)
def test_reproduction(name: str, tmp_path: Path) -> None:
    scenario, ops = REPRODUCTIONS[name]
    report = None
    try:
        replay(scenario, [Op.parse(op) for op in ops], Pair("kernel", "unionfs"), tmp_path)
    except Mismatch as mismatch:
        report = str(mismatch)
    if report is not None:
        pytest.fail(report, pytrace=False)


# -- the harness itself -------------------------------------------------------------------


def test_the_kernel_against_itself_never_differs(tmp_path: Path) -> None:
    """Layers, op streams and snapshots are deterministic: any difference is the filesystem's."""
    for scenario in SCENARIOS:
        assert_same(scenario, Pair("kernel", "kernel"), tmp_path / str(scenario.seed))


def test_one_seed_builds_identical_layers(tmp_path: Path) -> None:
    first, second = build_layers(7, tmp_path / "1"), build_layers(7, tmp_path / "2")

    def comparable(tree: Path) -> dict[str, tuple[object, ...]]:
        # inode numbers and ctimes differ between two copies; all else must not
        return {k: (v[0], *v[2:7], *v[8:]) for k, v in fingerprint(tree).items()}

    for a, b in zip(first.lowers, second.lowers, strict=True):
        assert comparable(a) == comparable(b)
        assert snapshot(a) == snapshot(b)


def kernel_without_redirects(layers: Layers, mountpoint: Path) -> AbstractContextManager[Path]:
    return kernel_overlay(layers, mountpoint, ("redirect_dir=off", "index=off"))


def test_a_difference_names_the_seed_the_op_and_both_outcomes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without redirect_dir, the kernel refuses to rename a directory that has lower parts.
    monkeypatch.setitem(runner.IMPLEMENTATIONS, "kernel-noredirect", kernel_without_redirects)
    top_lower = build_layers(0, tmp_path / "probe").lowers[0]
    lower_dir = next(p.name for p in sorted(top_lower.iterdir()) if p.is_dir())
    ops = [Op("listdir", ("",)), Op("rename", (lower_dir, "renamed"))]
    with pytest.raises(Mismatch) as caught:
        replay(Scenario(0), ops, Pair("kernel", "kernel-noredirect"), tmp_path / "run")
    report = str(caught.value)
    assert "seed 0" in report
    assert f"op #1: rename({lower_dir!r}, 'renamed')" in report
    assert "kernel: ok" in report
    assert "kernel-noredirect: EXDEV" in report


@pytest.mark.skipif(
    not os.environ.get("LAMINA_DIFF_FUSE_OVERLAYFS"),
    reason="a peer survey, not a gate: set LAMINA_DIFF_FUSE_OVERLAYFS=1 to run",
)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fuse_overlayfs_behaves_like_the_kernel_overlayfs(
    scenario: Scenario, tmp_path: Path
) -> None:
    assert_same(scenario, Pair("kernel", "fuse-overlayfs"), tmp_path)


def test_upper_dirs_compare_redirects_by_presence_and_skip_kernel_bookkeeping() -> None:
    raw = {
        "trusted.overlay.origin": b"\x00\xfb",
        "trusted.overlay.impure": b"y",
        "trusted.overlay.opaque": b"y",
        "user.x": b"1",
    }
    assert upper_xattrs(raw | {REDIRECT: b"/a/old"}, "b/new", {}) == {
        "trusted.overlay.opaque": b"y",
        "user.x": b"1",
        REDIRECT: b"<present>",
    }


def test_a_redirect_to_where_lookup_goes_anyway_counts_as_none() -> None:
    # The kernel leaves these behind when a rename fails late (ENOTEMPTY).
    assert REDIRECT not in upper_xattrs({REDIRECT: b"new"}, "b/new", {})
    assert REDIRECT not in upper_xattrs({REDIRECT: b"/b/new"}, "b/new", {})
    # under a moved parent, the child's lower path follows the parent's redirect
    lower_paths = {"n5/c": "f"}
    assert REDIRECT not in upper_xattrs({REDIRECT: b"/f/f"}, "n5/c/f", lower_paths)
    assert upper_xattrs({REDIRECT: b"/n5/c/f"}, "n5/c/f", lower_paths) == {REDIRECT: b"<present>"}


def test_ops_print_as_python_and_parse_back() -> None:
    op = Op("setxattr", ("a/b", "user.x", b"\x00v", 1))
    assert str(op) == "setxattr('a/b', 'user.x', b'\\x00v', 1)"
    assert Op.parse(str(op)) == op
    assert Op.parse("listdir('')") == Op("listdir", ("",))


def test_a_hung_daemon_fails_the_run_instead_of_hanging_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "OP_DEADLINE", 1.0)

    def execute_with_a_stopped_daemon(op: Op, root: str) -> str:
        for pid in runner.daemons_serving((root,)):
            os.kill(pid, signal.SIGSTOP)
        return execute(op, root)

    monkeypatch.setattr(runner, "execute", execute_with_a_stopped_daemon)
    with pytest.raises(Mismatch, match="HUNG: killed pid"):
        replay(Scenario(0), [Op("stat", ("",))], Pair("kernel", "unionfs"), tmp_path)
