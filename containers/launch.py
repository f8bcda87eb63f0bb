"""The `lamina` program's first step: hand the command to a `lamina server` of its root,
if one runs, else run it here (containers.cli).

Every `lamina` start imports this module, and a start served by the server imports nothing
else of ours: it stays small and imports the C modules (_socket, _signal) alone, not the
Python ones that wrap them (socket.py and signal.py build enums at import, ~20 ms here).
The protocol is the server's (containers/fork_server.py).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs milliseconds at every start; only mypy needs it
if TYPE_CHECKING:
    import _socket
    import signal
    from collections.abc import Sequence
else:
    import _signal as signal  # built in; signal.py builds enums at import

SOCKET_NAME = "server.sock"
PROTOCOL = 1
NOT_SERVED = frozenset({None, "server"})  # `server stop` served would wait for itself
DEFAULT_ROOT = "/var/lib/lamina"
# What the client passes on to the command it handed over; the others (SIGKILL, SIGSTOP)
# cannot be caught, and a client killed by one takes the command with it.
FORWARDED = (1, 2, 3, 10, 12, 15, 28)  # SIGHUP INT QUIT USR1 USR2 TERM WINCH


def default_root() -> str:
    return os.environ.get("LAMINA_ROOT", DEFAULT_ROOT)


def root_and_command(argv: Sequence[str]) -> tuple[str, str | None]:
    """The state directory argv names (--root DIR or --root=DIR, else $LAMINA_ROOT's, else
    the default) and its subcommand (None if it has none), past the global options (only
    --root takes a value)."""
    root = default_root()
    args = iter(argv)
    for arg in args:
        if arg == "--root":
            root = next(args, root)
        elif arg.startswith("--root="):
            root = arg[len("--root=") :]
        elif not arg.startswith("-"):
            return root, arg
    return root, None


def command_of(argv: Sequence[str]) -> str | None:
    return root_and_command(argv)[1]


def main() -> None:
    argv = sys.argv[1:]
    root, command = root_and_command(argv)
    if command not in NOT_SERVED:
        path = os.path.join(root, SOCKET_NAME)
        if os.path.exists(path):  # else not even _socket is imported
            status = through_server(path, argv)
            if status is not None:
                exit_as(status)
    from containers.cli import main as cli_main

    sys.exit(cli_main())


def through_server(path: str, argv: list[str]) -> bytes | None:
    """Have the server at path run `lamina ARGV` with our descriptors, environment, umask
    and directory; its status (b"X" + exit code, b"S" + signal), or None where the server
    did not take it (gone, refused it, or we cannot hand it over): run it here then."""
    import _socket

    try:
        for fd in (0, 1, 2):
            os.fstat(fd)  # the fork gets ours: all three must be open
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    got: list[int] = []  # signals that came before the server took the command
    try:
        sock.connect(path)
        _forward_signals(sock, got)
        import marshal

        umask = os.umask(0)
        os.umask(umask)
        body = marshal.dumps((PROTOCOL, "command", argv, dict(os.environb), umask))
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2, cwd))
        sock.sendmsg(
            [len(body).to_bytes(4, "little"), body],
            [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)],
        )
        while True:
            try:
                taken = sock.recv(1) == b"A"
                break
            except InterruptedError:
                continue
    except OSError:
        taken = False
    finally:
        os.close(cwd)
    if not taken:  # refused: nothing was done; run it here, the signals that came first too
        sock.close()
        _signals_back(got)
        return None
    return _wait(sock)


def _forward_signals(sock: _socket.socket, got: list[int]) -> None:
    """From now on our signals go to the command (once the server has taken it: before,
    they wait in the socket; got lists them, for a refusal)."""

    def forward(signum: int, _frame: object) -> None:
        got.append(signum)
        try:  # noqa: SIM105 - contextlib is milliseconds of imports
            sock.send(bytes((signum,)))
        except OSError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)


def _signals_back(got: list[int]) -> None:
    """Our signals handled as before, and those that came meanwhile delivered again."""
    for sig in FORWARDED:
        signal.signal(sig, signal.default_int_handler if sig == 2 else signal.SIG_DFL)
    for sig in got:
        os.kill(os.getpid(), sig)


def _wait(sock: _socket.socket) -> bytes:
    """Wait for the server to send the command's status (our signals go on meanwhile)."""
    status = b""
    while len(status) < 2:
        try:
            chunk = sock.recv(2 - len(status))
        except InterruptedError:
            continue
        if not chunk:
            print("lamina: error: the server ended while it ran the command", file=sys.stderr)
            return b"X\x7d"  # 125, as for lamina's own errors
        status += chunk
    return status


def exit_as(status: bytes) -> None:
    """End as the command did: with its exit code, or killed by its signal."""
    if status[:1] == b"S":
        signal.signal(status[1], signal.SIG_DFL)
        os.kill(os.getpid(), status[1])
        os._exit(128 + status[1])
    os._exit(status[1])
