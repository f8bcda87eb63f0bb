"""Our `unionfs` mount program, run in a fork of lamina: no second interpreter to start,
and the modules lamina imported already are there (~7 ms of every start).

`lamina run` forks it as soon as it knows it will mount (fork_early), before it resolves
the image and creates the container: the program imports its own modules (~8 ms) while
lamina does that, and waits for its command line. Other starts (detached: the monitor
mounts, not the front process) fork it when they mount.

The child behaves as the exec'd command's daemon would: stdio to a pipe (let go once the
mount is ready: lamina's signal), no descriptor of ours, no signal handler or mask of
ours, a session of its own, and it dies with us until the mount is ready. It serves the
mount itself: the command's second fork, whose exit lamina waited for, is gone.
"""

from __future__ import annotations

import contextlib
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal  # signal.py builds enums at import (enum costs ~4 ms a start)


class ForkedMountProgram:
    """The forked program, waiting for its command line (send)."""

    def __init__(self, pid: int, command: int, output: int) -> None:
        self.pid = pid
        self.output = output  # the read end of its stdout and stderr
        self._command = command  # the write end of the pipe its command line comes through

    def cancel(self) -> None:
        """Never mind: it sees its command pipe end, exits, and is reaped here."""
        os.close(self._command)
        os.close(self.output)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    def send(self, argv: list[str]) -> None:
        """Run `unionfs ARGV`. A program never sent anything exits, with its parent."""
        try:
            os.write(self._command, b"\0".join(os.fsencode(a) for a in argv))
        except BrokenPipeError:
            pass  # it died meanwhile: its exit status and output say why
        finally:
            os.close(self._command)


_early: ForkedMountProgram | None = None


def fork_early() -> None:
    """Fork the program now, for take() to find; silently nothing if fork fails."""
    global _early
    # Both sides load ctypes (lamina's syscalls, the daemon's): loaded once, before they
    # part, it is 1.2-2 ms of CPU less a start where many start at once on few CPUs.
    import ctypes  # noqa: F401

    with contextlib.suppress(OSError):
        _early = fork()


def take() -> ForkedMountProgram | None:
    """The program fork_early() made, once."""
    global _early
    early, _early = _early, None
    return early


def discard() -> None:
    """End the program fork_early() made if nothing took it (the start failed first)."""
    early = take()
    if early is not None:
        early.cancel()


def fork() -> ForkedMountProgram:
    """Fork the program; OSError if the system cannot."""
    command_r, command_w = os.pipe()
    output, output_w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY)
    sys.stdout.flush()  # what is buffered is ours to write, not the child's
    sys.stderr.flush()
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        for fd in (command_r, command_w, output, output_w, devnull):
            os.close(fd)
        raise
    if pid == 0:
        code = 1
        try:
            code = _child(parent, command_r, devnull, output_w)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    for fd in (command_r, output_w, devnull):
        os.close(fd)
    return ForkedMountProgram(pid, command_w, output)


def _child(parent: int, command: int, stdin: int, output: int) -> int:
    """In the forked child: import, read the command line, become `unionfs ARGV`."""
    import gc

    # Objects of lamina's that the collector would finalize here could close descriptor
    # numbers that are the daemon's by then.
    gc.freeze()
    from unionfs.syscalls import set_parent_death_signal, set_process_name

    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:
        return 1
    for fd, target in ((stdin, 0), (output, 1), (output, 2), (command, 3)):
        os.dup2(fd, target)
    os.closerange(4, os.sysconf("SC_OPEN_MAX"))
    for sig in signal.valid_signals():  # lamina's handlers (forwarding, ^C), not its ignores
        if callable(signal.getsignal(sig)):
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # a start holds the forwarded ones
    set_process_name(b"unionfs")  # for ps and top: our argv is still lamina's
    from unionfs.cli import fail, load_config, serve_as_daemon
    from unionfs.mount import serve  # noqa: F401 - the daemon's modules, imported once here

    argv = _read_command(3)
    if argv is None:
        return 1
    config = load_config(argv)
    if isinstance(config, int):
        return config
    # The daemon itself, no fork more: lamina sees the mount ready when our output closes.
    return serve_as_daemon(config, parent, ready=lambda: None, failed=fail)


def _read_command(fd: int) -> list[str] | None:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    if not chunks:
        return None  # lamina did not mount after all
    return [os.fsdecode(a) for a in b"".join(chunks).split(b"\0")]
