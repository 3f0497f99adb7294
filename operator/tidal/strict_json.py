"""JSON from callers, parsed so that no input makes Tidal fail: every problem is a message that names it.

Python's json module has three ways to turn hostile input into a crash or a wrong answer, each closed here:
- nesting: `[[[[…]]]]` 200,000 deep raises RecursionError (not ValueError), which handlers that catch
  ValueError let through as a 500. Refused past MAX_DEPTH levels, before the parser recurses;
- `1e999999` parses as inf, and `NaN`/`Infinity` are accepted: forwarded as they are, an engine gets a
  number it cannot use; re-encoded, they become `Infinity`, which is not JSON at all;
- an integer of more than 4,300 digits raises ValueError with a message about str() conversion.

OpenAI's request bodies nest a few levels (messages → content parts → image_url); 64 leaves room for JSON
schemas in `response_format` and tool parameters.
"""

from __future__ import annotations

import json
import math

MAX_DEPTH = 64


class BadJson(ValueError):
    """Not JSON Tidal accepts; str() says why, for the caller."""


def _nesting_too_deep(text: str) -> bool:
    """Whether brackets outside strings nest past MAX_DEPTH. Only bodies with that many opening brackets are
    scanned character by character, so an ordinary request costs one count() per bracket kind."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadJson(f"the number {text[:40]} is too large for a 64-bit float")
    return value


def _no_constant(name: str):
    raise BadJson(f"{name} is not a JSON number")


def loads(raw: bytes | str):
    """Parse JSON; raise BadJson (a ValueError) naming the problem for anything Tidal would not accept."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError as err:
        raise BadJson(f"the body is not UTF-8 (byte {err.start})") from None
    if _nesting_too_deep(text):
        raise BadJson(f"JSON nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except BadJson:
        raise
    except RecursionError:  # belt and braces: the scan above should have caught it
        raise BadJson(f"JSON nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as err:
        raise BadJson(f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except ValueError as err:  # an integer past Python's 4,300-digit limit
        raise BadJson(f"not acceptable JSON: {str(err)[:120]}") from None
