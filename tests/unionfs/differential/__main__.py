"""Manual runs of the differential test, for any pair of implementations (as root).

    python -m tests.unionfs.differential run --pair kernel:fuse-overlayfs --seeds 0-19 --reduce
    python -m tests.unionfs.differential layers --seed 3

`run` prints each seed's first difference (reduced to a short op list with --reduce) and
a tally at the end; `layers` lists the lower layers a seed builds, to read a reproduction.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

from tests.unionfs.differential.layers import build_layers, describe_layers
from tests.unionfs.differential.ops import WEIGHTS, Op
from tests.unionfs.differential.runner import (
    IMPLEMENTATIONS,
    Mismatch,
    Pair,
    Scenario,
    reduce,
    replay,
    run_generated,
)
from tests.unionfs.differential.snapshot import KNOWN_DIFFERENCES


def seed_range(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


def read_ops(path: Path) -> list[Op]:
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    lines = (line.strip() for line in text.splitlines())
    return [
        Op.parse(line.split(": ", 1)[-1] if line.startswith("#") else line)
        for line in lines
        if line
    ]


def save_ops(path: Path, ops: list[Op]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{op}\n" for op in ops))


def replay_file(args: argparse.Namespace, pair: Pair, tmp: Path) -> int:
    ops = read_ops(args.ops_file)
    failures = 0
    for attempt in range(args.times):
        try:
            scenario = Scenario(args.seed, args.warmup, args.stacked)
            replay(scenario, ops, pair, tmp / f"replay{attempt}", frozenset(args.known))
        except Mismatch as mismatch:
            failures += 1
            print(mismatch, flush=True)
        else:
            print(f"attempt {attempt}: same", flush=True)
    print(f"{failures} of {args.times} attempts differ")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.unionfs.differential")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="compare two implementations over seeded op sequences")
    run.add_argument("--pair", default="kernel:unionfs", help=f"A:B from {list(IMPLEMENTATIONS)}")
    run.add_argument("--seeds", type=seed_range, default=range(8), help="N or N-M")
    run.add_argument("--ops", type=int, default=300)
    run.add_argument("--check-every", type=int, default=50)
    run.add_argument("--warmup", type=int, default=0, help="kernel ops run first on both")
    run.add_argument("--stacked", action="store_true", help="the warmed upper becomes a lower")
    run.add_argument("--reduce", action="store_true", help="shrink each mismatch to few ops")
    run.add_argument(
        "--weight", action="append", default=[], help="NAME=N: steer the op mix (0 drops an op)"
    )
    run.add_argument(
        "--known",
        action="append",
        default=[],
        choices=sorted(KNOWN_DIFFERENCES),
        help="mask a known, reported difference to look past it",
    )
    run.add_argument("--save", type=Path, help="write each mismatch's ops to SAVE/seed-N.ops")
    rerun = sub.add_parser("replay", help="run an op list (one op a line, as printed) again")
    rerun.add_argument("--pair", default="kernel:unionfs")
    rerun.add_argument("--seed", type=int, required=True)
    rerun.add_argument("--warmup", type=int, default=0)
    rerun.add_argument("--stacked", action="store_true")
    rerun.add_argument("--known", action="append", default=[], choices=sorted(KNOWN_DIFFERENCES))
    rerun.add_argument("--times", type=int, default=1, help="repeat, to catch flaky ones")
    rerun.add_argument("ops_file", type=Path, help="'-' for stdin; '#12: ' prefixes are fine")
    layers = sub.add_parser("layers", help="list the lower layers a seed builds")
    layers.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="lamina-differential-") as tmp:
        if args.command == "layers":
            print(describe_layers(build_layers(args.seed, Path(tmp))))
            return 0
        a, _, b = args.pair.partition(":")
        pair = Pair(a, b)
        if args.command == "replay":
            return replay_file(args, pair, Path(tmp))
        weights = WEIGHTS | {k: int(v) for k, _, v in (w.partition("=") for w in args.weight)}
        masks = frozenset(args.known)
        tally: collections.Counter[tuple[str, str]] = collections.Counter()
        for seed in args.seeds:
            started = time.monotonic()
            base = Path(tmp) / f"seed{seed}"
            try:
                scenario = Scenario(seed, args.warmup, args.stacked)
                run_generated(scenario, args.ops, pair, base, args.check_every, weights, masks)
            except Mismatch as mismatch:
                tally[mismatch.signature] += 1
                print(f"seed {seed}: MISMATCH {mismatch.signature}", flush=True)
                if args.save:
                    save_ops(args.save / f"seed-{seed}.ops", mismatch.ops)
                if args.reduce:
                    mismatch = reduce(mismatch, pair, Path(tmp) / f"reduce{seed}", print, masks)
                if args.save and args.reduce:
                    save_ops(args.save / f"seed-{seed}.reduced.ops", mismatch.ops)
                print(mismatch, flush=True)
            else:
                print(f"seed {seed}: same ({time.monotonic() - started:.1f} s)", flush=True)
        print(f"{sum(tally.values())} of {len(args.seeds)} seeds differ: {dict(tally)}")
        return 1 if tally else 0


if __name__ == "__main__":
    sys.exit(main())
