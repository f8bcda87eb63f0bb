"""The `unionfs` command line parsed by hand (start-up time) must read as argparse reads it."""

from __future__ import annotations

import pytest

from unionfs.cli import parse_arguments, parse_with_argparse

FORMS = [
    ["-o", "lowerdir=/a,upperdir=/u,workdir=/w", "/mnt"],
    ["-f", "-o", "lowerdir=/a", "/mnt"],
    ["-d", "-o", "lowerdir=/a", "-o", "ro", "/mnt"],
    ["-olowerdir=/a", "/mnt"],
    ["-s", "-f", "-olowerdir=/a:/b", "/mnt"],
    ["unionfs#x", "/mnt", "-o", "rw,lowerdir=/a"],  # as mount.fuse3 calls a helper
    ["-o", "", "-o", "lowerdir=/a,,volatile", "/mnt"],  # podman's empty option
    ["/mnt", "-o", "lowerdir=/a", "-f"],
    ["-o", "lowerdir=/a", "/one", "/two", "/three"],  # too many paths: cli.main says so
    ["-fd", "-o", "lowerdir=/a", "/mnt"],  # grouped flags: argparse's turn
    ["-o", "lowerdir=/a", "--", "/mnt"],
]


def fields(args: object) -> tuple[object, ...]:
    return tuple(getattr(args, name) for name in ("paths", "options", "foreground", "debug"))


@pytest.mark.parametrize("argv", FORMS, ids=" ".join)
def test_the_hand_parser_agrees_with_argparse(argv: list[str]) -> None:
    assert fields(parse_arguments(argv)) == fields(parse_with_argparse(argv))


@pytest.mark.parametrize("argv", [["-o"], ["--frobnicate", "/mnt"], ["-o", "lowerdir=/a"]])
def test_what_it_cannot_read_gets_argparse_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("usage: unionfs")
