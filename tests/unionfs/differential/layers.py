"""Seeded lower layers: the same seed always builds the same bytes, modes, owners and times.

Each lower holds a small random tree drawn from one shared pool of names, so names collide
across layers: a file over a dir, a dir merging with a dir, a whiteout or an opaque dir in an
upper lower hiding what lies below. Regular files come in sizes from empty to over 64 KiB;
there are hard links within a layer, symlinks (relative, absolute, dangling), fifos and
user.* xattrs. Every timestamp is set explicitly, far in the past, so the differential
comparison can tell a preserved time (exact) from one the filesystem set (recent).
"""

from __future__ import annotations

import os
import random
import stat
from dataclasses import dataclass, field
from pathlib import Path

from tests.mounting import Layers, make_layers

NAMES = ("a", "b", "c", "d", "e", "f")
XATTR_NAMES = ("user.x", "user.y", "user.z")
OWNERS = ((0, 0), (1000, 1000), (65534, 65534), (1000, 0))
FILE_MODES = (0o644, 0o600, 0o755, 0o444, 0o640, 0o4755)
DIR_MODES = (0o755, 0o700, 0o775, 0o1777, 0o2755)

# Symlinks never lead out of the mount, whatever an operation does to them: absolute
# targets live under a root that does not exist, relative ones only descend (no "..").
ABSENT_ROOT = "/nonexistent-lamina-differential"

# Explicit times (layer contents, utime operations) are all before this instant; times a
# filesystem sets itself (now) are after it. See snapshot.TimeClass.
EXPLICIT_TIME_LIMIT_NS = 1_500_000_000 * 10**9
OVERLAY_OPAQUE = "trusted.overlay.opaque"


def explicit_time_ns(rng: random.Random) -> int:
    """A past instant with a nanosecond part, as a utime operation or a layer would set."""
    return rng.randrange(1_000_000_000, 1_400_000_000) * 10**9 + rng.randrange(10**9)


def data_for(size: int, fill: int) -> bytes:
    """The bytes an operation writes: a function of (size, fill), so ops stay small to print."""
    return random.Random(fill).randbytes(size)


def symlink_target(rng: random.Random) -> str:
    """A symlink target that cannot escape the mount (see ABSENT_ROOT)."""
    roll = rng.random()
    if roll < 0.25:
        return f"{ABSENT_ROOT}/{rng.choice(NAMES)}"
    if roll < 0.6:
        return rng.choice(NAMES)
    return f"{rng.choice(NAMES)}/{rng.choice(NAMES)}"


@dataclass
class _LayerBuilder:
    rng: random.Random
    root: Path
    bottom: bool
    files: list[Path] = field(default_factory=list)

    def fill_dir(self, directory: Path, depth: int) -> None:
        count = self.rng.randint(3, 6) if depth == 0 else self.rng.randint(1, 4)
        for name in sorted(self.rng.sample(NAMES, count)):
            self.add_entry(directory / name, depth)

    def add_entry(self, path: Path, depth: int) -> None:
        kinds = ["file", "dir", "symlink", "hardlink", "fifo", "whiteout", "opaque"]
        weights = [6, (7, 4, 0)[depth], 2, 2 if self.files else 0, 1, 0, 0]
        if not self.bottom:
            weights[5:] = [2, 1 if depth < 2 else 0]
        kind = self.rng.choices(kinds, weights)[0]
        if kind == "file":
            self.make_file(path)
        elif kind in ("dir", "opaque"):
            path.mkdir()
            self.set_owner_and_mode(path, self.rng.choice(DIR_MODES))
            self.maybe_set_xattrs(path)
            if kind == "opaque":
                os.setxattr(path, OVERLAY_OPAQUE, b"y")
            self.fill_dir(path, depth + 1)
        elif kind == "symlink":
            os.symlink(symlink_target(self.rng), path)
            uid, gid = self.rng.choice(OWNERS)
            os.chown(path, uid, gid, follow_symlinks=False)
        elif kind == "hardlink":
            os.link(self.rng.choice(self.files), path)
        elif kind == "fifo":
            os.mkfifo(path)
            self.set_owner_and_mode(path, self.rng.choice((0o644, 0o600)))
        else:
            os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def make_file(self, path: Path) -> None:
        size_class = self.rng.choices(["empty", "small", "medium", "large"], [2, 5, 3, 1])[0]
        size = {
            "empty": 0,
            "small": self.rng.randint(1, 100),
            "medium": self.rng.randint(100, 9000),
            "large": self.rng.randint(65 * 1024, 160 * 1024),
        }[size_class]
        path.write_bytes(self.rng.randbytes(size))
        self.set_owner_and_mode(path, self.rng.choice(FILE_MODES))
        self.maybe_set_xattrs(path)
        self.files.append(path)

    def set_owner_and_mode(self, path: Path, mode: int) -> None:
        uid, gid = self.rng.choice(OWNERS)
        os.chown(path, uid, gid)
        os.chmod(path, mode)

    def maybe_set_xattrs(self, path: Path) -> None:
        if self.rng.random() < 0.35:
            for name in self.rng.sample(XATTR_NAMES, self.rng.randint(1, 2)):
                os.setxattr(path, name, self.rng.randbytes(self.rng.randint(0, 20)))

    def set_times(self) -> None:
        """Give every entry explicit past times, children before their directory."""
        self.set_times_under(self.root)
        self.set_time(self.root)

    def set_times_under(self, directory: Path) -> None:
        for path in sorted(directory.iterdir()):
            if path.is_dir() and not path.is_symlink():
                self.set_times_under(path)
            self.set_time(path)

    def set_time(self, path: Path) -> None:
        times = (explicit_time_ns(self.rng), explicit_time_ns(self.rng))
        os.utime(path, ns=times, follow_symlinks=False)


