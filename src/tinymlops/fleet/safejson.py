"""Bounded JSON parsing for input that crosses a trust boundary (server answers on the device, uploads on the server).

``json.loads`` recurses once per nesting level: a few thousand ``[`` raise ``RecursionError`` (an HTTP 500 on the
service, a crashed loop on the device), and it happily parses a body of any size. :func:`loads_bounded` refuses
both before parsing: the size against ``max_bytes`` and the nesting depth with a linear scan that skips strings.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET = re.compile(rb"[\[\]{}]")


class UnsafeJSON(ValueError):
    """The document is too large, too deeply nested, or not JSON."""


def json_depth(data: bytes, limit: int = MAX_DEPTH) -> int:
    """Return the nesting depth of a JSON document (stops counting once past ``limit``)."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub(b'""', data)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        else:
            depth -= 1
    return deepest


def loads_bounded(data: bytes | str, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON no larger than ``max_bytes`` and no deeper than ``max_depth`` (UnsafeJSON otherwise).

    NaN and Infinity (not JSON) are refused too.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise UnsafeJSON(f"JSON document of {len(raw)} bytes is larger than {max_bytes}")
    if json_depth(raw, max_depth) > max_depth:
        raise UnsafeJSON(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise UnsafeJSON(f"not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
