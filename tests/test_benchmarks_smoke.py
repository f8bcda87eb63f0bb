"""The benchmark suite runs end to end (--quick, a small subset) and writes results of the
expected shape. Measurement, not a gate: no timing is asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.runner import OK, Cell, Named, Suite, check_agreement, rotated
from benchmarks.workloads import Measurement

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


@pytest.mark.root
def test_quick_run_writes_json_markdown_and_chart(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = [
        sys.executable,
        "-m",
        "benchmarks",
        "--quick",
        "--rounds=1",
        "--only=copyup-small,stat-warm,rename-dir,start-true",
        "--systems=native,overlayfs,lamina-unionfs,unshare,lamina",
        f"--workdir={tmp_path}",
        f"--out={out}",
    ]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "round 1/1" in run.stderr  # the progress display

    (doc_path,) = out.glob("*-quick.json")
    doc = json.loads(doc_path.read_text())
    assert doc["mode"] == "quick"
    assert {"kernel", "cpu", "load_average", "versions"} <= doc["machine"].keys()
    fs = doc["suites"]["filesystem"]
    containers = doc["suites"]["containers"]
    assert set(fs["workloads"]) == {"copyup-small", "stat-warm", "rename-dir"}
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
    assert fs["workloads"]["rename-dir"]["results"]["overlayfs"]["status"] in {"ok", "unsupported"}
    assert containers["workloads"]["start-true"]["results"]["unshare"]["status"] == "ok"

    markdown = doc_path.with_suffix(".md").read_text()
    assert "| workload | native (no union) | kernel overlayfs |" in markdown
    assert doc_path.with_suffix(".png").stat().st_size > 0
    assert not list(tmp_path.glob("lamina-bench-*")), "scratch directory left behind"
    assert str(tmp_path) not in Path("/proc/self/mounts").read_text(), "mount left behind"
