"""The `lamina` command: parses arguments, dispatches to one function per subcommand.

Subcommands live in two modules that each register their own parsers:
`commands_runtime` (run, ps, logs, exec, stop, kill, rm, pause, unpause, stats; run's own
command is in `commands_run`) and
`commands_images` (import, images, rmi, image, diff, commit, save). Errors reach the user
as one `error: ...` line and a non-zero exit, never as a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from containers.launch import command_of as _command_of
from containers.launch import default_root
from containers.run_args import read_run

TYPE_CHECKING = False  # typing costs milliseconds at every start; only mypy needs it
if TYPE_CHECKING:
    import argparse
    from typing import NoReturn


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit status 125 (like docker)."""

    def __init__(self, message: str, hint: str | None = None, status: int = 125) -> None:
        super().__init__(message)
        self.hint = hint
        self.status = status


# Commands registered by commands_runtime: for these, the image modules are not imported,
# which keeps `lamina run`'s start-up lean.
RUNTIME_COMMANDS = frozenset(
    ("run", "ps", "logs", "exec", "stop", "kill", "rm", "pause", "unpause", "stats")
)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog="lamina", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        default=default_root(),
        help="state directory (default: $LAMINA_ROOT or /var/lib/lamina)",
    )
    # prog given: else argparse builds a help formatter now, and imports shutil for it.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, prog="lamina")
    command = _command_of(argv) if argv is not None else None
    if command in RUNTIME_COMMANDS:
        # Only that command's parser: building all of them costs every `lamina run` ~3 ms.
        from containers import commands_runtime

        commands_runtime.register(sub, only=command)
        return parser
    modules = [
        "containers.commands_runtime",
        "containers.commands_images",
        "containers.commands_server",
    ]
    for module_name in modules:
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one lamina command; called without argv (as the `lamina` program), exit with it."""
    _standard_descriptors_open()
    if argv is None and _command_of(sys.argv[1:]) in ("run", "exec"):
        from containers import collector

        collector.pause()  # resumed once the container's process runs
    status = _run(sys.argv[1:] if argv is None else argv)
    if argv is None:
        exit_without_teardown(status)
    return status


def _standard_descriptors_open() -> None:
    """Started with stdin, stdout or stderr closed: /dev/null there, as a container without
    -i gets for its stdin. Else the first descriptor lamina opens takes that number and
    what it passes on as 0, 1 or 2 is not what it means to (a mount failed so)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: fd
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)  # os.open's are not: the container's command gets it
            name = ("stdin", "stdout", "stderr")[fd]
            if getattr(sys, name) is None:  # Python found it closed at its start
                stream = open(fd, "r" if fd == 0 else "w", closefd=False)  # noqa: SIM115 - kept
                setattr(sys, name, stream)


def _run(argv: Sequence[str]) -> int:
    args = _read_run(argv)
    if args is None:
        args = build_parser(argv).parse_args(argv)
    try:
        status: int = args.func(args)
    except UserError as exc:
        print(f"lamina: error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    return status


def _read_run(argv: Sequence[str]) -> argparse.Namespace | None:
    """`lamina run`'s usual command lines without argparse (see containers/run_args.py)."""
    if _command_of(argv) != "run":
        return None
    args = read_run(argv, _cmd_run)
    if args is not None and not args.detach and args.rootfs is None:
        # It will mount (an image, or --layer): the mount program gets ready meanwhile.
        from containers import mount_helper

        mount_helper.fork_early()
    return args


def _cmd_run(args: argparse.Namespace) -> int:
    from containers.commands_run import cmd_run

    return cmd_run(args)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as the commands print them (ps, images, stats, top): columns padded to their
    widest cell, three spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def exit_without_teardown(status: int) -> NoReturn:
    """Exit once our output is out, skipping the interpreter's teardown: freeing every module
    takes ~10 ms of each `lamina run --rm`, and what it closes the kernel closes too."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, or stream closed
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    # `python -m containers.cli`: the rest of lamina imports containers.cli, whose error
    # classes are not this __main__ module's, so run that module (`lamina` and `python -m
    # containers` import it anyway).
    from containers.cli import main as imported_main

    sys.exit(imported_main())
