"""The container lifecycle subcommands: ps, logs, exec, top, cp, stop, kill, rm, start,
restart, wait, inspect, pause, unpause, stats, and run's options (its command is in
commands_run, which is all `lamina run` imports). Each parses its options, calls
runtime/state, and returns an exit status.

Imports of the heavier modules happen inside the commands, so `lamina run` starts fast.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from containers.cli import UserError, format_table

TYPE_CHECKING = False  # typing costs milliseconds at every start; only mypy needs it
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from containers.state import ContainerRecord

    # argparse's subparsers object has no public type.
    Subparsers = Any


def register(sub: Subparsers, only: str | None = None) -> None:
    """Add the subcommands' parsers; with only, just that one (what `lamina run` parses)."""
    for name, add in _PARSERS.items():
        if only is None or only == name:
            add(sub)


def _register_ps(sub: Subparsers) -> None:
    ps = sub.add_parser("ps", help="list containers")
    ps.add_argument("-a", "--all", action="store_true", help="also stopped containers")
    ps.add_argument("-q", "--quiet", action="store_true", help="only ids")
    ps.set_defaults(func=cmd_ps)


def _register_logs(sub: Subparsers) -> None:
    logs = sub.add_parser("logs", help="output of a detached container")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until it exits")
    logs.add_argument("-n", "--tail", default="all", help="only the last N lines (default all)")
    logs.add_argument("container")
    logs.set_defaults(func=cmd_logs)


def _register_exec(sub: Subparsers) -> None:
    import argparse

    exe = sub.add_parser("exec", help="run a command in a running container")
    exe.add_argument("-i", "--interactive", action="store_true")
    exe.add_argument("-t", "--tty", action="store_true")
    exe.add_argument("-e", "--env", action="append", default=[])
    exe.add_argument("-w", "--workdir")
    exe.add_argument("-u", "--user")
    exe.add_argument("--privileged", action="store_true")
    exe.add_argument("container")
    exe.add_argument("command", nargs=argparse.REMAINDER)
    exe.set_defaults(func=cmd_exec)


def _register_top(sub: Subparsers) -> None:
    top = sub.add_parser("top", help="the processes of a running container")
    top.add_argument("container")
    top.set_defaults(func=cmd_top)


def _register_cp(sub: Subparsers) -> None:
    cp = sub.add_parser("cp", help="copy files between a container and the host")
    cp.add_argument("source", help="CONTAINER:PATH or a host path")
    cp.add_argument("destination", help="a host path or CONTAINER:PATH")
    cp.set_defaults(func=cmd_cp)


def _register_stop(sub: Subparsers) -> None:
    stop = sub.add_parser("stop", help="SIGTERM, then SIGKILL after a grace period")
    stop.add_argument("-t", "--time", type=int, default=10, help="seconds (default 10)")
    stop.add_argument("containers", nargs="+")
    stop.set_defaults(func=cmd_stop)


def _register_kill(sub: Subparsers) -> None:
    kill = sub.add_parser("kill", help="send a signal to a container's first process")
    kill.add_argument("-s", "--signal", default="KILL")
    kill.add_argument("containers", nargs="+")
    kill.set_defaults(func=cmd_kill)


def _register_start(sub: Subparsers) -> None:
    start = sub.add_parser("start", help="start stopped containers again (their files kept)")
    start.add_argument("-a", "--attach", action="store_true", help="attach, wait, exit with it")
    start.add_argument("-i", "--interactive", action="store_true", help="with -a: attach stdin")
    start.add_argument("containers", nargs="+")
    start.set_defaults(func=cmd_start)


def _register_restart(sub: Subparsers) -> None:
    restart = sub.add_parser("restart", help="stop (if running), then start containers")
    restart.add_argument("-t", "--time", type=int, default=10, help="seconds (default 10)")
    restart.add_argument("containers", nargs="+")
    restart.set_defaults(func=cmd_restart)


