"""Asynchronous single requests (RFC 7240 `Prefer: respond-async`): any OpenAI POST the gateway would serve
is accepted with `202 Accepted`, a `Location` to poll and the request's id, then sent by the batch runner
like one line of a batch and kept with its answer for KEEP_S after it finishes.

`async/<id>.json` holds the request (while it waits) and its answer; only the key that sent it sees it."""

from __future__ import annotations

import json
import time

from .files import new_id
from .storage import Storage

KEEP_S = 24 * 3600  # an answer is kept this long after it is ready, then deleted
OPEN = ("queued", "in_progress")


class DeferredStore:
    def __init__(self, storage: Storage, clock=time.time):
        self.storage, self.clock = storage, clock

    def create(self, owner: str, url: str, body: dict) -> dict:
        record = {"id": new_id("async"), "object": "async_request", "status": "queued", "url": url,
                  "model": body.get("model"), "created_at": int(self.clock()), "completed_at": None,
                  "expires_at": None, "response": None}
        self._save(owner, record, body)
        return record

    def _save(self, owner: str, record: dict, body: dict | None) -> None:
        self.storage.put(f"async/{record['id']}.json", json.dumps({**record, "owner": owner, "body": body}).encode())

    def _load(self, name: str) -> dict:
        return json.loads(self.storage.get(name) or b"{}")

    def get(self, owner: str, request_id: str) -> dict | None:
        if not request_id.startswith("async-") or "/" in request_id:
            return None
        record = self._load(f"async/{request_id}.json")
        if not record or record.pop("owner") != owner:
            return None
        record.pop("body", None)
        return record

    def open_requests(self) -> list[tuple[str, dict, dict]]:
        """(owner, record, body) of every request not answered yet, oldest first."""
        out = []
        for name in self.storage.names("async"):
            record = self._load(name)
            if record.get("status") in OPEN:
                out.append((record.pop("owner"), record, record.pop("body")))
        return sorted(out, key=lambda r: (r[1]["created_at"], r[1]["id"]))

    def answered(self, owner: str, record: dict, status: int, body: dict, request_id: str) -> None:
        now = int(self.clock())
        record.update(status="completed" if status < 400 else "failed", completed_at=now, expires_at=now + KEEP_S,
                      response={"status_code": status, "request_id": request_id, "body": body})
        self._save(owner, record, None)

    def forget_expired(self) -> int:
        gone = 0
        for name in self.storage.names("async"):
            record = self._load(name)
            if record.get("expires_at") and record["expires_at"] <= self.clock():
                gone += self.storage.delete(name)
        return gone
