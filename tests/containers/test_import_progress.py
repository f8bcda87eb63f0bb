"""The import progress bar: drawn on a terminal, silent otherwise."""

from __future__ import annotations

import io

import pytest

from containers import progress
from containers.progress import CountingReader, Progress, human_size


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_is_drawn_on_a_tty_and_ends_with_a_newline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress, "REDRAW_EVERY", 0.0)
    out = FakeTty()
    bar = Progress(2_000_000, "importing", stream=out)
    reader = CountingReader(io.BytesIO(b"x" * 1_000_000), bar)
    reader.drain()
    bar.finish()
    text = out.getvalue()
    assert "\r[###############---------------]  50% 1.0MB/2.0MB importing" in text
    assert text.endswith("\n")


def test_nothing_is_drawn_when_not_on_a_tty() -> None:
    out = io.StringIO()
    bar = Progress(10, stream=out)
    bar.advance(10)
    bar.finish()
    assert out.getvalue() == ""


def test_sizes_read_like_docker() -> None:
    assert [human_size(n) for n in (512, 2_500, 2_100_000, 3e9)] == [
        "512B",
        "2.5kB",
        "2.1MB",
        "3.0GB",
    ]
