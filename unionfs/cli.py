"""The `unionfs` command: a drop-in for fuse-overlayfs' command line.

    unionfs [-f] [-d] -o lowerdir=L1:L2,upperdir=U,workdir=W[,opts] MOUNTPOINT
    unionfs SOURCE MOUNTPOINT -o OPTS          (as mount.fuse3 calls a helper)

The only module that prints: problems become `unionfs: error: ...` lines and exit 1.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Sequence

from unionfs import __version__, logger
from unionfs.config import ConfigError, MountConfig, parse_options, validate

TYPE_CHECKING = False  # typing costs milliseconds at every mount; only mypy needs it
if TYPE_CHECKING:
    import argparse

EXIT_USAGE = 2
SIGTERM = 15  # the signal module costs a mount ~3 ms to import (see unionfs/mount.py)


class Arguments:
    """What the command line asks for."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.options: list[str] = []
        self.foreground = False
        self.debug = False


FLAGS = {"-f": "foreground", "-d": "debug", "-s": None}  # -s (single-threaded): ignored


def parse_arguments(argv: list[str]) -> Arguments:
    """The forms mount(8), podman and lamina use, parsed by hand: argparse costs 8 ms of
    every mount's start-up to import and build. Anything else (help, version, a mistake)
    goes to argparse, for its messages."""
    args = Arguments()
    words = iter(argv)
    for word in words:
        if word in FLAGS:
            attribute = FLAGS[word]
            if attribute is not None:
                setattr(args, attribute, True)
        elif word == "-o":
            value = next(words, None)
            if value is None:
                return parse_with_argparse(argv)
            args.options.append(value)
        elif word.startswith("-o"):
            args.options.append(word[2:])
        elif word.startswith("-") and word != "-":
            return parse_with_argparse(argv)
        else:
            args.paths.append(word)
    if not args.paths:
        return parse_with_argparse(argv)
    return args


def parse_with_argparse(argv: list[str]) -> Arguments:
    parsed = build_parser().parse_args(argv)
    args = Arguments()
    args.paths, args.options = parsed.paths, parsed.options
    args.foreground, args.debug = parsed.foreground, parsed.debug
    return args


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="unionfs",
        description="Mount a copy-on-write union of directories (kernel overlayfs format).",
        epilog=(
            "options: lowerdir=L1:L2 (topmost first), upperdir=DIR, workdir=DIR, ro, "
            "userxattr, volatile, fsname=NAME, timeout=SECONDS, noallow_other, "
            "nodefault_permissions, noio_uring, nopassthrough, noacl, uidmapping=, "
            "gidmapping=, squash_to_root, squash_to_uid=, squash_to_gid=, static_nlink; "
            "common mount options (rw, "
            "noatime, ...) are accepted"
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="[SOURCE] MOUNTPOINT")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS")
    parser.add_argument("-f", dest="foreground", action="store_true", help="stay in the foreground")
    parser.add_argument("-d", dest="debug", action="store_true", help="debug output (implies -f)")
    parser.add_argument("-s", dest="single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-V", "--version", action="version", version=f"unionfs {__version__}")
    return parser


def fail(message: str) -> int:
    print(f"unionfs: error: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fsck"]:
        return fsck_main(argv[1:])
    if as_program:
        # No collection while the daemon starts: it would find nothing to free (imports and
        # the parsed options live as long as we do). Serving resumes it (tune_collector).
        gc.disable()
    config = load_config(argv)
    if isinstance(config, int):
        return config
    if config.foreground:
        return run_foreground(config)
    return run_background(config)


def load_config(argv: list[str]) -> MountConfig | int:
    """The mount the command line asks for, checked; or, its problems printed, the exit
    status."""
    args = parse_arguments(argv)
    if len(args.paths) > 2:
        return fail("expected MOUNTPOINT (or SOURCE MOUNTPOINT), got more paths")
    try:
        config = parse_options(args.options, args.paths[-1])
    except ConfigError as exc:
        for problem in exc.problems:
            fail(problem)
        return 1
    config.debug = config.debug or args.debug
    config.foreground = args.foreground or config.debug
    problems = validate(config)
    if problems:
        for problem in problems:
            fail(problem)
        return 1
    return config


def fsck_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="unionfs fsck",
        description="Check (and with --repair, repair) an unmounted upper/work dir pair.",
    )
    parser.add_argument("-o", dest="options", action="append", default=[], required=True,
                        metavar="lowerdir=...,upperdir=...,workdir=...")  # fmt: skip
    parser.add_argument("--repair", action="store_true", help="repair what can be repaired")
    args = parser.parse_args(argv)
    try:
        config = parse_options(args.options, "/")
    except ConfigError as exc:
        for problem in exc.problems:
            fail(problem)
        return 8
    if config.upper is None or config.work is None:
        fail("fsck needs upperdir= and workdir=")
        return 8
    from unionfs.fsck import check
    from unionfs.workdir_lock import WorkdirBusy, hold

    try:
        lock = hold(config.work)
    except WorkdirBusy as exc:
        fail(f"{exc}: unmount it first")
        return 8
    except OSError as exc:
        fail(f"cannot open workdir {config.work}: {exc.strerror}")
        return 8
    try:
        report = check(config.upper, config.work, config.lowers, config.markers, repair=args.repair)
    finally:
        os.close(lock)
    for finding in report.findings:
        print(finding.line(args.repair))
    if not report.findings:
        print("clean")
    return report.status


def setup_logging(config: MountConfig) -> None:
    logger.configure(debug=config.debug)


def run_foreground(config: MountConfig) -> int:
    setup_logging(config)
    from unionfs.mount import serve

    try:
        serve(config, ready=lambda: None)
    except Exception as exc:
        return fail(f"mount failed: {exc}")
    return 0


def run_background(config: MountConfig) -> int:
    """Fork; the parent returns once the child reports the mount is ready (or failed)."""
    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        if message == "ok":
            # Nothing is left to do in this process: skip the interpreter's teardown, a few
            # milliseconds that a container start would wait for.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        return fail(message or "the filesystem daemon died before the mount was ready")
    os.close(read_end)

    def ready() -> None:
        os.write(write_end, b"ok")
        os.close(write_end)

    def failed(message: str) -> None:
        os.write(write_end, message.encode())

    os._exit(serve_as_daemon(config, parent, ready, failed))


def serve_as_daemon(
    config: MountConfig,
    parent: int,
    ready: Callable[[], None],
    failed: Callable[[str], object],
) -> int:
    """The daemon's side, in a session of its own: mount, then ready() and stdio let go,
    serve until unmounted; or failed(why). Until the mount is ready it dies with parent
    (the command that forked it, or lamina): killed before it could say "mounted", it
    leaves no daemon to mount after whoever started it gave up. SIGTERM unmounts what is
    already mounted."""
    try:
        from unionfs.syscalls import set_parent_death_signal

        os.setsid()
        set_parent_death_signal(SIGTERM)
        if os.getppid() != parent:
            return 1  # gone already
        setup_logging(config)
        from unionfs.mount import serve

        def mounted() -> None:
            set_parent_death_signal(0)
            ready()
            detach_stdio()

        serve(config, mounted)
        return 0
    except Exception as exc:
        try:
            failed(f"mount failed: {exc}")
        except OSError:
            logger.get_logger(__name__).exception("daemon failed")
        return 1


def detach_stdio() -> None:
    """Close our end of the caller's stdout/stderr: callers such as podman wait for EOF."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
