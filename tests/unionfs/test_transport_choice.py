"""Which FUSE transport our mounts take where the kernel offers io_uring: the verdict's
logic and file (unionfs/transport_choice.py), the trial that measures it on real mounts
(unionfs/transport_trial.py), and the mount following it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests import mounting
from unionfs import transport_choice, transport_trial
from unionfs.transport_choice import DEV, IO_URING, Figures

BOOT = transport_choice.boot_id()


def test_io_uring_is_taken_only_where_it_is_clearly_faster() -> None:
    assert transport_choice.decide(([40_000, 41_000, 39_000], [30_000, 31_000, 29_000])) == IO_URING
    assert transport_choice.decide(([40_000, 41_000, 39_000], [48_000, 47_000, 49_000])) == DEV
    # 5% faster is within what two runs of the same thing differ by here: not taken.
    assert transport_choice.decide(([40_000, 40_000, 40_000], [38_000, 38_000, 38_000])) == DEV
    # Medians: one round disturbed by a passing load does not decide.
    assert transport_choice.decide(([40_000, 90_000, 39_000], [30_000, 31_000, 29_000])) == IO_URING


def test_a_verdict_counts_in_the_boot_it_was_measured_in_and_one_by_hand_always() -> None:
    assert transport_choice.parse(f"dev\n# a lookup: ...; kernel 6.18 boot={BOOT}\n", BOOT) == DEV
    assert transport_choice.parse("io_uring\n# ...; kernel 6.18 boot=another\n", BOOT) is None
    assert transport_choice.parse("io_uring\n", BOOT) == IO_URING  # written by hand
    assert transport_choice.parse("", BOOT) is None
    assert transport_choice.parse("fast\n", BOOT) is None


def test_the_first_mount_measures_and_the_others_read_its_verdict(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "fuse-transport")
    trials = []

    def measure() -> Figures:
        trials.append(threading.get_ident())
        return [40_000] * 3, [30_000] * 3

    choices: list[str] = []
    threads = [
        threading.Thread(target=lambda: choices.append(transport_choice.choose(measure, path)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert choices == [IO_URING] * 8
    assert len(trials) == 1  # the others waited for the verdict
    written = Path(path).read_text()
    assert written.startswith("io_uring\n# a lookup: /dev/fuse 40.0 us, io_uring 30.0 us")
    assert f"boot={BOOT}" in written


def test_a_trial_that_cannot_run_takes_io_uring_as_before_and_writes_no_verdict(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "fuse-transport")

    def cannot() -> Figures:
        raise PermissionError(1, "not permitted")

    assert transport_choice.choose(lambda: None, path) == IO_URING
    assert transport_choice.choose(cannot, path) == IO_URING
    assert not os.path.exists(path)


def test_chosen_puts_the_file_back(tmp_path: Path) -> None:
    path = str(tmp_path / "fuse-transport")
    with transport_choice.chosen(IO_URING, path):
        assert transport_choice.read_choice(path) == IO_URING
    assert not os.path.exists(path)
    Path(path).write_text("dev\n")
    with transport_choice.chosen(IO_URING, path):
        assert transport_choice.read_choice(path) == IO_URING
    assert Path(path).read_text() == "dev\n"


def trial_mounts() -> list[str]:
    mounts = Path("/proc/mounts").read_text().splitlines()
    return [line for line in mounts if line.split()[0] == "unionfs-trial"]


@pytest.mark.root
def test_the_trial_times_both_transports_and_leaves_nothing_behind() -> None:
    if not mounting.io_uring_supported():
        pytest.skip("this kernel has no FUSE over io_uring")
    before = set(os.listdir(transport_choice.RUN_DIR))
    with mounting.fuse_io_uring(True):
        figures = transport_trial.measure(rounds=2, lookups=50)
    assert figures is not None
    dev, uring = figures
    assert len(dev) == len(uring) == 2
    assert all(1_000 < ns < 50_000_000 for ns in dev + uring)  # a round trip, not a no-op
    assert trial_mounts() == []
    assert set(os.listdir(transport_choice.RUN_DIR)) == before
