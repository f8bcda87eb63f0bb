"""JSON for the start path, without importing the `json` package.

`json` imports `re` (and `re` imports `enum`) for a few patterns of its pure-Python
fallbacks: ~8 ms of every `lamina run` on the test machine, for reading an image's config
and writing a state file. CPython's own accelerator, `_json`, is what `json.loads` and
`json.dumps` run anyway; this module calls it with the standard library's defaults and
does the little that `json` adds around it (leading and trailing whitespace, extra data).
`tests/containers/test_lean_json.py` holds it to the `json` package's answers. Elsewhere
(pretty output for people, anything off the start path) lamina uses `json` itself.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    import _json
except ImportError:  # an interpreter without the accelerator: the package does it all
    _json = None  # type: ignore[assignment]

WHITESPACE = " \t\n\r"  # JSON's insignificant whitespace (str.strip would take more)


class _DecoderSettings:
    """What `_json.make_scanner` reads from a decoder: `json.loads`'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity: float() reads them as json does


if _json is not None:
    _scan = _json.make_scanner(_DecoderSettings())  # type: ignore[arg-type]  # duck-typed


def _unencodable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def loads(text: str | bytes) -> Any:
    """json.loads(text); bytes must be UTF-8 (json would also take UTF-16 and UTF-32).
    ValueError (UnicodeDecodeError included) on anything json would refuse."""
    if isinstance(text, bytes):
        text = text.decode()
    if _json is None:
        import json

        return json.loads(text)
    stripped = text.strip(WHITESPACE)
    try:
        value, end = _scan(stripped, 0)
    except StopIteration as exc:
        raise ValueError(f"invalid JSON at character {exc.value}") from None
    if end != len(stripped):
        raise ValueError(f"extra data after the JSON value at character {end}")
    return value


def dumps(value: object) -> str:
    """json.dumps(value): the same text, for the types json encodes by default."""
    if _json is None:
        import json

        return json.dumps(value)
    # json.dumps's defaults: circular references refused, ensure_ascii, ", " and ": ", no
    # sorting, NaN allowed, no indent (the accelerator writes compact text only; json
    # itself falls back to Python for indent). A new encoder each time: a failed call
    # may leave ids in its table of the values being encoded.
    encode = _json.make_encoder(
        {}, _unencodable, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )
    return "".join(encode(value, 0))
