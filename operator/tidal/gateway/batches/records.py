"""Batch objects (OpenAI's shape) and their progress, in the storage backend.

`batches/<id>.json` is the batch; `batches/<id>/output.jsonl` and `batches/<id>/errors.jsonl` are its
results as they come, one line per request, appended and flushed one by one. They are the checkpoint: a
runner that restarts reads which custom_ids have a line and sends only the others, so each custom_id
appears exactly once in the output however often the runner is killed. (A request answered but not yet
written when the runner died is sent again: at least once to the model, exactly once in the files.)"""

from __future__ import annotations

import json
import time

from .files import new_id
from .storage import Storage

WINDOW_S = {"24h": 24 * 3600}
FINAL = ("completed", "failed", "expired", "cancelled")


def _lines(data: bytes | None) -> tuple[list[dict], bytes | None]:
    """The complete lines of a results file, and the file cut after its last complete line when a kill
    left half a line at its end (else None)."""
    if not data:
        return [], None
    cut = None
    if not data.endswith(b"\n"):
        data = data[:data.rfind(b"\n") + 1]
        cut = data
    out = []
    for raw in data.splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out, cut


class BatchStore:
    def __init__(self, storage: Storage, clock=time.time):
        self.storage, self.clock = storage, clock

    def create(self, owner: str, input_file_id: str, endpoint: str, window: str, metadata: dict | None) -> dict:
        now = int(self.clock())
        batch = {"id": new_id("batch"), "object": "batch", "endpoint": endpoint, "errors": None,
                 "input_file_id": input_file_id, "completion_window": window, "status": "validating",
                 "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
                 "expires_at": now + WINDOW_S[window], "finalizing_at": None, "completed_at": None,
                 "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": metadata,
                 "model": None}
        self.save(owner, batch)
        return batch

    def save(self, owner: str, batch: dict) -> None:
        self.storage.put(f"batches/{batch['id']}.json", json.dumps({**batch, "owner": owner}).encode())

    def _record(self, batch_id: str) -> dict | None:
        if not batch_id.startswith("batch-") or "/" in batch_id:
            return None
        raw = self.storage.get(f"batches/{batch_id}.json")
        return json.loads(raw) if raw else None

    def get(self, owner: str, batch_id: str) -> dict | None:
        record = self._record(batch_id)
        if record is None or record.pop("owner") != owner:
            return None
        return record

    def all(self) -> list[tuple[str, dict]]:
        """(owner, batch) of every batch, oldest first: what a (re)started runner looks through."""
        out = []
        for name in self.storage.names("batches"):
            if name.endswith(".json"):
                record = json.loads(self.storage.get(name) or b"{}")
                out.append((record.pop("owner", "-"), record))
        return sorted(out, key=lambda ob: (ob[1]["created_at"], ob[1]["id"]))

    def list(self, owner: str) -> list[dict]:
        return [b for o, b in self.all() if o == owner]

    def results(self, batch_id: str) -> tuple[list[dict], list[dict]]:
        """(output lines, error lines) written so far; repairs a line a kill cut in half."""
        out = []
        for which in ("output", "errors"):
            name = f"batches/{batch_id}/{which}.jsonl"
            lines, cut = _lines(self.storage.get(name))
            if cut is not None:
                self.storage.put(name, cut)
            out.append(lines)
        return out[0], out[1]

    def answered(self, batch_id: str) -> tuple[set[str], int, int]:
        """(the custom_ids with a result line, output lines, error lines), streamed: a 50,000-line output is
        never held, only its ids. A line a kill cut in half is repaired first (the rare path that reads the
        files whole)."""
        ids: set[str] = set()
        counts = []
        for which in ("output", "errors"):
            n = 0
            for raw in self.storage.lines(f"batches/{batch_id}/{which}.jsonl") or ():
                try:
                    ids.add(json.loads(raw)["custom_id"])
                    n += 1
                except (ValueError, KeyError, TypeError):
                    self.results(batch_id)  # repairs the cut line
                    return self.answered(batch_id)
            counts.append(n)
        return ids, counts[0], counts[1]

    def result_lines(self, batch_id: str, which: str):
        """A results file's lines, streamed (an empty iterator when there are none)."""
        return self.storage.lines(f"batches/{batch_id}/{which}.jsonl") or iter(())

    def add_result(self, batch_id: str, line: dict, failed: bool) -> None:
        which = "errors" if failed else "output"
        self.storage.append(f"batches/{batch_id}/{which}.jsonl", (json.dumps(line) + "\n").encode())
