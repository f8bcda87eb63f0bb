"""The benchmark suite runs end to end (--quick, a small subset) and writes results of the
expected shape. Measurement, not a gate: no timing is asserted here."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.__main__ import pick
from benchmarks.cleanup import RETIRE_KEEPS_BELOW, retire
from benchmarks.dataset import CHUNK, HEADER, chunk_header, write_big_file
from benchmarks.progress import Progress
from benchmarks.runner import FAILED, OK, Cell, Named, Suite, check_agreement, rotated, run_cell
from benchmarks.runtimes import disk_usage, memory_bytes
from benchmarks.workloads import Measurement, daemon_rss
from tests.mounting import UNIONFS, make_layers, unmount

REPO = Path(__file__).resolve().parent.parent
STATUSES = {"ok", "unsupported", "failed", "wrong", "unavailable"}


def fake_suite(answers: dict[str, list[str]]) -> Suite:
    def sample(workload: str, system: str) -> Measurement:
        raise AssertionError("not sampled in this test")

    suite = Suite(
        name="t",
        workloads=[Named("w", "w")],
        systems=[Named(s, s) for s in answers],
        references=("native",),
        sample=sample,
    )
    for system, digests in answers.items():
        suite.cells[("w", system)] = Cell(samples=[1.0] * len(digests), digests=digests)
    return suite


def test_rotation_gives_every_system_every_position() -> None:
    items = [Named(n, n) for n in "abc"]
    firsts = {rotated(items, r)[0].name for r in range(3)}
    assert firsts == {"a", "b", "c"}


def test_an_answer_that_differs_from_the_reference_is_marked_wrong() -> None:
    suite = fake_suite({"native": ["x", "x"], "fast": ["y", "y"], "good": ["x", "x"]})
    check_agreement(suite)
    assert suite.cells[("w", "fast")].status == "wrong"
    assert suite.cells[("w", "good")].status == OK
    assert suite.cells[("w", "fast")].median is None


def test_an_answer_that_changes_between_samples_is_marked_wrong() -> None:
    suite = fake_suite({"native": ["x", "x"], "flaky": ["x", "z"]})
    check_agreement(suite)
    assert suite.cells[("w", "flaky")].status == "wrong"


def failing_suite(error: Exception) -> Suite:
    def sample(workload: str, system: str) -> Measurement:
        raise error

    return Suite("t", [Named("w", "w")], [Named("s", "s")], ("s",), sample)


def test_a_failing_sample_is_recorded_and_the_run_goes_on() -> None:
    suite = failing_suite(RuntimeError("mount busy"))
    run_cell(suite, Named("w", "w"), Named("s", "s"), 0, 1, Progress(1, io.StringIO()))
    assert suite.cells[("w", "s")].status == FAILED


def test_an_interrupt_stops_the_run_even_if_a_clean_up_error_followed_it() -> None:
    try:
        try:
            raise KeyboardInterrupt("signal 2")
        finally:
            raise RuntimeError("mnt would not unmount; detached lazily")
    except RuntimeError as exc:
        masked = exc
    suite = failing_suite(masked)
    with pytest.raises(KeyboardInterrupt):
        run_cell(suite, Named("w", "w"), Named("s", "s"), 0, 1, Progress(1, io.StringIO()))


def test_only_takes_exact_names_groups_and_prefixes() -> None:
    names = ["rename-dir", "rename-dir-mv", "copyup-big", "copyup-small", "start-true"]
    groups = {"start-true": "containers"}
    assert pick(names, "rename-dir", "workload", groups) == {"rename-dir"}
    assert pick(names, "copyup", "workload", groups) == {"copyup-big", "copyup-small"}
    assert pick(names, "containers", "workload", groups) == {"start-true"}
    with pytest.raises(SystemExit):
        pick(names, "nope", "workload", groups)


def test_big_files_carry_a_header_per_chunk(tmp_path: Path) -> None:
    path = tmp_path / "big"
    write_big_file(path, "big", 2 * CHUNK + 10)
    data = path.read_bytes()
    assert len(data) == 2 * CHUNK + 10
    assert data[2 * CHUNK : 2 * CHUNK + HEADER][:10] == chunk_header("big", 2)[:10]
    assert len({chunk_header("big", i) for i in range(3)}) == 3


def test_disk_usage_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    (tmp_path / "b").hardlink_to(tmp_path / "a")
    assert 100_000 <= disk_usage(tmp_path) < 200_000


def test_a_retired_sample_loses_its_large_files_now_and_keeps_the_rest(tmp_path: Path) -> None:
    """Small files wait for the end of the run (ext4 without a journal scans recently
    freed inodes at every allocation); large ones go at once (their pages never hit disk)."""
    (tmp_path / "upper" / "d").mkdir(parents=True)
    big, small = tmp_path / "upper" / "big", tmp_path / "upper" / "d" / "small"
    with open(big, "wb") as f:
        f.truncate(RETIRE_KEEPS_BELOW)
    small.write_bytes(b"x")
    retire(tmp_path)
    assert not big.exists()
    assert small.read_bytes() == b"x"


def test_memory_limits_parse_like_docker() -> None:
    assert memory_bytes("64m") == 64 * 2**20
    assert memory_bytes("1g") == 2**30
    assert memory_bytes("4096") == 4096


def test_markdown_footnotes_the_reason_a_system_has_no_time() -> None:
    suite = fake_suite({"native": ["x"], "broken": []})
    suite.cells[("w", "broken")].stop("failed", "mount | exited 1")
    text = report.suite_markdown(suite)
    assert "| w | **1.00 s** (1.00 s–1.00 s) | failed [1] |" in text
    assert "1. mount \\| exited 1" in text


@pytest.mark.root
def test_quick_run_writes_json_markdown_and_chart(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = [
        sys.executable,
        "-m",
        "benchmarks",
        "--quick",
        "--rounds=1",
        "--only=copyup-small,write,stat-warm,held,rename-dir,start-true",
        "--systems=native,overlayfs,lamina-unionfs,unshare,lamina",
        f"--workdir={tmp_path}",
        f"--out={out}",
    ]
    # lamina's containers go under a cgroup parent of this test's own, removed afterwards.
    parent = f"lamina-test-bench-{os.getpid()}"
    env = dict(os.environ, LAMINA_CGROUP_PARENT=parent)
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        _, stderr = proc.communicate(timeout=100)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the harness unmounts and cleans up before exiting
        _, stderr = proc.communicate(timeout=60)
        pytest.fail(f"the quick run took over 100 s:\n{stderr[-2000:]}")
    finally:
        leftovers = [d for d in Path("/sys/fs/cgroup").glob(f"*/{parent}") if d.is_dir()]
        for directory in leftovers:
            directory.rmdir()  # empty: each container's own cgroup is gone already
    assert proc.returncode == 0, stderr[-2000:]
    assert "round 1/1" in stderr  # the progress display

    (doc_path,) = out.glob("*-quick.json")
    doc = json.loads(doc_path.read_text())
    assert doc["mode"] == "quick"
    assert {"kernel", "cpu", "load_average", "versions"} <= doc["machine"].keys()
    fs = doc["suites"]["filesystem"]
    containers = doc["suites"]["containers"]
    assert set(fs["workloads"]) == {"copyup-small", "write", "stat-warm", "held", "rename-dir"}
    assert set(fs["systems"]) == {"native", "overlayfs", "lamina-unionfs"}
    assert set(containers["workloads"]) == {"start-true"}
    for suite in (fs, containers):
        for workload in suite["workloads"].values():
            for result in workload["results"].values():
                assert result["status"] in STATUSES
                if result["status"] == "ok":
                    assert result["min"] <= result["median"] <= result["max"]
                else:
                    assert result["note"], "a result that is not ok must say why"
    copyup = fs["workloads"]["copyup-small"]["results"]
    assert copyup["native"]["status"] == "ok"
    assert copyup["overlayfs"]["status"] == "ok"
    assert copyup["overlayfs"]["ratios"]["overlayfs"] == pytest.approx(1.0)
    written = fs["workloads"]["write"]["results"]
    assert {written[s]["status"] for s in ("native", "overlayfs", "lamina-unionfs")} == {"ok"}
    assert fs["workloads"]["rename-dir"]["results"]["overlayfs"]["status"] in {"ok", "unsupported"}
    held = fs["workloads"]["held"]["results"]
    assert held["lamina-unionfs"]["status"] == "ok"
    assert "daemon_growth" in held["lamina-unionfs"]["extras"]  # a FUSE daemon's memory
    assert containers["workloads"]["start-true"]["results"]["unshare"]["status"] == "ok"

    markdown = doc_path.with_suffix(".md").read_text()
    assert "| workload | native (no union) | kernel overlayfs |" in markdown
    assert doc_path.with_suffix(".png").stat().st_size > 0
    assert not list(tmp_path.glob("lamina-bench-*")), "scratch directory left behind"
    assert str(tmp_path) not in Path("/proc/self/mounts").read_text(), "mount left behind"


@pytest.mark.root
def test_the_daemon_of_a_mount_is_found_for_its_memory(tmp_path: Path) -> None:
    layers = make_layers(tmp_path, 1)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run([str(UNIONFS), "-o", layers.options(), str(mnt)], check=True)
        rss = daemon_rss(mnt)
        assert rss is not None and 5 * 2**20 < rss < 500 * 2**20
        assert daemon_rss(tmp_path) is None  # no daemon names it
    finally:
        unmount(mnt)
