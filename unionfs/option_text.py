"""The escapes of mount option text (`\\,` a comma and `\\:` a colon inside a layer path,
`\\\\` a backslash), apart from the options' meaning: lamina writes a mount's options on
every container start, and importing unionfs.config for that cost ~1.5 ms of it."""

from __future__ import annotations

__all__ = ["escape_path", "split_escaped", "unescape"]


def split_escaped(text: str, sep: str, *, keep_escapes: bool = False) -> list[str]:
    """Split on sep, honouring backslash escapes (`\\:` is a colon inside a layer path).

    keep_escapes leaves every escape in the parts, for a second split: options are split
    on commas first, then lowerdir on colons, as the kernel's overlayfs does.
    """
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
            if keep_escapes:
                current.append(char)
        elif char == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    """A path with its backslash escapes undone (`\\,` is a comma, `\\\\` a backslash)."""
    return "".join(split_escaped(text, "\0"))


def escape_path(path: str) -> str:
    """A path as a value of lowerdir=, upperdir= or workdir= (what unescape undoes)."""
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")
