"""`lamina run`'s options, and a reader of its command line that needs no argparse.

The table below is the one definition of run's options: `commands_runtime` builds the
argparse parser from it (for help, mistakes and every form this reader does not take), and
`read_run` reads the forms people type without argparse, which costs every `lamina run`
~5 ms (importing argparse, gettext and locale, and building the parser). The reader declines
(returns None) whatever it is not sure to read exactly as argparse would: help, an
abbreviated or unknown option, an option value that starts with '-', a number that does not
parse, options before `run` other than --root. `tests/containers/test_run_args.py` holds it
to argparse's reading.
"""

from __future__ import annotations

from containers.launch import default_root

TYPE_CHECKING = False  # typing and argparse cost milliseconds at every start
if TYPE_CHECKING:
    from argparse import Namespace
    from collections.abc import Callable, Sequence
else:
    # What the commands read from is an argparse.Namespace for mypy; attribute access is all
    # they do with it, which SimpleNamespace gives without importing argparse.
    from types import SimpleNamespace as Namespace

FLAG, VALUE, APPEND = "flag", "value", "append"


class RunOption:
    __slots__ = ("default", "dest", "help", "kind", "names", "type")

    def __init__(
        self,
        names: tuple[str, ...],
        kind: str,
        help: str | None = None,
        type: Callable[[str], object] | None = None,
        default: object = None,
    ) -> None:
        self.names = names
        # argparse's rule: the first long option names the attribute.
        self.dest = next(n for n in names if n.startswith("--"))[2:].replace("-", "_")
        self.kind = kind
        self.help = help
        self.type = type
        self.default = default


RUN_OPTIONS = (
    RunOption(("--layer",), APPEND, "layer dir (first = topmost)"),
    RunOption(("--rootfs",), VALUE, "use DIR as the root filesystem, bind-mounted (no union)"),
    RunOption(("--name",), VALUE),
    RunOption(("-h", "--hostname"), VALUE),
    RunOption(("-e", "--env"), APPEND, "KEY=VAL (or KEY from the host)"),
    RunOption(("--env-file",), APPEND),
    RunOption(("-w", "--workdir"), VALUE),
    RunOption(("-u", "--user"), VALUE, "USER[:GROUP] or UID[:GID]"),
    RunOption(("--entrypoint",), VALUE),
    RunOption(("-i", "--interactive"), FLAG, "keep stdin open"),
    RunOption(("-t", "--tty"), FLAG, "allocate a pseudo-terminal"),
    RunOption(("-d", "--detach"), FLAG, "run in the background, print the id"),
    RunOption(("--rm",), FLAG, "remove the container when it exits"),
    RunOption(("--read-only",), FLAG, "mount the root filesystem read-only"),
    RunOption(("-v", "--volume"), APPEND, "HOST:CONTAINER[:ro]"),
    RunOption(("--tmpfs",), APPEND, "PATH[:OPTIONS]"),
    RunOption(("--network", "--net"), VALUE, "host, or none (default: only lo)", None, "private"),
    RunOption(("-p", "--publish"), APPEND, "[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]"),
    RunOption(("--add-host",), APPEND, "NAME:IP, a line of the container's /etc/hosts"),
    RunOption(("--dns",), APPEND, "a name server for the container's /etc/resolv.conf"),
    RunOption(("--init",), FLAG, "run a small init as PID 1 (signals, zombies)"),
    RunOption(("--privileged",), FLAG, "all capabilities, no masked paths"),
    RunOption(("--userns",), FLAG, "root inside is an unprivileged host uid range"),
    RunOption(("--security-opt",), APPEND, "seccomp=unconfined: no seccomp filter"),
    RunOption(("--cap-add",), APPEND),
    RunOption(("--cap-drop",), APPEND),
    RunOption(("-m", "--memory"), VALUE, "memory limit, e.g. 64m"),
    RunOption(("--memory-swap",), VALUE, "memory + swap limit, -1 for unlimited swap"),
    RunOption(("--cpus",), VALUE, "CPU quota, e.g. 0.5"),
    RunOption(("--cpu-shares",), VALUE, "relative CPU weight (default 1024)", int),
    RunOption(("--pids-limit",), VALUE, "maximum number of processes", int),
    RunOption(("--cpuset-cpus",), VALUE, "CPUs allowed, e.g. 0-1"),
)
_BY_NAME = {name: option for option in RUN_OPTIONS for name in option.names}


def read_run(argv: Sequence[str], func: Callable[[Namespace], int]) -> Namespace | None:
    """`[--root DIR] run [OPTIONS] [IMAGE [COMMAND...]]` as argparse reads it (func as the
    command's function), or None: argparse must read this one."""
    root = default_root()
    at = 0
    while at < len(argv) and argv[at] != "run":
        word = argv[at]
        if word.startswith("--root="):
            root, at = word[len("--root=") :], at + 1
        elif word == "--root" and at + 1 < len(argv) and not argv[at + 1].startswith("-"):
            root, at = argv[at + 1], at + 2
        else:
            return None
    if at == len(argv):
        return None
    at += 1
    values: dict[str, object] = {
        o.dest: [] if o.kind == APPEND else False if o.kind == FLAG else o.default
        for o in RUN_OPTIONS
    }
    while at < len(argv):
        word = argv[at]
        if word == "--" or not word.startswith("-") or word == "-":
            break  # IMAGE and COMMAND (or `--` and COMMAND): the rest, as it is
        at += 1
        if word.startswith("--"):
            name, equals, inline = word.partition("=")
            option = _BY_NAME.get(name)
            if option is None:
                return None
            if option.kind == FLAG:
                if equals:
                    return None
                values[option.dest] = True
                continue
            taken = _value(argv, at, inline if equals else None)
            if taken is None or not _store(values, option, taken[0]):
                return None
            at = taken[1]
            continue
        for index in range(1, len(word)):  # a cluster of short options: -it, -eKEY=VAL
            option = _BY_NAME.get("-" + word[index])
            if option is None:
                return None
            if option.kind == FLAG:
                values[option.dest] = True
                continue
            taken = _value(argv, at, word[index + 1 :] or None)
            if taken is None or not _store(values, option, taken[0]):
                return None
            at = taken[1]
            break
    return Namespace(root=root, command="run", **values, args=list(argv[at:]), func=func)


def _value(argv: Sequence[str], at: int, attached: str | None) -> tuple[str, int] | None:
    """An option's value and where reading goes on: the text attached to the option, else
    the next word; None if that word looks like an option (argparse must judge it)."""
    if attached is not None:
        return attached, at
    if at == len(argv) or argv[at].startswith("-"):
        return None
    return argv[at], at + 1


def _store(values: dict[str, object], option: RunOption, text: str) -> bool:
    try:
        value = option.type(text) if option.type is not None else text
    except ValueError:
        return False
    if option.kind == APPEND:
        appended = values[option.dest]
        assert isinstance(appended, list)
        appended.append(value)
    else:
        values[option.dest] = value
    return True
