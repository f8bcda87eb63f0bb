"""`lamina logs --tail N`: where a log's last lines begin, read backwards from its end."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

SEEK_END = 2


def start_of_last_lines(log: BinaryIO, count: int, block: int = 65536) -> int:
    """Where the last count lines of log begin (a last line without its newline counts)."""
    end = log.seek(0, SEEK_END)
    if count == 0:
        return end
    position, newlines = end, 0
    while position > 0:
        size = min(block, position)
        position -= size
        log.seek(position)
        chunk = log.read(size)
        if position + size == end and chunk.endswith(b"\n"):
            chunk = chunk[:-1]  # the newline that ends the last line starts nothing
        index = len(chunk)
        while (index := chunk.rfind(b"\n", 0, index)) != -1:
            newlines += 1
            if newlines == count:
                return position + index + 1
    return 0
