"""`lamina run`'s command line read without argparse must read exactly as argparse does,
or decline (and argparse reads it)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from containers.cli import build_parser
from containers.commands_run import cmd_run
from containers.commands_runtime import register
from containers.run_args import RUN_OPTIONS, read_run

READ_ALIKE = [
    "run --rm busybox true",
    "run busybox",
    "run",
    "--root /tmp/state run --rm busybox true",
    "--root=/tmp/state run -d busybox sleep 1",
    "run -it busybox sh",
    "run -dit --name web busybox httpd -f -p 80",
    "run -e A=1 -eB=2 --env C=3 --env=D=4 busybox env",
    "run --name=web -h host -w /srv -u 1000:1000 busybox id",
    "run -m 64m --memory-swap 128m --cpus 0.5 --cpu-shares 512 --pids-limit 64 busybox true",
    "run --cpuset-cpus 0-1 --network host --read-only --init busybox true",
    "run --net none --privileged --userns --cap-add NET_ADMIN --cap-drop CHOWN busybox true",
    "run -v /a:/b -v /c:/d:ro --tmpfs /run --tmpfs /tmp:size=1m busybox ls",
    "run --layer /l1 --layer /l2 -- sh -c 'echo hi'",
    "run --rootfs /r -- true",
    "run --rootfs=/r --entrypoint /bin/sh busybox -c 'exit 3'",
    "run --env-file /e1 --env-file=/e2 busybox env",
    "run busybox -d --rm --name x",  # options after the image belong to the command
    "run --rm -- busybox true",
    "run -te A=1 busybox true",  # a value option ends a cluster, its value the next word
    "run --pids-limit=010 busybox true",
    "run --name= -e '' busybox true",  # empty values, attached and apart
]

DECLINED = [
    "run --help",
    "run --na web busybox true",  # an abbreviation: argparse knows it
    "run --memory-swap -1 busybox true",  # a value starting with '-'
    "run --cpu-shares many busybox true",  # argparse's message for a bad number
    "run --rm=yes busybox true",
    "run -x busybox",
    "-v run busybox",
    "ps",
    "--root",
]


def argparse_reading(argv: list[str]) -> dict[str, object]:
    return vars(build_parser(argv).parse_args(argv))


@pytest.mark.parametrize("line", READ_ALIKE)
def test_the_usual_forms_are_read_as_argparse_reads_them(line: str) -> None:
    argv = shlex.split(line)
    ours = read_run(argv, cmd_run)
    assert ours is not None, "declined a usual form"
    assert vars(ours) == argparse_reading(argv)


@pytest.mark.parametrize("line", DECLINED)
def test_anything_else_is_left_to_argparse(line: str) -> None:
    assert read_run(shlex.split(line), cmd_run) is None


def test_an_abbreviation_still_works_through_argparse() -> None:
    assert argparse_reading(shlex.split("run --na web busybox"))["name"] == "web"


def test_the_table_is_the_run_parser() -> None:
    """Every option of argparse's run parser is in the table, with the same attribute."""
    sub = argparse.ArgumentParser().add_subparsers()
    register(sub, only="run")
    run_parser = sub.choices["run"]
    parsed = {
        tuple(a.option_strings): a.dest
        for a in run_parser._actions
        if a.option_strings and a.dest != "help"
    }
    assert parsed == {option.names: option.dest for option in RUN_OPTIONS}


def test_values_get_their_types(tmp_path: Path) -> None:
    argv = ["run", "--layer", str(tmp_path), "--pids-limit", "7", "--", "true"]
    ours = read_run(argv, cmd_run)
    assert ours is not None
    assert ours.layer == [str(tmp_path)] and ours.pids_limit == 7 and ours.args == ["--", "true"]
