"""Answers that look like success but carry nothing: the replica gave the request back unprocessed.

vLLM (0.32) drains on SIGTERM, and a request its API server accepted just before the signal but its engine
core saw just after is rejected with an "abort" output. The client gets HTTP 200 and no token: non-streamed,
`finish_reason: "abort"` with `completion_tokens: 0`; streamed, a completion stream that is only
`data: [DONE]`, a chat stream that is the role chunk and then `[DONE]` (with `include_usage`, a usage chunk
of 0 completion tokens before it). On a loaded 2-core machine that
window was wide enough for 3 of 8 requests sent 2 s before the SIGTERM. Nothing was generated, so the
gateway sends such a request to another replica and the client never sees the empty answer.
"""

from __future__ import annotations

import json

# A stream's first events are held back until one shows the replica generating; beyond this many bytes
# without a verdict the stream is passed on as it is (a real first token event is a few hundred bytes).
STREAM_HEAD_LIMIT = 64 * 1024


def aborted_unprocessed(answer: bytes) -> bool:
    """A complete (non-streamed) answer in which every choice was aborted before its first token."""
    if b'"abort"' not in answer:  # cheap: almost every answer stops here
        return False
    try:
        doc = json.loads(answer)
    except ValueError:
        return False
    if not isinstance(doc, dict):
        return False
    choices, usage = doc.get("choices"), doc.get("usage")
    return (isinstance(choices, list) and bool(choices) and isinstance(usage, dict)
            and usage.get("completion_tokens") == 0
            and all(isinstance(c, dict) and c.get("finish_reason") == "abort" for c in choices))


EMPTY, GENERATING = "empty", "generating"


def stream_verdict(head: bytes, refusals: tuple[bytes, ...] = ()) -> str | None:
    """EMPTY when the stream ended ([DONE]) before any event but the chat role preamble and a usage chunk
    counting no token, or when its first other event is an error carrying one of the engines' `refusals` (the
    engine shutting down or gone); GENERATING at the first other event (a token, another error); None while
    the complete events so far say neither."""
    for event in head.replace(b"\r\n", b"\n").split(b"\n\n")[:-1]:  # the last part is not complete yet
        data = b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
        if not data:
            continue  # a comment or keep-alive
        if data == b"[DONE]":
            return EMPTY
        if b'"error"' in data and any(r in data for r in refusals):
            return EMPTY
        if not _nothing_generated(data):
            return GENERATING
    return None


def _nothing_generated(data: bytes) -> bool:
    """The chat stream's first chunk (the assistant role, no content, no finish reason), or a usage chunk
    that counts no completion token (`stream_options.include_usage`)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list):
        return False
    usage = doc.get("usage")
    if not choices:
        return isinstance(usage, dict) and usage.get("completion_tokens") == 0
    if usage:
        return False
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict) or choice.get("finish_reason") is not None:
            return False
        if "role" not in delta or set(delta) - {"role", "content"} or delta.get("content"):
            return False
    return True
