"""The collector is paused only for a start, and every long-lived process resumes it."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator

import pytest

from containers import collector
from unionfs.mount import tune_collector


@pytest.fixture
def collector_state() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.enable()


def test_resume_collects_again_and_freezes_what_start_up_made(collector_state: None) -> None:
    collector.pause()
    assert not gc.isenabled()
    made_at_start = [object() for _ in range(10)]  # noqa: F841 - tracked objects to freeze
    collector.resume()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0


def test_resume_leaves_a_running_collector_alone(collector_state: None) -> None:
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    collector.resume()
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen


def test_the_mount_daemon_collects_once_it_serves(collector_state: None) -> None:
    gc.disable()  # as the `unionfs` program and lamina's forked mount program start
    tune_collector()
    assert gc.isenabled()
    assert gc.get_threshold()[0] == 50_000


@pytest.mark.parametrize(
    ("program", "argv", "paused"),
    [
        ("containers.cli", ["run", "--help"], True),
        ("containers.cli", ["images", "--help"], False),
        ("unionfs.cli", ["--help"], True),
        ("unionfs.cli", ["fsck", "--help"], False),
    ],
)
def test_programs_pause_the_collector_only_to_start(
    program: str, argv: list[str], paused: bool
) -> None:
    # --help exits from inside main(), after the point where a start pauses the collector.
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('enabled', gc.isenabled()))\n"
        f"from {program} import main\n"
        "sys.exit(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip().splitlines()[-1] == f"enabled {not paused}"


def test_main_called_with_argv_leaves_the_collector_running() -> None:
    from containers.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert gc.isenabled()
