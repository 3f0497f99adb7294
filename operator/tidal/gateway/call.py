"""One request as the gateway resolved it, and the bounds the gateway holds requests within."""

from __future__ import annotations

from dataclasses import dataclass

from .keys import ApiKey
from .usage import StreamMeter, Usage


@dataclass
class Limits:
    max_pending: int = 1000  # requests held per service (no ready replica, or all of them busy)
    hold_timeout_s: float = 300.0  # then 503 with Retry-After
    max_body_bytes: int = 16 * 2**20
    keepalive_s: float = 15.0  # a held streamed request: its answer begins, and an SSE comment every this long
    load_report_s: float = 1.0  # the load report to the operator (load_report.py); 0: none


@dataclass
class Call:
    """One request as the gateway resolved it."""
    service: tuple[str, str]
    path: str  # what goes upstream
    body: bytes
    key: ApiKey | None
    model: str  # served name, for usage ("-" when unknown)
    headers: dict[str, str]  # added to the answer (rate-limit headers)
    meter: StreamMeter | None = None  # set for streamed answers that are metered
    usage: Usage | None = None  # of a complete answer
    arrived: float = 0.0  # time.monotonic() at arrival
    held_s: float = 0.0  # how long it waited for a replica
    woke: bool = False  # it found the service without any replica (it waited for a cold start)
    tokens_reserved: int = 0  # what the rate limiter holds for it until the answer says what was used
    reservation: object = None  # ratelimits.Reservation, settled in the gateway's accounting
    prefix_key: str | None = None  # with spec.routing.policy prefix: the key of the prompt's leading text
