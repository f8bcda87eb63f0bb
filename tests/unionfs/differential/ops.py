"""Operations as plain data, and a seeded generator that aims them at the current merged view.

An `Op` is a name and its arguments (paths relative to the mount root, "" being the root),
so a sequence prints as readable Python and replays without the generator: that is what
makes failures reducible to a few lines.
"""

from __future__ import annotations

import ast
import random
import stat
from dataclasses import dataclass

from tests.unionfs.differential.layers import (
    NAMES,
    OWNERS,
    XATTR_NAMES,
    explicit_time_ns,
    symlink_target,
)

Arg = str | int | bytes
# rel path -> kind: "d" dir, "f" regular file, "l" symlink, "p" fifo, "c" char device, "?"
View = dict[str, str]

# user.* as layers carry them, and a plain trusted.* name: copied up like any other, while
# the overlay's own trusted.overlay.* names are never exposed.
OP_XATTR_NAMES = (*XATTR_NAMES, "trusted.t")
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
HELD_SLOTS = 3  # descriptors kept open across ops (executor.hold)


@dataclass(frozen=True)
class Op:
    """One filesystem operation: an executor function name and its arguments."""

    name: str
    args: tuple[Arg, ...]

    def __str__(self) -> str:
        return f"{self.name}({', '.join(repr(a) for a in self.args)})"

    @classmethod
    def parse(cls, text: str) -> Op:
        """The inverse of str(): "rename('a', 'b')" -> Op("rename", ("a", "b"))."""
        name, _, rest = text.strip().partition("(")
        args = ast.literal_eval(f"({rest[:-1]},)") if rest[:-1].strip() else ()
        return cls(name, tuple(args))


def kind_of(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "d"),
        (stat.S_ISREG, "f"),
        (stat.S_ISLNK, "l"),
        (stat.S_ISFIFO, "p"),
        (stat.S_ISCHR, "c"),
    ):
        if test(mode):
            return kind
    return "?"


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


# Relative weights: reads and metadata keep views honest, mutations drive copy-up.
WEIGHTS: dict[str, int] = {
    "create": 6,
    "write": 8,
    "append": 4,
    "overwrite": 3,
    "truncate": 4,
    "read": 5,
    "open_rw": 2,
    "hold": 3,
    "read_held": 5,
    "write_held": 2,
    "xattrs_held": 2,
    "reopen_held": 2,
    "fsync_held": 1,
    "release": 1,
    "unlink": 6,
    "mkdir": 5,
    "rmdir": 5,
    "rename": 12,
    "renameat2": 4,
    "link": 4,
    "symlink": 3,
    "readlink": 2,
    "chmod": 4,
    "chown": 3,
    "utime": 4,
    "setxattr": 5,
    "getxattr": 3,
    "listxattr": 2,
    "removexattr": 3,
    "mkfifo": 2,
    "listdir": 4,
    "stat": 5,
    "remount": 1,  # run by the runner: unmount both sides and mount them again
}


