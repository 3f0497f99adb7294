"""Keys and limits: who is calling, and whether that key may make this request now.

A caller is an API key (`Authorization: Bearer <key>`, keys.py), or the batch runner acting for a batch's
owner (the gateway's own internal token plus the owner's key name: batches/sender.py). Admission counts the
key's requests and reserves its tokens (ratelimits.py); the accounting settles the reservation on the answer.
"""

from __future__ import annotations

import hmac
import time

from aiohttp import web

from . import errors
from .call import Call
from .keys import ON_BEHALF_HEADER, ApiKey, KeyRing
from .ratelimits import RateLimiter


class Admission:
    def __init__(self, keys: KeyRing | None, limiter: RateLimiter):
        self.keys = keys  # None: API keys off (a trusted mesh); the default is on
        self.limiter = limiter
        self.internal_token: str | None = None  # the batch runner's (batches/sender.py)

    def is_internal(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return (self.internal_token is not None and header[:7].lower() == "bearer "
                and hmac.compare_digest(header[7:].strip().encode(), self.internal_token.encode()))

    def caller(self, request: web.Request, internal: bool) -> ApiKey | None | web.Response:
        """The caller's key (None with keys off), or the error a wrong or missing key gets. The batch runner
        acts as the batch's owner; a revoked owner's requests fail like anyone's."""
        if self.keys is None:
            return None
        header = request.headers.get("Authorization")
        key = self.keys.get(request.headers.get(ON_BEHALF_HEADER, "")) if internal else self.keys.authenticate(header)
        if key is None:
            return errors.missing_key() if not header else errors.wrong_key()
        return key

    def key_of(self, authorization: str | None) -> ApiKey | None | web.Response:
        """The key an Authorization header presents (None with keys off), or the error."""
        if self.keys is None:
            return None
        key = self.keys.authenticate(authorization)
        if key is None:
            return errors.missing_key() if not authorization else errors.wrong_key()
        return key

    def admit(self, call: Call) -> web.Response | None:
        """Within the key's limits: the call carries its rate-limit headers and token reservation. Else the 429."""
        verdict = self.limiter.admit(call.key, time.monotonic(), call.tokens_reserved)
        if not verdict.admitted:
            limit = verdict.headers[f"x-ratelimit-limit-{verdict.which}"]
            return errors.rate_limited(verdict.which, limit, verdict.retry_after_s, verdict.headers)
        call.headers, call.reservation = verdict.headers, verdict.reservation
        return None