def build_layers(seed: int, base: Path) -> Layers:
    """Create lower layers (2 to 4) for seed under base, plus an empty upper and workdir."""
    rng = random.Random(f"layers:{seed}")
    layers = make_layers(base, rng.randint(2, 4))
    for index, lower in enumerate(layers.lowers):
        builder = _LayerBuilder(rng, lower, bottom=index == len(layers.lowers) - 1)
        builder.fill_dir(lower, 0)
    _remove_idle_whiteouts(layers.lowers)
    for lower in layers.lowers:
        _LayerBuilder(rng, lower, bottom=False).set_times()
    return layers


def _merged_dir_layers(lowers: tuple[Path, ...], rel: Path) -> list[int]:
    """The lower layers (indexes) whose dirs make up the merged dir rel, as lookup finds them."""
    stack = list(range(len(lowers)))
    for depth in range(1, len(rel.parts) + 1):
        prefix = Path(*rel.parts[:depth])
        found = []
        for index in stack:
            path = lowers[index] / prefix
            if not path.is_symlink() and path.is_dir():
                found.append(index)
                if OVERLAY_OPAQUE in os.listxattr(path):
                    break
            elif path.exists() or path.is_symlink() or _is_whiteout(path):
                break
        stack = found
    return stack


def _remove_idle_whiteouts(lowers: tuple[Path, ...]) -> None:
    """Drop whiteouts in dirs that merge with nothing below (RULE_NO_IDLE_WHITEOUTS).

    They hide nothing, and the kernel lists them in readdir as 0/0 devices that lookup
    then cannot find (its readdir fast path for a dir from one layer): a quirk of the
    reference, not a semantic for ours to copy.
    """
    for index, lower in enumerate(lowers):
        for dirpath, _dirnames, filenames in os.walk(lower):
            rel = Path(dirpath).relative_to(lower)
            stack = _merged_dir_layers(lowers, rel)
            idle = index not in stack or stack[-1] == index
            for name in filenames:
                if idle and _is_whiteout(Path(dirpath) / name):
                    os.unlink(Path(dirpath) / name)


def _is_whiteout(path: Path) -> bool:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def describe_layers(layers: Layers) -> str:
    """A listing of every lower entry (one per line), to read next to a reproduction."""
    lines = []
    for index, lower in enumerate(layers.lowers):
        lines.append(f"lower{index}{' (top)' if index == 0 else ''}:")
        for dirpath, dirnames, filenames in os.walk(lower):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = Path(dirpath) / name
                lines.append(f"  {path.relative_to(lower)}  {_describe(path)}")
    return "\n".join(lines)


def _describe(path: Path) -> str:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return f"-> {os.readlink(path)}"
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return "whiteout"
    if stat.S_ISDIR(st.st_mode):
        opaque = OVERLAY_OPAQUE in os.listxattr(path)
        return f"dir {stat.S_IMODE(st.st_mode):o}{' opaque' if opaque else ''}"
    if stat.S_ISFIFO(st.st_mode):
        return "fifo"
    links = f" nlink={st.st_nlink}" if st.st_nlink > 1 else ""
    return f"file {st.st_size}B {stat.S_IMODE(st.st_mode):o}{links}"
