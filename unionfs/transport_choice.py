"""Whether our mounts take FUSE over io_uring where the kernel offers it: measured once per
boot, on the host itself (no FUSE here; transport_trial.py measures).

Which transport serves metadata faster depends on the host, and by a lot. On the Intel
Xeon VM of our README tables io_uring made a first `stat` of 10,000 files 432 -> 272 ms;
on the AMD EPYC VM, where the caller and our queue thread then share a CPU and its caches,
it made it 727 -> 1004 ms (medians of 6 alternating runs), and every metadata workload
of the benchmark slower. The transport is fixed at INIT, so the choice must come before:
the first mount after boot that is offered io_uring times lookups through both (~0.1 s,
under a lock: other mounts wait for its verdict) and writes the verdict to CHOICE_FILE,
which every later mount of that boot reads. io_uring is taken only where it is clearly
faster: /dev/fuse is the path every kernel has, and reads a cold file better.

`-o io_uring` and `-o noio_uring` choose for one mount without asking. An administrator
may write the file (its first word, `io_uring` or `dev`, decides), or remove it to have
the next mount measure again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator

from unionfs.logger import get_logger

log = get_logger(__name__)

RUN_DIR = "/run/unionfs"
CHOICE_FILE = f"{RUN_DIR}/fuse-transport"
ENABLE_URING = "/sys/module/fuse/parameters/enable_uring"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
MARGIN = 1.10  # io_uring must make a lookup this much faster to be taken

IO_URING, DEV = "io_uring", "dev"

# A trial's result: nanoseconds a lookup, one figure a round, through /dev/fuse and
# through io_uring.
Figures = tuple[list[int], list[int]]


def offered() -> bool:
    """Whether the kernel offers FUSE over io_uring to new mounts (root sets it)."""
    try:
        with open(ENABLE_URING) as setting:
            return setting.read(1) == "Y"
    except OSError:
        return False  # a kernel without it


def decide(figures: Figures) -> str:
    dev, uring = figures
    return IO_URING if _median(uring) * MARGIN < _median(dev) else DEV


def describe(figures: Figures) -> str:
    dev, uring = figures
    return (
        f"a lookup: /dev/fuse {_median(dev) / 1000:.1f} us, io_uring "
        f"{_median(uring) / 1000:.1f} us (medians of {len(dev)} rounds)"
    )


def parse(text: str, boot: str) -> str | None:
    """The choice a CHOICE_FILE says, or None: it says nothing we know, or it was measured
    in another boot (/run is not a tmpfs everywhere). One written by hand, with no boot
    id, holds across boots."""
    words = text.split()
    if not words or words[0] not in (IO_URING, DEV):
        return None
    measured_in = next((word[5:] for word in words if word.startswith("boot=")), boot)
    return words[0] if measured_in == boot else None


def boot_id() -> str:
    try:
        with open(BOOT_ID) as file:
            return file.read().strip()
    except OSError:
        return "unknown"


def read_choice(path: str = CHOICE_FILE) -> str | None:
    try:
        with open(path) as file:
            return parse(file.read(4096), boot_id())
    except OSError:
        return None


def write_choice(choice: str, why: str, path: str = CHOICE_FILE) -> None:
    """Write the verdict whole (rename), with the figures it rests on."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    temporary = f"{path}.{os.getpid()}"
    with open(temporary, "w") as file:
        file.write(f"{choice}\n# {why}; kernel {os.uname().release} boot={boot_id()}\n")
    os.replace(temporary, path)


def choose(measure: Callable[[], Figures | None], path: str = CHOICE_FILE) -> str:
    """This boot's choice: the file's, else measured now (once: whoever comes meanwhile
    waits for the verdict). A trial that cannot run (not root, no io_uring rings) leaves
    io_uring taken, as before we measured, and no verdict."""
    choice = read_choice(path)
    if choice is not None:
        return choice
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        log.info("taking FUSE over io_uring unmeasured: %s", exc)
        return IO_URING
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        choice = read_choice(path)  # measured while we waited
        if choice is not None:
            return choice
        try:
            figures = measure()
        except OSError as exc:
            log.warning("cannot compare FUSE transports (%s): taking io_uring", exc)
            return IO_URING
        if figures is None:
            return IO_URING
        choice = decide(figures)
        why = describe(figures)
        log.info("FUSE transport for this boot: %s (%s)", choice, why)
        write_choice(choice, why, path)
        return choice
    finally:
        os.close(lock)


@contextlib.contextmanager
def chosen(choice: str, path: str = CHOICE_FILE) -> Iterator[None]:
    """Have mounts made meanwhile take this transport without measuring; put the file
    back as it was (for the test suite's runs on each transport)."""
    try:
        with open(path) as file:
            before: str | None = file.read()
    except FileNotFoundError:
        before = None
    write_choice(choice, "chosen for a test run", path)
    try:
        yield
    finally:
        if before is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            with open(path, "w") as file:
                file.write(before)


def _median(values: list[int]) -> int:
    return sorted(values)[len(values) // 2]
