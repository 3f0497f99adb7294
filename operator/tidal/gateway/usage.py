"""Tokens used, read from the engine's answers, streamed or not.

A non-streamed OpenAI answer carries `usage`. A streamed one carries it only when the request asked
for `stream_options: {"include_usage": true}`: then the last event before `[DONE]` has empty
`choices` and the usage. When the client did not ask, the gateway asks on its behalf (so that every
request is metered) and removes that extra event from what the client receives: the client sees
exactly the stream it asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

USAGE_MARK = b'"prompt_tokens"'  # present only in events that carry usage: the rest pass unparsed


@dataclass
class Usage:
    prompt: int = 0
    completion: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def _usage(obj) -> Usage | None:
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens") or 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


def from_answer(body: bytes) -> Usage | None:
    """Usage of a complete JSON answer (chat, completion, embedding, response), if it says."""
    if USAGE_MARK not in body and b'"input_tokens"' not in body:
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    found = _usage(obj)
    if found is None and isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
        usage = obj["usage"]  # the Responses API names them input/output tokens
        if isinstance(usage.get("input_tokens"), int) and isinstance(usage.get("output_tokens"), int):
            found = Usage(usage["input_tokens"], usage["output_tokens"])
    return found


def ask_for_stream_usage(payload: dict) -> bool:
    """Add include_usage to a streamed request that lacks it. True when it was added (strip it later)."""
    if not payload.get("stream"):
        return False
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        return False
    payload["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return True


class StreamMeter:
    """Fed the raw bytes of a server-sent event stream; returns what the client should get."""

    def __init__(self, strip_usage_event: bool):
        self.strip = strip_usage_event
        self.usage: Usage | None = None
        self._partial = b""

    def feed(self, chunk: bytes) -> bytes:
        # Whole events only: an event is passed on once its blank line arrived (engines write one
        # event per write, so this delays nothing), and the one to strip is never half sent.
        data = self._partial + chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._partial = data
            return b""
        complete, self._partial = data[:end + 2], data[end + 2:]
        if USAGE_MARK not in complete:
            return complete
        out = []
        for event in complete.split(b"\n\n")[:-1]:
            if USAGE_MARK in event:
                payload = event.split(b"data:", 1)[-1].strip()
                try:
                    obj = json.loads(payload)
                except ValueError:
                    obj = None
                usage = _usage(obj)
                if usage is not None:
                    self.usage = usage
                    if self.strip and not obj.get("choices"):
                        continue  # the event we asked for on the client's behalf
            out.append(event + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._partial = self._partial, b""
        return rest
