"""The size and cpu-list parsers against the regexes they replaced (re cost every start
milliseconds): the same language, but for the refusals resources.py documents."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from containers.cgroups.resources import InvalidLimit, parse_cpu_list, parse_size

OLD_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtb]?)(?:i?b)?\s*$", re.IGNORECASE)
OLD_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
MANY_CPUS = 10**40  # so that only the format, and ranges running backwards, are refused


def old_parse_size(text: str) -> int | None:
    match = OLD_SIZE.match(text)
    if not match:
        return None
    number, unit = match.groups()
    return int(float(number) * UNITS[unit.lower()])


def new_parse_size(text: str) -> int | None:
    try:
        return parse_size(text, "--memory")
    except InvalidLimit as exc:
        assert str(exc) == (
            f"invalid size for --memory: {text!r} (expected e.g. 512k, 64m, 1g)"
        )  # the message is the one it was
        return None


def size_refused_on_purpose(text: str) -> bool:
    """Non-ASCII digits (re's \\d) and unit letters (re's case folding: the Kelvin sign,
    'ı', 'İ'); non-ASCII whitespace is still taken, as \\s took it."""
    return any(not c.isascii() and not c.isspace() for c in text)


def assert_size_parsed_as_before(text: str) -> None:
    old, new = old_parse_size(text), new_parse_size(text)
    if old is not None and new is None and size_refused_on_purpose(text):
        return
    assert new == old, text


def old_parse_cpu_list(text: str) -> str:
    """parse_cpu_list as it was, regex and all."""
    if not OLD_CPU_LIST.match(text):
        raise InvalidLimit(f"invalid --cpuset-cpus {text!r} (expected e.g. 0-1,3)")
    for part in text.split(","):
        bounds = [int(n) for n in part.split("-")]
        if bounds[0] > bounds[-1] or bounds[-1] >= MANY_CPUS:
            raise InvalidLimit(f"invalid --cpuset-cpus {text!r}: this host has CPUs 0-x")
    return text


def outcome(parse: Callable[[str], str], text: str) -> str:
    try:
        return f"ok {parse(text)!r}"
    except InvalidLimit as exc:
        return "refused: " + ("format" if "expected e.g." in str(exc) else "range")


def cpu_list_refused_on_purpose(text: str) -> bool:
    """Non-ASCII digits (re's \\d: int() read them, the kernel would not), and a trailing
    newline (re's $ matched before one)."""
    return not text.isascii() or text.endswith("\n")


def assert_cpu_list_parsed_as_before(text: str) -> None:
    old = outcome(old_parse_cpu_list, text)
    new = outcome(lambda t: parse_cpu_list(t, MANY_CPUS), text)
    if old != new and cpu_list_refused_on_purpose(text):
        assert new == "refused: format", text
        return
    assert new == old, text


SIZES = [
    "64m", "64M", "64MiB", "64mib", "64MB", "64 mb", "1.5g", "1.5GiB", " 10 ", "\t64m\n",
    "64m\n", "64m\n\n", "12\n", "10kb", "10KIB", "10ib", "10IB", "10b", "10bb", "10bib", "10B",
    "0", "0.0", "007k", "1.", ".5", "", " ", "m", "kb", "ib", "b", "1e3", "1E3", "inf", "nan",
    "0x10", "+1", "-1m", "1_000", "1,5g", "1..5", "1.5.5", "1.m", "1 2m", "10 k", "10k b",
    "10 k b", "10kbb", "10kibb", "10i", "10 ib", "10 i b", "10kB ", "10 KiB\r\n", "1t",
    "99999999999999999999t", "1.0000000000000000001t", "64m x", "x64m",
    "\u00a064m\u2003", "64\u3000m", "\u20281k",  # Unicode whitespace: taken as \s took it
    "١٢", "١٢m", "1٢", "１２", "𝟏𝟐", "²", "1²", "64\u212a", "64\u212ab", "64mıb", "64mİb",
]  # fmt: skip

CPU_LISTS = [
    "0", "7", "01", "10", "0-1", "0-1,3", "0-1,2-3", "3,1", "1-0", "0,0", "0-", "-1", "1-",
    ",1", "1,", "1,,2", ",", "-", "1-2-3", "0--1", "0-1-", "", " 1", "1 ", "0 -1", "0, 1",
    "12\n", "0-1\n", "1,2\n", "\n", "1\n\n", "0\n1", "0,\n", "\n1", "١٢", "0-١", "１", "²",
    "𝟏", "+1", "1.0", "0x1", "a",
]  # fmt: skip


@pytest.mark.parametrize("text", SIZES)
def test_a_size_is_parsed_as_the_regex_did(text: str) -> None:
    assert_size_parsed_as_before(text)


def test_what_sizes_are_refused_on_purpose() -> None:
    assert old_parse_size("١٢m") == 12 * 2**20 and new_parse_size("١٢m") is None
    assert old_parse_size("64\u212a") == 64 * 2**10 and new_parse_size("64\u212a") is None
    assert old_parse_size("64mıb") == 64 * 2**20 and new_parse_size("64mıb") is None
    assert new_parse_size("\u00a064m\n") == old_parse_size("\u00a064m\n") == 64 * 2**20
    assert new_parse_size("10ib") == 10  # odd, but taken before


@pytest.mark.parametrize("template", ["{}", "1{}", "{}1", "1{}b", "1k{}b", "1.{}", "1 {} "])
def test_any_one_character_in_a_size_is_taken_as_the_regex_did(template: str) -> None:
    """Every character of the Basic Multilingual Plane, which holds all the whitespace and
    case-folding oddities; beyond it there are only more digits (in SIZES)."""
    for code in range(0x10000):
        assert_size_parsed_as_before(template.format(chr(code)))


@pytest.mark.parametrize("text", CPU_LISTS)
def test_a_cpu_list_is_parsed_as_the_regex_did(text: str) -> None:
    assert_cpu_list_parsed_as_before(text)


def test_what_cpu_lists_are_refused_on_purpose() -> None:
    for text in ("0-1\n", "١"):
        assert outcome(old_parse_cpu_list, text).startswith("ok")
        with pytest.raises(InvalidLimit, match=r"\(expected e\.g\. 0-1,3\)"):
            parse_cpu_list(text, MANY_CPUS)


@pytest.mark.parametrize("template", ["{}", "1{}", "{}1", "1{}2", "1-{}", "1,{}"])
def test_any_one_character_in_a_cpu_list_is_taken_as_the_regex_did(template: str) -> None:
    for code in range(0x10000):
        assert_cpu_list_parsed_as_before(template.format(chr(code)))


ODD = ["١", "²", "𝟏", "\u212a", "ı", "İ", "\u00a0", "\n", " ", "x"]
SIZE_TEXT = st.text(st.sampled_from([*"0123456789.\tkKmMgGtTbBiI", *ODD]), max_size=10)
CPU_LIST_TEXT = st.text(st.sampled_from([*"0123456789,-", *ODD]), max_size=10)


@settings(max_examples=1000, deadline=None)
@given(SIZE_TEXT)
def test_random_sizes_are_parsed_as_the_regex_did(text: str) -> None:
    assert_size_parsed_as_before(text)


@settings(max_examples=1000, deadline=None)
@given(CPU_LIST_TEXT)
def test_random_cpu_lists_are_parsed_as_the_regex_did(text: str) -> None:
    assert_cpu_list_parsed_as_before(text)
