"""Record: lamina's dataclass stand-in behaves as the dataclasses it replaced."""

from __future__ import annotations

import pytest

from containers.records import Record, field


class Point(Record, frozen=True):
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()


class Bag(Record):
    name: str
    items: list[str] = field(default_factory=list)


def test_fields_positional_keyword_and_defaults() -> None:
    assert Point(1).values() == {"x": 1, "y": 0, "tags": ()}
    assert Point(1, 2) == Point(x=1, y=2) == Point(y=2, x=1)
    assert Point.field_names() == ("x", "y", "tags")


def test_a_factory_default_is_made_anew_for_each_record() -> None:
    first, second = Bag("a"), Bag("b")
    first.items.append("x")
    assert second.items == []
    assert "items" not in Bag.__dict__  # the factory is not left as a class attribute


@pytest.mark.parametrize(
    "make",
    # Wrong on purpose: mypy refuses these calls as it would a dataclass's.
    [lambda: Point(), lambda: Point(1, 2, (), 4), lambda: Point(1, x=2), lambda: Point(1, z=3)],  # type: ignore[call-arg, misc]
    ids=["missing", "too many", "repeated", "unknown"],
)
def test_wrong_arguments_are_refused(make: object) -> None:
    assert callable(make)
    with pytest.raises(TypeError):
        make()


def test_frozen_records_refuse_changes_and_hash_by_value() -> None:
    point = Point(1, 2)
    with pytest.raises(AttributeError):
        point.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del point.y
    assert hash(point) == hash(Point(1, 2))
    assert len({point, Point(1, 2), Point(2, 1)}) == 2


def test_mutable_records_change_compare_by_value_and_are_unhashable() -> None:
    bag = Bag("a")
    bag.name = "b"
    assert bag == Bag("b") and bag != Bag("a") and bag != "b"
    with pytest.raises(TypeError):
        hash(bag)


def test_repr_shows_every_field() -> None:
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=())"


def test_a_field_without_default_after_one_with_is_a_declaration_error() -> None:
    with pytest.raises(TypeError, match="without default"):

        class Broken(Record):
            a: int = 1
            b: int  # type: ignore[misc]
