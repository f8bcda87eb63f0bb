"""How big and how many: the full run and the `--quick` smoke run."""

from __future__ import annotations

from dataclasses import asdict, dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class Sizes:
    """Every size and count the workloads use; one place to shrink for --quick."""

    big_file: int  # copy-up "1 GiB" file and the sequential-read file
    mid_file: int  # copy-up "64 MiB" file
    small_file: int  # copy-up "4 KiB" file
    write_size: int  # bytes written by the copy-up workload
    read_block: int  # sequential read size per read()
    tree_files: int  # stat / walk tree
    tree_dirs: int
    held_files: int  # names stat'ed once and kept by the kernel: the daemon's memory a name
    create_files: int
    delete_files: int
    rename_files: int
    stdlib_subset: tuple[str, ...]  # top-level stdlib entries to copy; () = all
    rounds: int  # interleaved rounds of the filesystem workloads
    starts_per_round: int  # container starts per system per round
    fleet: tuple[int, ...]  # N for "N containers from one image"
    memory_limit: str
    pids_limit: int

    def as_json(self) -> dict[str, object]:
        return asdict(self)


FULL = Sizes(
    big_file=1 * GiB,
    mid_file=64 * MiB,
    small_file=4 * KiB,
    write_size=4 * KiB,
    read_block=1 * MiB,
    tree_files=10_000,
    tree_dirs=100,
    held_files=100_000,
    create_files=2_000,
    delete_files=1_000,
    rename_files=1_000,
    stdlib_subset=(),
    rounds=3,
    starts_per_round=5,
    fleet=(1, 10, 50),
    memory_limit="64m",
    pids_limit=64,
)

QUICK = Sizes(
    big_file=64 * MiB,
    mid_file=8 * MiB,
    small_file=4 * KiB,
    write_size=4 * KiB,
    read_block=1 * MiB,
    tree_files=500,
    tree_dirs=10,
    held_files=2_000,
    create_files=200,
    delete_files=100,
    rename_files=100,
    stdlib_subset=("json", "email", "collections", "string.py", "textwrap.py"),
    rounds=2,
    starts_per_round=2,
    fleet=(1, 5),
    memory_limit="64m",
    pids_limit=64,
)


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"
