"""The gateway's proof, on each wake-up call, that it is the gateway: its ServiceAccount's token for the
audience tidal.dev/wake (the operator checks it: controller/wake_auth.py). In a pod the kubelet projects the
token into a file and renews it before it expires; the file is read again at most every REREAD_S, far inside
the hour a projected token lives (the kubelet renews at 80 % of it)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

IN_POD = Path("/var/run/secrets/tidal.dev/wake/token")  # where the chart projects it
REREAD_S = 60.0


class WakeToken:
    def __init__(self, path: str | Path | None, clock=time.monotonic):
        self.path = Path(path) if path else None
        self.clock = clock
        self._token: str | None = None
        self._read_at = float("-inf")

    @classmethod
    def default(cls, path: str | None) -> "WakeToken":
        """The file named, else the chart's projected token if this runs in such a pod, else none."""
        return cls(path or (IN_POD if IN_POD.exists() else None))

    async def headers(self) -> dict[str, str]:
        if self.path is None:
            return {}
        if self.clock() - self._read_at >= REREAD_S:
            text = await asyncio.to_thread(self.path.read_text)
            self._token, self._read_at = text.strip(), self.clock()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}