def _register_wait(sub: Subparsers) -> None:
    wait = sub.add_parser("wait", help="wait until containers stop, print their exit codes")
    wait.add_argument("containers", nargs="+")
    wait.set_defaults(func=cmd_wait)


def _register_inspect(sub: Subparsers) -> None:
    inspect = sub.add_parser("inspect", help="containers' state, config and union dirs as JSON")
    inspect.add_argument("-f", "--format", help="a template per container, e.g. '{{.State.Pid}}'")
    inspect.add_argument("containers", nargs="+")
    inspect.set_defaults(func=cmd_inspect)


def _register_rm(sub: Subparsers) -> None:
    rm = sub.add_parser("rm", help="remove containers")
    rm.add_argument("-f", "--force", action="store_true", help="kill it first if running")
    rm.add_argument("containers", nargs="+")
    rm.set_defaults(func=cmd_rm)


def _register_pause(sub: Subparsers) -> None:
    p = sub.add_parser("pause", help="freeze every process of containers")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_pause)


def _register_unpause(sub: Subparsers) -> None:
    p = sub.add_parser("unpause", help="thaw every process of containers")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_unpause)


def _register_stats(sub: Subparsers) -> None:
    stats = sub.add_parser("stats", help="memory, cpu and pids use of running containers")
    stats.add_argument("--no-stream", action="store_true", help="one sample, then exit")
    stats.add_argument("containers", nargs="*")
    stats.set_defaults(func=cmd_stats)


def _register_run(sub: Subparsers) -> None:
    import argparse

    from containers.run_args import APPEND, FLAG, RUN_OPTIONS

    run = sub.add_parser(
        "run",
        add_help=False,
        help="run a command in a new container",
        usage="lamina run [OPTIONS] IMAGE [COMMAND...] | lamina run --layer DIR... -- COMMAND",
    )
    for option in RUN_OPTIONS:
        if option.kind == FLAG:
            run.add_argument(*option.names, action="store_true", help=option.help)
        elif option.kind == APPEND:
            run.add_argument(
                *option.names, action="append", type=option.type, default=[], help=option.help
            )
        else:
            run.add_argument(
                *option.names, type=option.type, default=option.default, help=option.help
            )
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="IMAGE [COMMAND...]")
    from containers.commands_run import cmd_run

    run.set_defaults(func=cmd_run)
    # -h is --hostname, like docker; keep --help.
    run.add_argument("--help", action="help", help="show this help")


# ---- listing ------------------------------------------------------------------------------


def _ago(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''}"
    n = int(seconds)
    return "Less than a second" if n < 1 else f"{n} second{'s' if n > 1 else ''}"


def describe_status(record: ContainerRecord, now: float) -> str:
    from containers import state

    status = state.live_status(record)
    if status == state.RUNNING:
        return f"Up {_ago(now - record.created_at)}"
    if status == state.PAUSED:
        return f"Up {_ago(now - record.created_at)} (Paused)"
    if status == state.EXITED:
        code = (
            "?" if record.exit_code is None or record.status != state.EXITED else record.exit_code
        )
        since = f" {_ago(now - record.finished_at)} ago" if record.finished_at else ""
        oom = " (OOM killed)" if record.oom_killed else ""
        return f"Exited ({code}){oom}{since}"
    return "Created"


