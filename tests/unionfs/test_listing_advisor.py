"""The choice between listing with attributes and names alone, straight (no FUSE)."""

from __future__ import annotations

import itertools

from unionfs.listing_advisor import FIRST_PROBE, PROBE_EVERY, SETTLE, ListingAdvisor


class Program:
    """Drives an advisor as a program's listings would: each listing of `files` files,
    then (if the program looks at them) a lookup of those listed by name alone."""

    def __init__(self) -> None:
        self.advisor = ListingAdvisor()
        self.lookups = 0  # the daemon's running count of lookups of listed files
        self.answers: list[bool] = []

    def list_dirs(self, count: int, files: int = 100, *, looks: bool) -> list[bool]:
        answers = []
        for _ in range(count):
            with_attributes = self.advisor.choose(self.lookups)
            answers.append(with_attributes)
            if not with_attributes:
                self.advisor.listed(files)
                if looks:
                    self.lookups += files
        return answers


def test_a_walk_soon_gets_names_alone() -> None:
    program = Program()
    answers = program.list_dirs(200, looks=False)
    assert answers[: FIRST_PROBE - 1] == [True] * (FIRST_PROBE - 1)  # as the kernel starts
    assert answers[FIRST_PROBE - 1] is False  # the first probe
    assert answers[FIRST_PROBE + SETTLE - 1 :] == [False] * (200 - FIRST_PROBE - SETTLE + 1)


def test_a_program_that_looks_at_what_it_lists_keeps_attributes_but_for_probes() -> None:
    program = Program()
    count = 1 + 8 * PROBE_EVERY
    answers = program.list_dirs(count, looks=True)
    probes = [i for i, with_attributes in enumerate(answers) if not with_attributes]
    assert probes[0] == FIRST_PROBE - 1
    assert all(b - a == PROBE_EVERY for a, b in itertools.pairwise(probes))
    assert len(probes) == 1 + (count - FIRST_PROBE) // PROBE_EVERY


def test_attributes_stop_a_few_listings_after_a_probe_left_alone() -> None:
    program = Program()
    program.list_dirs(2 * PROBE_EVERY, looks=True)
    assert program.advisor.with_attributes
    answers = program.list_dirs(PROBE_EVERY + SETTLE + 1, looks=False)
    assert program.advisor.with_attributes is False
    assert answers[-1] is False
    assert program.list_dirs(50, looks=False) == [False] * 50


def test_a_few_stray_lookups_do_not_turn_attributes_on() -> None:
    program = Program()
    for _ in range(50):
        program.list_dirs(1, looks=False)
        program.lookups += 1  # `find -name x -exec stat`: one file now and then
    assert not program.advisor.with_attributes


def test_lookups_after_a_long_walk_turn_attributes_on_at_once() -> None:
    """What a walk listed long ago does not outweigh what the program does now."""
    program = Program()
    program.list_dirs(1000, looks=False)
    assert program.list_dirs(3, looks=True) == [False, True, True]


def test_a_probe_with_no_files_in_it_keeps_attributes() -> None:
    program = Program()
    program.list_dirs(2, looks=True)
    assert program.list_dirs(4 * PROBE_EVERY, files=0, looks=False).count(True) >= 3 * PROBE_EVERY
    assert program.advisor.with_attributes
