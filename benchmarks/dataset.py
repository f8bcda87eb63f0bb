"""The sample data: two lower layers (lower0 on top), built once per run, only the parts
that the chosen workloads need.

Parts (each a top-level directory in the union):
  cow/     three files to copy up (big, mid, small), all in the bottom layer
  read/    one big file for sequential reads, in the bottom layer
  tree/    tree_dirs directories of small files, files alternating between the layers
  del/     files to delete (alternating layers: both need whiteouts)
  ren/src/ a directory of files to rename (merged across both layers)
  create/  an empty directory to create files in
  stdlib/  a copy of Python's standard library, files alternating between the layers
  busybox/ a busybox root filesystem for the container workloads (not in the layers)

Big files are made of 1 MiB chunks, each opening with a 16-byte header naming the file and
chunk, so a reader can check it got the right bytes in the right order without hashing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.config import MiB, Sizes

CHUNK = MiB
HEADER = 16
STDLIB_SKIP = {"site-packages", "__pycache__", "lib-dynload", "dist-packages"}
ALL_PARTS = ("cow", "read", "tree", "held", "del", "ren", "create", "stdlib", "busybox")
HELD_PER_DIR = 1_000


def chunk_header(tag: str, index: int) -> bytes:
    """The 16 bytes that open chunk `index` of the big file tagged `tag`."""
    return f"{tag[:3]}:{index:012d}".encode()


def write_big_file(path: Path, tag: str, size: int) -> None:
    body = bytearray(os.urandom(CHUNK))
    with open(path, "wb") as f:
        for index in range((size + CHUNK - 1) // CHUNK):
            body[:HEADER] = chunk_header(tag, index)
            f.write(body[: min(CHUNK, size - index * CHUNK)])


def tree_content(i: int) -> bytes:
    return f"tree file {i}\n".encode() * (1 + i % 7)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path, subset: tuple[str, ...]) -> list[Path]:
    """The standard library's files (relative, sorted), without installed packages or caches."""
    tops = [root / name for name in subset] if subset else sorted(root.iterdir())
    found: list[Path] = []
    for top in tops:
        if top.name in STDLIB_SKIP or top.name.startswith("config-"):
            continue
        if top.is_file() and not top.is_symlink():
            found.append(top.relative_to(root))
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIP)
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink():
                    found.append(p.relative_to(root))
    return sorted(found)


@dataclass
class Dataset:
    """Where the layers are and what a correct union of them contains."""

    root: Path
    sizes: Sizes
    parts: frozenset[str]
    lowers: tuple[Path, Path] = field(init=False)
    native_cow: Path = field(init=False)
    busybox: Path = field(init=False)
    stdlib_count: int = 0
    stdlib_py: int = 0

    def __post_init__(self) -> None:
        self.lowers = (self.root / "lower0", self.root / "lower1")
        self.native_cow = self.root / "native-cow"
        self.busybox = self.root / "busybox"

    @property
    def cow_files(self) -> dict[str, int]:
        s = self.sizes
        return {"big": s.big_file, "mid": s.mid_file, "small": s.small_file}

    def tree_names(self) -> Iterable[tuple[str, int]]:
        """(relative path inside tree/, index) for every tree file."""
        per_dir = max(1, self.sizes.tree_files // self.sizes.tree_dirs)
        for i in range(self.sizes.tree_files):
            yield f"d{i // per_dir:04d}/f{i:06d}", i

    def held_names(self) -> list[str]:
        """Relative paths inside held/: empty files, HELD_PER_DIR a directory."""
        return [f"h{i // HELD_PER_DIR:04d}/{i:07d}" for i in range(self.sizes.held_files)]

    def tree_total_size(self) -> int:
        return sum(len(tree_content(i)) for _, i in self.tree_names())

    def build(self, note: Callable[[str], None]) -> None:
        for lower in self.lowers:
            lower.mkdir(parents=True, exist_ok=True)
        for part in ALL_PARTS:
            if part in self.parts:
                note(f"building sample data: {part}")
                getattr(self, f"_build_{part}")()

    def _layer(self, i: int) -> Path:
        return self.lowers[i % 2]

    def _build_cow(self) -> None:
        d = self.lowers[1] / "cow"
        d.mkdir()
        self.native_cow.mkdir()
        for tag, size in self.cow_files.items():
            write_big_file(d / tag, tag, size)
            shutil.copyfile(d / tag, self.native_cow / tag)

    def _build_read(self) -> None:
        d = self.lowers[1] / "read"
        d.mkdir()
        write_big_file(d / "big", "read", self.sizes.big_file)

    def _build_tree(self) -> None:
        for rel, i in self.tree_names():
            p = self._layer(i) / "tree" / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(tree_content(i))

    def _build_held(self) -> None:
        top = self.lowers[1] / "held"
        for rel in self.held_names():
            p = top / rel
            if not p.parent.exists():
                p.parent.mkdir(parents=True)
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))

    def _build_del(self) -> None:
        for lower in self.lowers:
            (lower / "del").mkdir()
        for i in range(self.sizes.delete_files):
            (self._layer(i) / "del" / f"f{i:05d}").write_bytes(b"delete me\n")

    def _build_ren(self) -> None:
        for lower in self.lowers:
            (lower / "ren" / "src").mkdir(parents=True)
        for i in range(self.sizes.rename_files):
            (self._layer(i) / "ren" / "src" / f"f{i:05d}").write_bytes(f"{i}\n".encode())

    def _build_create(self) -> None:
        (self.lowers[1] / "create").mkdir()

    def _build_stdlib(self) -> None:
        src = stdlib_root()
        files = stdlib_files(src, self.sizes.stdlib_subset)
        for i, rel in enumerate(files):
            dest = self._layer(i) / "stdlib" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dest)
        self.stdlib_count = len(files)
        self.stdlib_py = sum(1 for f in files if f.suffix == ".py")

    def _build_busybox(self) -> None:
        from containers.sample import build_busybox_rootfs

        build_busybox_rootfs(self.busybox)

    def link_native(self, dest: Path, parts: Iterable[str]) -> None:
        """A plain merged tree of `parts` at dest: hard links to the layers' files (real
        copies for cow/, the one part whose file contents a workload changes)."""
        dest.mkdir(parents=True, exist_ok=True)
        for part in parts:
            if part == "cow":
                (dest / "cow").mkdir()
                for tag in self.cow_files:
                    os.link(self.native_cow / tag, dest / "cow" / tag)
                continue
            for lower in reversed(self.lowers):
                if (lower / part).exists():
                    subprocess.run(
                        ["cp", "-al", f"{lower / part}/.", str(dest / part)],
                        check=True,
                        capture_output=True,
                    )
