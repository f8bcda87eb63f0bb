"""Lower directories' names, kept to skip lookups that would miss (no FUSE): when a
directory is listed, what is kept, and lookups through a LayerStack that uses them."""

from __future__ import annotations

from pathlib import Path

import pytest

from unionfs.lower_names import LIST_AT_MISS, LowerNames
from unionfs.stack import LayerStack
from unionfs.whiteouts import TRUSTED, make_whiteout

A, B, C = (0, b"a"), (0, b"b"), (1, b"c")


class Lister:
    """list_dir for LowerNames: names from a dict, and which directories were listed."""

    def __init__(self, dirs: dict[tuple[int, bytes], list[bytes] | None]) -> None:
        self.dirs = dirs
        self.listed: list[tuple[int, bytes]] = []

    def __call__(self, directory: tuple[int, bytes], most: int) -> list[bytes] | None:
        self.listed.append(directory)
        names = self.dirs.get(directory)
        return None if names is None or len(names) > most else names


def miss(names: LowerNames, directory: tuple[int, bytes], times: int = LIST_AT_MISS) -> None:
    for _ in range(times):
        names.missed(directory)


def test_a_directory_is_listed_at_its_second_miss_and_then_answers_misses() -> None:
    lister = Lister({A: [b"x", b"y"]})
    names = LowerNames(lister)
    names.missed(A)
    assert lister.listed == [] and not names.absent(A, b"z")  # one probe: no listing
    names.missed(A)
    assert lister.listed == [A]
    assert names.absent(A, b"z")
    assert not names.absent(A, b"x") and not names.absent(A, b"y")  # held: ask the layer
    assert not names.absent(B, b"z")  # another directory knows nothing yet
    miss(names, A)
    assert lister.listed == [A]  # listed once


def test_an_empty_directory_holds_no_name() -> None:
    names = LowerNames(Lister({A: []}))
    miss(names, A)
    assert names.absent(A, b"anything") and names.kept == 0


def test_a_directory_too_big_or_unlistable_is_not_kept_nor_listed_again() -> None:
    lister = Lister({A: [b"%d" % i for i in range(5)], B: None})
    names = LowerNames(lister, most_a_dir=4)
    for directory in (A, B):
        miss(names, directory, 3 * LIST_AT_MISS)
        assert not names.absent(directory, b"none")
    assert lister.listed == [A, B]
    assert names.kept == 0


def test_the_oldest_listings_go_when_more_names_than_allowed_are_kept() -> None:
    lister = Lister({A: [b"1", b"2"], B: [b"3", b"4"], C: [b"5", b"6", b"7"]})
    names = LowerNames(lister, most_in_all=5)
    miss(names, A)
    miss(names, B)
    assert names.kept == 4 and names.absent(A, b"9") and names.absent(B, b"9")
    miss(names, C)  # 7 names: A goes
    assert names.kept == 5
    assert not names.absent(A, b"9") and names.absent(B, b"9") and names.absent(C, b"9")


def test_a_listing_bigger_than_all_that_may_be_kept_leaves_the_others_alone() -> None:
    lister = Lister({A: [b"1"], B: [b"2", b"3", b"4"]})
    names = LowerNames(lister, most_a_dir=10, most_in_all=2)
    miss(names, A)
    miss(names, B)
    assert names.kept == 1 and names.absent(A, b"9") and not names.absent(B, b"9")


# --- through a LayerStack, on real directories ---------------------------------------------


@pytest.fixture
def layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    upper, top, bottom = tmp_path / "upper", tmp_path / "top", tmp_path / "bottom"
    for d in (upper, top / "d", bottom / "d"):
        d.mkdir(parents=True)
    return upper, top, bottom


def resolve(stack: LayerStack, *names: bytes) -> list[tuple[int, bytes] | None]:
    """The lower file each of names in d resolves to (None: no such name)."""
    root = stack.root()
    d = stack.lookup(root.upper, root.sources, b"d")
    assert d is not None
    found = []
    for name in names:
        entry = stack.lookup(None, d.sources, name)
        found.append(entry.sources[0] if entry is not None else None)
    return found


def test_lookups_find_the_same_files_before_and_after_the_top_layer_is_listed(
    layers: tuple[Path, Path, Path],
) -> None:
    upper, top, bottom = layers
    for i in range(6):
        (top if i % 2 else bottom).joinpath("d", f"f{i}").write_text(str(i))
    (bottom / "d" / "hidden").write_text("below a whiteout")
    make_whiteout(bytes(top / "d" / "hidden"))
    stack = LayerStack([bytes(top), bytes(bottom)], bytes(upper), TRUSTED)
    names = [b"f0", b"f1", b"f2", b"f3", b"f4", b"f5", b"hidden", b"missing"]
    expected: list[tuple[int, bytes] | None] = [(1, b"d/f0"), (0, b"d/f1"), (1, b"d/f2")]
    expected += [(0, b"d/f3"), (1, b"d/f4"), (0, b"d/f5"), None, None]
    assert resolve(stack, *names) == expected  # the misses of f0 and f2 list top's d
    assert stack.lower_names.absent((0, b"d"), b"f4")
    assert not stack.lower_names.absent((0, b"d"), b"hidden")  # the whiteout is an entry
    assert resolve(stack, *names) == expected


def test_a_lower_directory_is_read_no_further_than_what_may_be_kept(
    layers: tuple[Path, Path, Path],
) -> None:
    upper, top, _ = layers
    for i in range(5):
        (top / "d" / f"f{i}").touch()
    stack = LayerStack([bytes(top)], bytes(upper), TRUSTED)
    assert sorted(stack._list_lower((0, b"d"), 5) or []) == [b"f%d" % i for i in range(5)]
    assert stack._list_lower((0, b"d"), 4) is None
    assert stack._list_lower((0, b"gone"), 5) is None
