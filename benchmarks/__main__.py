"""Run lamina's benchmarks: `python -m benchmarks [--quick] [--only W,...] [--systems S,...]`.

Builds the sample layers in a scratch directory, runs every chosen workload on every chosen
system in interleaved rounds, writes benchmarks/results/<date>.json, .md and .png, and
removes every mount, container and file it made, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from benchmarks import machine, report
from benchmarks.cleanup import Janitor, interrupt_on_sigterm, mounts_under, remove_tree, unmount
from benchmarks.config import FULL, QUICK, Sizes
from benchmarks.dataset import Dataset
from benchmarks.progress import Progress
from benchmarks.runner import Named, Suite, check_agreement, run_rounds
from benchmarks.runtimes import RUNTIMES, ContainerBench
from benchmarks.systems import FS_SYSTEMS
from benchmarks.workloads import Context, FsWorkload, Measurement, fs_workloads

RESULTS = Path(__file__).resolve().parent / "results"
GROUPS = {"fs": "filesystem", "filesystem": "filesystem", "containers": "containers"}


def container_workloads(s: Sizes) -> list[Named]:
    mem, pids = s.memory_limit, s.pids_limit
    return [
        Named("start-true", "start-to-exit: true"),
        Named("start-echo", "start-to-exit: sh -c 'echo hi'"),
        Named("start-true-limits", f"true, memory {mem} + pids {pids}"),
        Named("start-echo-limits", f"echo hi, memory {mem} + pids {pids}"),
        *(
            Named(f"fleet-{n}", f"{n} container{'s' * (n > 1)} from one image at once")
            for n in s.fleet
        ),
    ]


def pick(names: Sequence[str], wanted: str | None, kind: str, groups: dict[str, str]) -> set[str]:
    """Names matching a comma list of exact names, group names (fs, containers) or
    prefixes ("copyup" picks every copyup-*)."""
    if not wanted:
        return set(names)
    chosen: set[str] = set()
    for word in (w.strip() for w in wanted.split(",") if w.strip()):
        if word in names:
            hits = {word}
        elif word in GROUPS:
            hits = {n for n in names if groups.get(n) == GROUPS[word]}
        else:
            hits = {n for n in names if n.startswith(word)}
        if not hits:
            raise SystemExit(f"error: no {kind} matches {word!r}; known: {', '.join(names)}")
        chosen |= hits
    return chosen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few rounds (CI smoke)")
    p.add_argument("--only", metavar="W,...", help="workloads, prefixes or fs/containers")
    p.add_argument("--systems", metavar="S,...", help="systems and runtimes to run")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 2)")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"), help="scratch parent")
    p.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--list", action="store_true", help="list workloads and systems, then exit")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = replace(sizes, rounds=args.rounds)
    fs_all = {w.name: w for w in fs_workloads(sizes)}
    ct_all = {w.name: w for w in container_workloads(sizes)}
    groups = {**dict.fromkeys(fs_all, "filesystem"), **dict.fromkeys(ct_all, "containers")}
    sys_groups = {
        **{s.name: "filesystem" for s in FS_SYSTEMS},
        **{r.name: "containers" for r in RUNTIMES},
    }
    if args.list:
        for w in fs_all.values():
            print(f"workload {w.name:<22} {w.description}")
        for n in ct_all.values():
            print(f"workload {n.name:<22} {n.label}")
        for fs in FS_SYSTEMS:
            print(f"system   {fs.name:<22} {fs.label}")
        for rt in RUNTIMES:
            print(f"system   {rt.name:<22} {rt.label}")
        return 0
    workloads = pick([*fs_all, *ct_all], args.only, "workload", groups)
    systems = pick(list(sys_groups), args.systems, "system", sys_groups)
    if os.geteuid() != 0:
        print("error: the benchmarks mount filesystems and start containers: run as root")
        return 2

    if not args.workdir.is_dir():
        print(f"error: --workdir {args.workdir} is not a directory")
        return 2
    work = args.workdir / f"lamina-bench-{os.getpid()}"
    work.mkdir()
    args.out.mkdir(parents=True, exist_ok=True)
    janitor = Janitor()
    progress = Progress(0)
    started = dt.datetime.now(dt.UTC)
    try:
        with interrupt_on_sigterm(), machine.fuse_io_uring() as io_uring:
            meta: dict[str, object] = {
                "fuse_io_uring": io_uring,
                "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
                "mode": "quick" if args.quick else "full",
                "rounds": sizes.rounds,
                "argv": sys.argv[1:] if argv is None else list(argv),
                "sizes": sizes.as_json(),
                "machine": machine.describe(work),
            }
            fs_chosen = [w for w in fs_all.values() if w.name in workloads]
            ct_chosen = [w for w in ct_all.values() if w.name in workloads]
            parts = {p for w in fs_chosen for p in w.parts}
            if ct_chosen:
                parts.add("busybox")
            data = Dataset(work / "layers", sizes, frozenset(parts))
            data.build(progress.note)
            suites = []
            if fs_chosen:
                suites.append(filesystem_suite(data, fs_chosen, systems, work))
            if ct_chosen:
                suites.append(container_suite(data, ct_chosen, systems, work, sizes, janitor))
            progress.total = sum(s.steps(sizes.rounds) for s in suites)
            meta["load_per_round"] = run_rounds(suites, sizes.rounds, progress)
            progress.finish()
            for suite in suites:
                check_agreement(suite)
            finished = dt.datetime.now(dt.UTC)
            meta["finished"] = finished.strftime("%Y-%m-%d %H:%M:%S UTC")
            meta["load_at_end"] = machine.load_average()
            stem = started.strftime("%Y-%m-%d") + ("-quick" if args.quick else "")
            out = args.out / stem
            report.write_json(out.with_suffix(".json"), meta, suites)
            report.write_markdown(out.with_suffix(".md"), meta, suites)
            title = f"lamina benchmarks {meta['started']} ({meta['mode']})"
            report.write_chart(out.with_suffix(".png"), suites, title)
            print(out.with_suffix(".md").read_text())
            progress.note(f"results: {out}.json, .md, .png")
            return 0
    except KeyboardInterrupt:
        progress.note("interrupted: cleaning up")
        return 130
    except (OSError, subprocess.SubprocessError) as exc:
        # Set-up problems (sample data, disk space): one line, not a traceback.
        progress.note(f"error: {exc}")
        return 1
    finally:
        for problem in janitor.sweep():
            progress.note(f"clean-up: {problem}")
        for mnt in mounts_under(work):
            try:
                unmount(mnt)
            except RuntimeError as exc:
                progress.note(f"clean-up: {exc}")
        if args.keep:
            progress.note(f"kept {work}")
        else:
            remove_tree(work)


def filesystem_suite(
    data: Dataset, chosen: list[FsWorkload], systems: set[str], work: Path
) -> Suite:
    by_name = {w.name: w for w in chosen}
    fs_systems = {s.name: s for s in FS_SYSTEMS if s.name in systems}
    counter = itertools.count()

    def sample(workload: str, system: str) -> Measurement:
        w, s = by_name[workload], fs_systems[system]
        with s.mount(data, work / "samples" / str(next(counter)), w.parts) as mounted:
            return w.run(Context(mounted, data))

    return Suite(
        name="filesystem",
        workloads=[Named(w.name, w.description) for w in chosen],
        systems=[Named(s.name, s.label) for s in fs_systems.values()],
        references=("native", "overlayfs"),
        sample=sample,
        unavailable={n: why for n, s in fs_systems.items() if (why := s.missing())},
    )


def container_suite(
    data: Dataset,
    chosen: list[Named],
    systems: set[str],
    work: Path,
    sizes: Sizes,
    janitor: Janitor,
) -> Suite:
    runtimes = {r.name: r for r in RUNTIMES if r.name in systems}
    bench = ContainerBench(data.busybox, work / "containers", sizes, janitor)
    counter = itertools.count()

    def sample(workload: str, system: str) -> Measurement:
        runtime = runtimes[system]
        if workload.startswith("fleet-"):
            n = int(workload.removeprefix("fleet-"))
            return bench.fleet(runtime, n, work / "fleet" / str(next(counter)))
        command = workload.removeprefix("start-").removesuffix("-limits")
        return bench.start(runtime, command, workload.endswith("-limits"))

    return Suite(
        name="containers",
        workloads=chosen,
        systems=[Named(r.name, r.label) for r in runtimes.values()],
        references=("unshare", "runc"),
        sample=sample,
        reps=lambda w: 1 if w.startswith("fleet-") else sizes.starts_per_round,
        unavailable={n: why for n, r in runtimes.items() if (why := r.missing())},
    )


if __name__ == "__main__":
    sys.exit(main())
