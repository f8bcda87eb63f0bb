"""`lamina server start|stop|status`: the fork server of a state directory (see
containers/fork_server.py)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


def register(sub: Any) -> None:
    server = sub.add_parser(
        "server",
        help="a resident process that starts `lamina run` sooner (start, stop, status)",
    )
    server.add_argument("action", choices=("start", "stop", "status"))
    server.add_argument(
        "--foreground", action="store_true", help="start: serve here until SIGTERM or ^C"
    )
    server.set_defaults(func=cmd_server)


def cmd_server(args: argparse.Namespace) -> int:
    from containers import fork_server
    from containers.cli import UserError

    root = args.root
    if args.action == "start":
        try:
            pid = fork_server.start(root, foreground=args.foreground)
        except fork_server.ServerError as exc:
            raise UserError(str(exc)) from None
        if not args.foreground:
            print(f"lamina server started for {root} (pid {pid})")
        return 0
    if args.action == "stop":
        stopped = fork_server.stop(root)
        if stopped is None:
            print(f"no lamina server runs for {root}")
        elif fork_server.running_pid(root) == stopped:
            print(f"lamina server {stopped} stops once the commands it runs have ended")
        else:
            print(f"lamina server {stopped} stopped")
        return 0
    found = fork_server.status(root)
    if found is None:
        print(f"no lamina server runs for {root}")
        return 3
    print(
        f"lamina server for {root}: pid {found['pid']}, "
        f"{found['served']} command(s) served, {found['running']} running"
    )
    return 0