class OpGenerator:
    """Draws the next operation from a seeded stream, given the current merged view."""

    def __init__(
        self, seed: int, weights: dict[str, int] | None = None, stream: str = "ops"
    ) -> None:
        self.rng = random.Random(f"{stream}:{seed}")
        self.weights = weights or WEIGHTS

    def next(self, view: View) -> Op:
        name = self.rng.choices(list(self.weights), list(self.weights.values()))[0]
        build = getattr(self, f"_{name}")
        args: tuple[Arg, ...] = build(view)
        return Op(name, args)

    # -- path choices: mostly existing entries, sometimes misses ------------------------

    def existing(self, view: View, kinds: str = "dflpc") -> str:
        """An existing path of one of kinds, else any path; rarely a missing one."""
        if self.rng.random() < 0.08:
            return self.missing(view)
        candidates = sorted(p for p, k in view.items() if k in kinds and p)
        if not candidates or self.rng.random() < 0.1:
            candidates = sorted(p for p in view if p) or [""]
        return self.rng.choice(candidates)

    def fresh(self, view: View) -> str:
        """A name in an existing directory; often new, sometimes taken."""
        parent = self.rng.choice(sorted(p for p, k in view.items() if k == "d"))
        name = self.rng.choice(NAMES) if self.rng.random() < 0.3 else f"n{self.rng.randrange(8)}"
        return join(parent, name)

    def missing(self, view: View) -> str:
        """A path that should fail: under a missing dir, or under a non-directory."""
        non_dirs = sorted(p for p, k in view.items() if k != "d")
        if non_dirs and self.rng.random() < 0.5:
            return join(self.rng.choice(non_dirs), "x")
        return join(join(self.fresh(view), "nodir"), "x")

    def new_or_existing(self, view: View, p_existing: float = 0.25) -> str:
        if self.rng.random() < p_existing:
            return self.existing(view)
        return self.fresh(view)

    def mode(self, is_dir: bool = False) -> int:
        if is_dir:
            return self.rng.choice((0o755, 0o700, 0o777, 0o1777, 0o2775))
        return self.rng.choice((0o644, 0o600, 0o755, 0o400, 0o666, 0o2755))

    def size(self) -> int:
        return self.rng.choice(
            (0, 1, self.rng.randint(1, 200), self.rng.randint(200, 9000), 70_000, 4096)
        )

    def fill(self) -> int:
        return self.rng.randrange(1 << 16)

    # -- one builder per operation (named after the executor function) ------------------

    def _create(self, view: View) -> tuple[Arg, ...]:
        return (self.new_or_existing(view), self.mode())

    def _write(self, view: View) -> tuple[Arg, ...]:
        offset = self.rng.choice((0, self.rng.randint(0, 5000), 70_000))
        return (self.existing(view, "f"), offset, max(1, self.size()), self.fill())

    def _append(self, view: View) -> tuple[Arg, ...]:
        return (self.existing(view, "f"), max(1, self.size()), self.fill())

    def _overwrite(self, view: View) -> tuple[Arg, ...]:
        return (self.new_or_existing(view, 0.7), self.size(), self.fill())

    def _truncate(self, view: View) -> tuple[Arg, ...]:
        return (self.existing(view, "f"), self.size())

    def _read(self, view: View) -> tuple[Arg, ...]:
        return (self.existing(view, "f"), self.rng.choice((0, 10, 4000)), self.size() or 100)

    def _open_rw(self, view: View) -> tuple[Arg, ...]:
        return (self.existing(view, "f"),)

    def _hold(self, view: View) -> tuple[Arg, ...]:
        kinds = "f" if self.rng.random() < 0.8 else "dp"  # directories and FIFOs too
        return (self.slot(), self.existing(view, kinds), self.rng.random() < 0.3)

    def _read_held(self, view: View) -> tuple[Arg, ...]:
        return (self.slot(), self.rng.choice((0, 10, 4000, 70_000)), self.size() or 100)

    def _write_held(self, view: View) -> tuple[Arg, ...]:
        offset = self.rng.choice((0, self.rng.randint(0, 5000), 70_000))
        return (self.slot(), offset, max(1, self.size()), self.fill())

    def _xattrs_held(self, view: View) -> tuple[Arg, ...]:
        return (self.slot(),)

    def _reopen_held(self, view: View) -> tuple[Arg, ...]:
        return (self.slot(), self.rng.choice((0, 10, 4000, 70_000)), self.size() or 100)

    def _fsync_held(self, view: View) -> tuple[Arg, ...]:
        return (self.slot(),)

    def _release(self, view: View) -> tuple[Arg, ...]:
        return (self.slot(),)

    def slot(self) -> int:
        return self.rng.randrange(HELD_SLOTS)

    def _unlink(self, view: View) -> tuple[Arg, ...]:
        return (self.existing(view, "flpc"),)

    def _mkdir(self, view: View) -> tuple[Arg, ...]:
        return (self.new_or_existing(view, 0.15), self.mode(is_dir=True))

    def _rmdir(self, view: View) -> tuple[Arg, ...]:
        parents = {p.rpartition("/")[0] for p in view if p}
        empty = sorted(p for p, k in view.items() if k == "d" and p and p not in parents)
        if empty and self.rng.random() < 0.5:  # empty in the merged view, maybe not below
            return (self.rng.choice(empty),)
        return (self.existing(view, "d"),)

    def rename_target(self, view: View, source: str) -> str:
        roll = self.rng.random()
        if roll < 0.45:
            return self.fresh(view)
        if roll < 0.6:  # over an existing entry of the same kind
            return self.existing(view, view.get(source, "f"))
        if roll < 0.75:
            return self.existing(view)
        if roll < 0.85 and view.get(source) == "d":  # into its own subtree: EINVAL
            return join(source, f"n{self.rng.randrange(3)}")
        if roll < 0.9:
            return source
        return self.missing(view)

    def _rename(self, view: View) -> tuple[Arg, ...]:
        source = self.existing(view)
        return (source, self.rename_target(view, source))

    def _renameat2(self, view: View) -> tuple[Arg, ...]:
        source = self.existing(view)
        flags = self.rng.choice((RENAME_NOREPLACE, RENAME_EXCHANGE))
        return (source, self.rename_target(view, source), flags)

    def _link(self, view: View) -> tuple[Arg, ...]:
        return (self.existing(view, "flp"), self.new_or_existing(view, 0.15))

    def _symlink(self, view: View) -> tuple[Arg, ...]:
        return (symlink_target(self.rng), self.new_or_existing(view, 0.15))

    def _readlink(self, view: View) -> tuple[Arg, ...]:
        return (self.existing(view, "l"),)

    def _chmod(self, view: View) -> tuple[Arg, ...]:
        path = self.existing(view, "fdp")
        return (path, self.mode(is_dir=view.get(path) == "d"))

    def _chown(self, view: View) -> tuple[Arg, ...]:
        uid, gid = self.rng.choice((*OWNERS, (4242, 4243)))
        return (self.existing(view), uid, gid)

    def _utime(self, view: View) -> tuple[Arg, ...]:
        return (self.existing(view), explicit_time_ns(self.rng), explicit_time_ns(self.rng))

    def _setxattr(self, view: View) -> tuple[Arg, ...]:
        flags = self.rng.choice((0, 0, XATTR_CREATE, XATTR_REPLACE))
        value = self.rng.randbytes(self.rng.choice((0, 5, 40)))
        return (self.existing(view, "fd"), self.rng.choice(OP_XATTR_NAMES), value, flags)

    def _getxattr(self, view: View) -> tuple[Arg, ...]:
        return (self.existing(view, "fd"), self.rng.choice(OP_XATTR_NAMES))

    def _listxattr(self, view: View) -> tuple[Arg, ...]:
        return (self.existing(view),)

    def _removexattr(self, view: View) -> tuple[Arg, ...]:
        return (self.existing(view, "fd"), self.rng.choice(OP_XATTR_NAMES))

    def _mkfifo(self, view: View) -> tuple[Arg, ...]:
        return (self.new_or_existing(view, 0.15),)

    def _listdir(self, view: View) -> tuple[Arg, ...]:
        return ("" if self.rng.random() < 0.15 else self.existing(view, "d"),)

    def _remount(self, view: View) -> tuple[Arg, ...]:
        return ()

    def _stat(self, view: View) -> tuple[Arg, ...]:
        return (self.existing(view),)