def cmd_ps(args: argparse.Namespace) -> int:
    from containers import state

    now = time.time()
    records = state.all_records(args.root)
    if not args.all:
        records = [r for r in records if state.live_status(r) in (state.RUNNING, state.PAUSED)]
    if args.quiet:
        for r in records:
            print(r.id[:12])
        return 0
    rows = [("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")]
    for r in records:
        image = r.image or (str(r.rootfs_dir) if r.rootfs_dir else f"<{len(r.layers)} layers>")
        command = " ".join(r.command)
        command = f'"{command[:20]}…"' if len(command) > 20 else f'"{command}"'
        created = f"{_ago(now - r.created_at)} ago"
        status = describe_status(r, now)
        ports = ", ".join(r.ports) if status.startswith("Up") else ""
        rows.append((r.id[:12], image, command, created, status, ports, r.name))
    print(format_table(rows))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from containers import state

    tail = None
    if args.tail != "all":
        if not args.tail.isdigit():
            raise UserError(f"invalid --tail {args.tail!r}: a number of lines, or all")
        tail = int(args.tail)
    record = state.find_container(args.root, args.container)
    try:
        log = open(record.log_path, "rb")  # noqa: SIM115 - read incrementally below
    except FileNotFoundError:
        raise UserError(f"container {record.name} has no logs: only -d containers log") from None
    with log:
        if tail is not None:
            from containers.log_tail import start_of_last_lines

            log.seek(start_of_last_lines(log, tail))
        while True:
            data = log.read()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            if not args.follow:
                return 0
            if data:
                continue
            try:
                exited = state.live_status(state.load(record.dir)) == state.EXITED
            except FileNotFoundError:
                exited = True
            if exited:
                sys.stdout.buffer.write(log.read())  # what came between our reads
                return 0
            time.sleep(0.1)  # follow mode polls the file, like tail -f


# ---- exec ---------------------------------------------------------------------------------


def cmd_exec(args: argparse.Namespace) -> int:
    from containers import init, runtime, state
    from containers.spec import check_user, env_items, merge_env

    record = state.find_container(args.root, args.container)
    status = state.live_status(record)
    if status == state.PAUSED:
        raise UserError(f"container {record.name} is paused: unpause it first")
    if status != state.RUNNING:
        raise UserError(f"container {record.name} is not running")
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UserError("no command given", hint="lamina exec [OPTIONS] CONTAINER COMMAND...")
    env = merge_env(record.env, [item for e in args.env for item in env_items(e)])
    if args.tty and not any(e.startswith("TERM=") for e in env):
        env = (*env, "TERM=xterm")
    process = init.Process(
        argv=command,
        env=env,
        workdir=args.workdir or record.workdir,
        user=check_user(args.user) if args.user else record.user,
        capabilities=_all_caps() if args.privileged else record.capabilities,
        privileged=args.privileged or record.privileged,
        tty=args.tty,
        seccomp=record.seccomp and not args.privileged,
    )
    return runtime.exec_in(record, process, args.interactive)


def _all_caps() -> list[str]:
    from containers.spec import CAPABILITY_NUMBERS

    return list(CAPABILITY_NUMBERS)


# ---- stop, kill, rm, pause ----------------------------------------------------------------


def _each(args: argparse.Namespace, action: Callable[[ContainerRecord], object]) -> int:
    """Apply action to every named container; report failures one per line, like docker."""
    from containers import state

    status = 0
    for ref in args.containers:
        try:
            action(state.find_container(args.root, ref))
            print(ref)
        except UserError as exc:
            print(f"lamina: error: {exc}", file=sys.stderr)
            status = 1
    return status


def parse_signal(text: str) -> int:
    if text.isdigit():
        return int(text)
    name = text.upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    import signal  # its enum of names; only here, off `run`'s path

    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UserError(f"invalid signal: {text}") from None


def cmd_kill(args: argparse.Namespace) -> int:
    from containers import state

    sig = parse_signal(args.signal)

    def kill(record: ContainerRecord) -> None:
        if record.pid is None or state.live_status(record) not in (state.RUNNING, state.PAUSED):
            raise UserError(f"container {record.name} is not running")
        try:
            os.kill(record.pid, sig)
        except ProcessLookupError:
            raise UserError(f"container {record.name} is not running") from None

    return _each(args, kill)


