"""OpenAI File objects kept in a storage backend, each visible only to the API key that uploaded it (or,
for output files, that owns the batch). `files/<id>.json` is the object, `files/<id>.data` its bytes."""

from __future__ import annotations

import json
import secrets
import time

from .storage import Storage

MAX_FILE_BYTES = 200 * 1024 * 1024  # OpenAI's limit for a batch input file
PURPOSES = ("batch", "batch_output")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


class FileStore:
    def __init__(self, storage: Storage, clock=time.time):
        self.storage, self.clock = storage, clock

    def begin(self, owner: str, filename: str, purpose: str) -> "Upload":
        """A file written as it arrives (blocking calls: run them in a thread), visible once committed."""
        return Upload(self, owner, filename, purpose)

    def chunks(self, owner: str, file_id: str):
        """The file's bytes, streamed (None when this owner has no such file)."""
        return self.storage.chunks(f"files/{file_id}.data") if self.get(owner, file_id) else None

    def lines(self, owner: str, file_id: str):
        """The file's lines, streamed (None when this owner has no such file)."""
        return self.storage.lines(f"files/{file_id}.data") if self.get(owner, file_id) else None

    def _record(self, file_id: str) -> dict | None:
        if not file_id.startswith("file-") or "/" in file_id:
            return None
        raw = self.storage.get(f"files/{file_id}.json")
        return json.loads(raw) if raw else None

    def get(self, owner: str, file_id: str) -> dict | None:
        record = self._record(file_id)
        if record is None or record.pop("owner") != owner:
            return None  # another key's file does not exist for this one
        return record

    def list(self, owner: str, purpose: str | None = None) -> list[dict]:
        out = []
        for name in self.storage.names("files"):
            if name.endswith(".json"):
                record = json.loads(self.storage.get(name) or b"{}")
                if record.get("owner") == owner and (purpose is None or record.get("purpose") == purpose):
                    record.pop("owner")
                    out.append(record)
        return sorted(out, key=lambda f: (f["created_at"], f["id"]))

    def delete(self, owner: str, file_id: str) -> bool:
        if self.get(owner, file_id) is None:
            return False
        self.storage.delete(f"files/{file_id}.data")
        return self.storage.delete(f"files/{file_id}.json")


class Upload:
    """One upload in progress: bytes and lines counted as they pass, so a file past OpenAI's limits is refused
    before it is whole."""

    def __init__(self, store: FileStore, owner: str, filename: str, purpose: str):
        self.store, self.owner, self.filename, self.purpose = store, owner, filename, purpose
        self.id = new_id("file")
        self.bytes = self.lines = 0
        self._ends_with_newline = True
        self._writer = store.storage.writer(f"files/{self.id}.data")

    def write(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        self.lines += chunk.count(b"\n")
        if chunk:
            self._ends_with_newline = chunk.endswith(b"\n")
        self._writer.write(chunk)

    @property
    def line_count(self) -> int:
        return self.lines + (0 if self._ends_with_newline else 1)

    def commit(self) -> dict:
        self._writer.commit()
        obj = {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.store.clock()),
               "filename": self.filename, "purpose": self.purpose, "status": "processed", "expires_at": None}
        self.store.storage.put(f"files/{self.id}.json", json.dumps({**obj, "owner": self.owner}).encode())
        return obj

    def abort(self) -> None:
        self._writer.abort()
