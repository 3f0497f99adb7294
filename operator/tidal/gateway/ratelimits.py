"""Requests and tokens per minute for each API key: fixed one-minute windows.

A key's window starts with its first request and lasts 60 s; within it at most `requests_per_minute`
requests are admitted. Tokens are reserved at admission (the request's `max_tokens`, or what the endpoint
generates when it is left out, plus a quarter of the body's bytes for the prompt) and settled when the answer
says how many were used. Without the reservation, 100 concurrent long requests all passed a 10,000-token
limit: each was admitted before any had answered. Fixed windows make "at most N per minute" exact, which is
what a user reads the limit as. Memory: one small record per key.

Several gateway replicas: each admits its share of every limit, limit // share (at least 1), so together
they never admit more than the limit (plus share - 1 where the limit is smaller than the share). The error
goes the other way: when one key's traffic all reaches one replica (one keep-alive connection), that key
gets limit // share a minute. Chosen over a shared store because it needs none, adds no hop to a request,
and errs on the side the limit exists for.

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
    reservation: "Reservation | None" = None  # tokens held for an admitted request, settled after its answer


@dataclass
class Reservation:
    window: _Window
    tokens: int


def _reset(seconds: float) -> str:
    return f"{max(0.0, seconds):.0f}s" if seconds >= 1 else f"{max(0.0, seconds) * 1000:.0f}ms"


class RateLimiter:
    def __init__(self, share: int = 1) -> None:
        self._windows: dict[str, _Window] = {}
        self.share = max(1, share)  # gateway replicas sharing each key's limits

    def _here(self, limit: int | None) -> int | None:
        return None if limit is None else max(1, limit // self.share)

    def _window(self, key: ApiKey, now: float) -> _Window:
        window = self._windows.get(key.id)
        if window is None or now - window.started >= WINDOW_S:
            window = self._windows[key.id] = _Window(now)
        return window

    def forget(self, key_id: str) -> None:
        self._windows.pop(key_id, None)

    def admit(self, key: ApiKey, now: float, tokens: int = 0) -> Verdict:
        """Admit one request that may use up to `tokens` (count it, reserve them) or refuse it, with the
        headers to send either way. A request larger than the whole limit is admitted into an empty window,
        alone: refusing it forever would be worse than one window over."""
        rpm, tpm = self._here(key.requests_per_minute), self._here(key.tokens_per_minute)
        if rpm is None and tpm is None:
            return Verdict(True, {})
        window = self._window(key, now)
        reset_in = window.started + WINDOW_S - now
        refused = ""
        if rpm is not None and window.requests >= rpm:
            refused = "requests"
        elif tpm is not None and window.tokens > 0 and (window.tokens >= tpm or window.tokens + tokens > tpm):
            refused = "tokens"
        reservation = None
        if not refused:
            window.requests += 1
            if tpm is not None:
                window.tokens += tokens
                reservation = Reservation(window, tokens)
        headers = {}
        if rpm is not None:
            headers.update({"x-ratelimit-limit-requests": str(rpm),
                            "x-ratelimit-remaining-requests": str(max(0, rpm - window.requests)),
                            "x-ratelimit-reset-requests": _reset(reset_in)})
        if tpm is not None:
            headers.update({"x-ratelimit-limit-tokens": str(tpm),
                            "x-ratelimit-remaining-tokens": str(max(0, tpm - window.tokens)),
                            "x-ratelimit-reset-tokens": _reset(reset_in)})
        return Verdict(not refused, headers, max(1, math.ceil(reset_in)) if refused else 0, refused, reservation)

    def settle(self, reservation: Reservation | None, used: int) -> None:
        """The answer used `used` tokens (0 when it failed): the reservation becomes that. A window that has
        ended keeps what it counted."""
        if reservation is not None:
            window = reservation.window
            window.tokens = max(0, window.tokens - reservation.tokens + used)
            reservation.tokens = used

    def charge_tokens(self, key: ApiKey, tokens: int, now: float) -> None:
        """Tokens used without an admission (a batch's requests, which pace themselves): they count too."""
        if key.tokens_per_minute is not None and tokens > 0:
            self._window(key, now).tokens += tokens
