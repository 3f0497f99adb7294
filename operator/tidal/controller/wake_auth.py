"""Who may call the operator's wake endpoint: only the gateway. A wake-up starts GPUs, so an open endpoint
would let any pod in the cluster spend them.

The gateway proves who it is with a token of its own ServiceAccount, projected into its pod for one audience
(`tidal.dev/wake`), and the operator asks the apiserver about it (a TokenReview). Chosen over a shared secret
that the chart generates because nothing is copied or rotated by hand: the kubelet refreshes the token every
hour, a token for this audience is useless against the apiserver or anything else, and the chart renders the
same bytes every time (a random Secret in the chart changes on every `helm template`, which GitOps tools
then fight over). One review per token, remembered for REMEMBER_S: a wake-up storm costs the apiserver one
call a minute. Rejected tokens are not remembered (memory stays bounded whatever a caller sends); at most
MAX_REVIEWS_AT_ONCE reviews run together, so a flood of made-up tokens cannot flood the apiserver.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict

log = logging.getLogger("tidal.operator")
AUDIENCE = "tidal.dev/wake"
REMEMBER_S = 60.0
REMEMBERED_AT_MOST = 64  # tokens of a few gateway replicas, each renewed hourly
MAX_REVIEWS_AT_ONCE = 2


class WakeAuth:
    """review(token) -> the apiserver's TokenReview status (a dict); callers: allowed ServiceAccounts as
    'namespace/name'."""

    def __init__(self, review, callers: list[str], clock=time.monotonic):
        self.review, self.clock = review, clock
        self.usernames = {f"system:serviceaccount:{c.replace('/', ':', 1)}" for c in callers}
        self._known: OrderedDict[bytes, float] = OrderedDict()  # token digest -> remembered until
        self._reviews = asyncio.Semaphore(MAX_REVIEWS_AT_ONCE)

    async def refusal(self, authorization: str | None) -> tuple[int, str] | None:
        """None when the caller may wake services; else (HTTP status, why) to answer with."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return 401, ("the wake endpoint needs 'Authorization: Bearer <token>': a token of the gateway's "
                         f"ServiceAccount for the audience {AUDIENCE}")
        digest = hashlib.sha256(token.encode()).digest()
        now = self.clock()
        if self._known.get(digest, 0.0) > now:
            return None
        async with self._reviews:
            try:
                status = await self.review(token)
            except Exception as err:  # the apiserver unreachable: refuse, and say it is not the caller's fault
                log.warning("wake call: the token could not be reviewed: %s", err)
                return 503, "the operator could not verify the token with the apiserver; try again"
        if not status.get("authenticated") or AUDIENCE not in (status.get("audiences") or [AUDIENCE]):
            return 401, f"the token is not valid for the audience {AUDIENCE}"
        username = (status.get("user") or {}).get("username", "")
        if username not in self.usernames:
            log.warning("wake call refused: %s is not the gateway (%s)", username, ", ".join(sorted(self.usernames)))
            return 403, f"{username} may not wake services; only {', '.join(sorted(self.usernames))} may"
        self._known[digest] = now + REMEMBER_S
        self._known.move_to_end(digest)
        while len(self._known) > REMEMBERED_AT_MOST:
            self._known.popitem(last=False)
        return None
