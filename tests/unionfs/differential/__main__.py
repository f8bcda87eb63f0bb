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
from tests.unionfs.differential.runner import (
    IMPLEMENTATIONS,
    Mismatch,
    Pair,
    Scenario,
    reduce,
    run_generated,
)


def seed_range(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.unionfs.differential")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="compare two implementations over seeded op sequences")
    run.add_argument("--pair", default="kernel:unionfs", help=f"A:B from {list(IMPLEMENTATIONS)}")
    run.add_argument("--seeds", type=seed_range, default=range(8), help="N or N-M")
    run.add_argument("--ops", type=int, default=300)
    run.add_argument("--check-every", type=int, default=50)
    run.add_argument("--warmup", type=int, default=0, help="kernel ops run first on both")
    run.add_argument("--reduce", action="store_true", help="shrink each mismatch to few ops")
    layers = sub.add_parser("layers", help="list the lower layers a seed builds")
    layers.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="lamina-differential-") as tmp:
        if args.command == "layers":
            print(describe_layers(build_layers(args.seed, Path(tmp))))
            return 0
        a, _, b = args.pair.partition(":")
        pair = Pair(a, b)
        tally: collections.Counter[tuple[str, str]] = collections.Counter()
        for seed in args.seeds:
            started = time.monotonic()
            base = Path(tmp) / f"seed{seed}"
            try:
                run_generated(Scenario(seed, args.warmup), args.ops, pair, base, args.check_every)
            except Mismatch as mismatch:
                tally[mismatch.signature] += 1
                print(f"seed {seed}: MISMATCH {mismatch.signature}", flush=True)
                if args.reduce:
                    mismatch = reduce(mismatch, pair, Path(tmp) / f"reduce{seed}", print)
                print(mismatch, flush=True)
            else:
                print(f"seed {seed}: same ({time.monotonic() - started:.1f} s)", flush=True)
        print(f"{sum(tally.values())} of {len(args.seeds)} seeds differ: {dict(tally)}")
        return 1 if tally else 0


if __name__ == "__main__":
    sys.exit(main())
