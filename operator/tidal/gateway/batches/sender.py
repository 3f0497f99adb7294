"""How the batch runner sends a request: to the gateway's own front door on loopback, as the batch's owner.
The gateway accepts a process-local token (random, never written anywhere) together with the owner's key
name; to it, the request is that key's, so its model permissions, usage and wake-ups apply unchanged."""

from __future__ import annotations

import json
import secrets

import aiohttp

from ..keys import ON_BEHALF_HEADER


class GatewaySender:
    def __init__(self, base_url: str, timeout_s: float = 900.0):
        self.base_url = base_url.rstrip("/")
        self.token = secrets.token_urlsafe(32)
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, owner: str, url: str, body: dict) -> tuple[int, bytes, str, float | None]:
        """(status, body, request id, the seconds its Retry-After asks to wait, if it has one)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self.token}", ON_BEHALF_HEADER: owner,
                   "Content-Type": "application/json"}
        async with self._session.post(self.base_url + url, data=json.dumps(body), headers=headers) as response:
            data = await response.read()
            request_id = response.headers.get("x-request-id") or f"req_{secrets.token_hex(12)}"
            return response.status, data, request_id, retry_after_s(response.headers.get("Retry-After"))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def retry_after_s(header: str | None) -> float | None:
    """Retry-After in seconds (the gateway sends seconds; an HTTP date or nonsense counts as none)."""
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None
