"""Requests and tokens per minute for each API key: fixed one-minute windows.

A key's window starts with its first request and lasts 60 s; within it at most `requests_per_minute`
requests are admitted, and requests are admitted while fewer than `tokens_per_minute` tokens were
used (tokens are known only once the answer is in, so the request that crosses the limit finishes
and the next one waits). Fixed windows make "at most N per minute" exact, which is what a user reads
the limit as. Memory: one small record per key.

Headers as OpenAI sends them: x-ratelimit-limit-requests, x-ratelimit-remaining-requests,
x-ratelimit-reset-requests (like "12s"), and the same three for tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .keys import ApiKey

WINDOW_S = 60.0


@dataclass
class _Window:
    started: float
    requests: int = 0
    tokens: int = 0


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    headers: dict[str, str]
    retry_after_s: int = 0
    which: str = ""  # "requests" or "tokens" when refused


def _reset(seconds: float) -> str:
    return f"{max(0.0, seconds):.0f}s" if seconds >= 1 else f"{max(0.0, seconds) * 1000:.0f}ms"


class RateLimiter:
    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def _window(self, key: ApiKey, now: float) -> _Window:
        window = self._windows.get(key.id)
        if window is None or now - window.started >= WINDOW_S:
            window = self._windows[key.id] = _Window(now)
        return window

    def forget(self, key_id: str) -> None:
        self._windows.pop(key_id, None)

    def admit(self, key: ApiKey, now: float) -> Verdict:
        """Admit one request (and count it) or refuse it, with the headers to send either way."""
        rpm, tpm = key.requests_per_minute, key.tokens_per_minute
        if rpm is None and tpm is None:
            return Verdict(True, {})
        window = self._window(key, now)
        reset_in = window.started + WINDOW_S - now
        refused = ""
        if rpm is not None and window.requests >= rpm:
            refused = "requests"
        elif tpm is not None and window.tokens >= tpm:
            refused = "tokens"
        if not refused:
            window.requests += 1
        headers = {}
        if rpm is not None:
            headers.update({"x-ratelimit-limit-requests": str(rpm),
                            "x-ratelimit-remaining-requests": str(max(0, rpm - window.requests)),
                            "x-ratelimit-reset-requests": _reset(reset_in)})
        if tpm is not None:
            headers.update({"x-ratelimit-limit-tokens": str(tpm),
                            "x-ratelimit-remaining-tokens": str(max(0, tpm - window.tokens)),
                            "x-ratelimit-reset-tokens": _reset(reset_in)})
        return Verdict(not refused, headers, max(1, math.ceil(reset_in)) if refused else 0, refused)

    def charge_tokens(self, key: ApiKey, tokens: int, now: float) -> None:
        if key.tokens_per_minute is not None and tokens > 0:
            self._window(key, now).tokens += tokens