def cmd_top(args: argparse.Namespace) -> int:
    from containers import runtime, state
    from containers.processes import describe_processes

    record = state.find_container(args.root, args.container)
    if state.live_status(record) not in (state.RUNNING, state.PAUSED):
        raise UserError(f"container {record.name} is not running")
    print(format_table(describe_processes(runtime.open_cgroup(record.id).pids())))
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    from containers import copying, state

    src_name, src_path = copying.parse_reference(args.source)
    dst_name, dst_path = copying.parse_reference(args.destination)
    if (src_name is None) == (dst_name is None):
        raise UserError(
            "cp copies between a container and the host",
            hint="lamina cp CONTAINER:PATH HOST_PATH, or lamina cp HOST_PATH CONTAINER:PATH",
        )
    record = state.find_container(args.root, src_name or dst_name or "")
    host = copying.host_side()
    if src_name is not None:
        copying.in_container(
            args.root, record, lambda c: copying.copy(c, src_path, host, dst_path), writable=False
        )
    else:
        copying.in_container(
            args.root, record, lambda c: copying.copy(host, src_path, c, dst_path), writable=True
        )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from containers import lifecycle

    return _each(args, lambda record: lifecycle.stop(args.root, record, args.time))


def cmd_start(args: argparse.Namespace) -> int:
    if args.attach and len(args.containers) > 1:
        raise UserError("start -a takes one container")
    if args.attach:
        from containers import state

        return _start_again(args.root, state.find_container(args.root, args.containers[0]),
                            attach=True, interactive=args.interactive)  # fmt: skip
    return _each(args, lambda record: _start_again(args.root, record))


def cmd_restart(args: argparse.Namespace) -> int:
    from containers import lifecycle

    def restart(record: ContainerRecord) -> None:
        lifecycle.stop(args.root, record, args.time)
        _start_again(args.root, record)

    return _each(args, restart)


def _start_again(
    root: str, record: ContainerRecord, attach: bool = False, interactive: bool = False
) -> int:
    """Start an exited container anew, as docker's start: detached (0 once it runs) or
    attached (its exit code). One that runs already is left as it is."""
    from containers import runtime
    from containers.spec import ContainerSpec

    spec = runtime.stored_spec(record)
    claimed = runtime.claim_for_start(record)
    if claimed is None:
        if attach:
            raise UserError(f"container {record.name} is running: lamina cannot attach to it")
        return 0
    spec = ContainerSpec(**{**spec.values(), "interactive": interactive, "detach": not attach})
    if attach:
        return runtime.run_foreground(spec, root, again=claimed)
    return runtime.run_detached(spec, root, again=claimed)


def cmd_wait(args: argparse.Namespace) -> int:
    from containers import lifecycle, state

    status = 0
    for ref in args.containers:
        try:
            print(lifecycle.wait_exit(state.find_container(args.root, ref)), flush=True)
        except UserError as exc:
            print(f"lamina: error: {exc}", file=sys.stderr)
            status = 1
    return status


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from containers import state
    from containers.inspection import describe, render

    described = []
    for ref in args.containers:
        record = state.find_container(args.root, ref)
        described.append(describe(record, state.live_status(record), args.root))
    if args.format is not None:
        lines = [render(args.format, d) for d in described]  # every one, or an error
        print("\n".join(lines))
    else:
        print(json.dumps(described, indent=4))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from containers import lifecycle

    return _each(args, lambda record: lifecycle.rm(args.root, record, args.force))


def cmd_pause(args: argparse.Namespace) -> int:
    from containers import lifecycle

    return _each(args, lambda record: lifecycle.pause(record, True))


def cmd_unpause(args: argparse.Namespace) -> int:
    from containers import lifecycle

    return _each(args, lambda record: lifecycle.pause(record, False))


def cmd_stats(args: argparse.Namespace) -> int:
    from containers import lifecycle

    return lifecycle.print_stats(args.root, args.containers, stream=not args.no_stream)


_PARSERS: dict[str, Callable[[Subparsers], None]] = {
    "run": _register_run,
    "ps": _register_ps,
    "logs": _register_logs,
    "exec": _register_exec,
    "top": _register_top,
    "cp": _register_cp,
    "stop": _register_stop,
    "kill": _register_kill,
    "rm": _register_rm,
    "start": _register_start,
    "restart": _register_restart,
    "wait": _register_wait,
    "inspect": _register_inspect,
    "pause": _register_pause,
    "unpause": _register_unpause,
    "stats": _register_stats,
}
