"""What the gateway refuses before it reads a request's meaning: targets and headers that could change the
request an engine sees.

The gateway writes the upstream request line and headers itself (upstream.py), on connections it reuses for
other callers. A CR or LF that reached those bytes would end the line early: `/v1/x%0D%0AX-Injected:%201`,
forwarded decoded, becomes a header of the caller's choosing, and a second request line becomes a request the
engine answers on someone else's connection. So the target goes upstream as the caller encoded it
(`raw_path`), and a target or header whose decoded form holds a control character is refused outright:
no legitimate OpenAI or KServe request carries one.
"""

from __future__ import annotations

import re

from aiohttp import web

# C0 controls and DEL: CR, LF and NUL are the dangerous ones; none of the others belongs in a path or header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_IN_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a header value may hold a tab


def _named(ch: str) -> str:
    return {"\r": "CR", "\n": "LF", "\x00": "NUL"}.get(ch, f"0x{ord(ch):02x}")


def refusal(request: web.Request) -> tuple[str, str] | None:
    """(message, param) when the request must be refused with a 400; None when it may go on."""
    raw_path, _, raw_query = request.raw_path.partition("?")
    for part, text in (("path", request.path), ("query", request.query_string), ("target", request.raw_path)):
        found = _CONTROL.search(text)
        if found:
            return (f"the request's {part} holds a control character ({_named(found.group())}); "
                    "percent-encoded CR, LF and NUL are refused", part)
    if " " in raw_path or " " in raw_query:
        return "the request's target holds a space; percent-encode it as %20", "target"
    for name, value in request.headers.items():
        found = _CONTROL.search(name) or _CONTROL_IN_HEADER.search(value)
        if found:
            return (f"the header {name[:64]!r} holds a control character ({_named(found.group())})", "headers")
    return None
