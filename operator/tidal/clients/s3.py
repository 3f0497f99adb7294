"""Files and batch progress in an S3-compatible bucket: the same five operations as DirectoryStorage
(batches/storage.py), for gateways that share no volume or run on several nodes.

S3 has no append, and rewriting a results file for every answered request would copy 50,000 lines
50,000 times. So an append is a new small object, a segment, `<name>.d/<seq>`; reading the name joins
its segments in order. Every 256 segments are folded into one range object `<name>.d/<first>-<last>`,
written before the segments it covers are deleted: a kill between the two leaves segments that reads
skip (the range covers them), never a line twice. A 2,000-request batch's output is then 7 range
objects and up to 255 segments, read in one listing and at most 262 GETs.

Endpoint, region and credentials come the way every AWS SDK reads them: AWS_ENDPOINT_URL (for a
non-AWS server), AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an instance role.
The methods block: callers on the event loop run them in a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from ..streams import READ_CHUNK, split_lines

FOLD_AFTER = 256
_SEQ = 12  # digits: sorted as text = sorted as numbers


def _segment(key: str) -> tuple[int, int] | None:
    """(first, last) sequence numbers an object under `<name>.d/` holds, None for anything else."""
    tail = key.rsplit("/", 1)[-1]
    first, _, last = tail.partition("-")
    if not (first.isdigit() and (not last or last.isdigit())):
        return None
    return int(first), int(last or first)


def _live(parts: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """The parts to read, in order: those no wider range covers (left by a kill during a fold)."""
    widest_first = sorted(parts, key=lambda p: (p[1], -(p[2] - p[1])))
    out, reached = [], -1
    for key, first, last in widest_first:
        if first > reached:
            out.append((key, first, last))
            reached = last
    return out


class S3Storage:
    def __init__(self, url: str, client=None):
        """url: `s3://bucket` or `s3://bucket/prefix`."""
        if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
            raise ValueError(f"batch storage {url!r}: expected s3://bucket or s3://bucket/prefix")
        self.bucket, _, prefix = url[5:].partition("/")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if client is None:
            import boto3
            client = boto3.client("s3")
        self.s3 = client
        self._next: dict[str, int] = {}  # name -> next segment number, for names appended to since start
        self._lock = threading.Lock()

    def _key(self, name: str) -> str:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad object name {name!r}")
        return self.prefix + name

    def _keys(self, prefix: str, delimiter: str | None = None) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, **({"Delimiter": delimiter} if delimiter else {}))
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def _read(self, key: str) -> bytes | None:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None

    def _parts(self, name: str) -> list[tuple[str, int, int]]:
        parts = []
        for key in self._keys(self._key(name) + ".d/"):
            span = _segment(key)
            if span is not None:
                parts.append((key, *span))
        return parts

    def put(self, name: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)
        stale = [k for k, _, _ in self._parts(name)]
        if stale:  # what was appended before is replaced too, as a file written over is
            self._delete(stale)
            self._next.pop(name, None)

    def append(self, name: str, data: bytes) -> None:
        with self._lock:  # one writer per name in this process: numbers stay in order
            if name not in self._next:
                parts = self._parts(name)
                self._next[name] = max((last for _, _, last in parts), default=-1) + 1
            seq = self._next[name]
            self._next[name] = seq + 1
        self.s3.put_object(Bucket=self.bucket, Key=f"{self._key(name)}.d/{seq:0{_SEQ}d}", Body=data)
        if (seq + 1) % FOLD_AFTER == 0:
            self._fold(name, seq)

    def _fold(self, name: str, upto: int) -> None:
        """Fold each whole block of FOLD_AFTER single segments up to `upto`. Appends run in several
        threads, so a block's last segment may land before others of it: a block not yet whole is folded
        at a later boundary."""
        blocks: dict[int, list[tuple[str, int, int]]] = {}
        for part in _live(self._parts(name)):
            if part[1] == part[2] and part[2] <= upto:
                blocks.setdefault(part[1] // FOLD_AFTER, []).append(part)
        for block, singles in sorted(blocks.items()):
            if len(singles) < FOLD_AFTER:
                continue
            first, last = block * FOLD_AFTER, block * FOLD_AFTER + FOLD_AFTER - 1
            pieces = [self._read(key) for key, _, _ in singles]
            if any(p is None for p in pieces):
                continue  # another thread folded this block meanwhile
            data = b"".join(pieces)
            self.s3.put_object(Bucket=self.bucket, Body=data,
                               Key=f"{self._key(name)}.d/{first:0{_SEQ}d}-{last:0{_SEQ}d}")
            self._delete([key for key, _, _ in singles])

    def writer(self, name: str) -> "_MultipartWriter":
        return _MultipartWriter(self, self._key(name))

    def lines(self, name: str) -> Iterator[bytes | None] | None:
        chunks = self.chunks(name)
        return None if chunks is None else split_lines(chunks)

    def chunks(self, name: str) -> Iterator[bytes] | None:
        """The object's bytes, streamed from the bucket (then any appended segments'), never held whole."""
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
        except self.s3.exceptions.NoSuchKey:
            body = None
        parts = _live(self._parts(name))
        if body is None and not parts:
            return None

        def chunks():
            if body is not None:
                yield from body.iter_chunks(READ_CHUNK)
            for key, _, _ in parts:
                yield self._read(key) or b""
        return chunks()

    def get(self, name: str) -> bytes | None:
        whole = self._read(self._key(name))
        parts = _live(self._parts(name))
        if not parts:
            return whole
        return (whole or b"") + b"".join(self._read(key) or b"" for key, _, _ in parts)

    def names(self, prefix: str) -> list[str]:
        """Object names directly under `prefix` (a folder), sorted."""
        folder = self._key(prefix.rstrip("/")) + "/"
        strip = len(self.prefix)
        return sorted(k[strip:] for k in self._keys(folder, delimiter="/")
                      if not k.rsplit("/", 1)[-1].startswith("."))

    def delete(self, name: str) -> bool:
        existed = self._read(self._key(name)) is not None
        parts = [k for k, _, _ in self._parts(name)]
        self._delete([self._key(name), *parts])
        self._next.pop(name, None)
        return existed or bool(parts)

    def _delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            self.s3.delete_objects(Bucket=self.bucket,
                                   Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})


# S3 takes parts of at least 5 MiB (but the last); 8 MiB keeps a 200 MB upload to 25 parts and the writer's
# memory to one part.
PART_BYTES = 8 << 20


class _MultipartWriter:
    """An object uploaded in parts as it is written: a small one in one PUT, a large one as a multipart upload
    that becomes visible, whole, only when completed (an aborted one leaves nothing under the name)."""

    def __init__(self, storage: S3Storage, key: str):
        self.storage, self.key = storage, key
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict] = []

    def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= PART_BYTES:
            self._send_part()

    def _send_part(self) -> None:
        s3, bucket = self.storage.s3, self.storage.bucket
        if self.upload_id is None:
            self.upload_id = s3.create_multipart_upload(Bucket=bucket, Key=self.key)["UploadId"]
        number = len(self.parts) + 1
        etag = s3.upload_part(Bucket=bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number,
                              Body=bytes(self.buffer))["ETag"]
        self.parts.append({"ETag": etag, "PartNumber": number})
        self.buffer.clear()

    def commit(self) -> None:
        s3, bucket = self.storage.s3, self.storage.bucket
        if self.upload_id is None:
            s3.put_object(Bucket=bucket, Key=self.key, Body=bytes(self.buffer))
            return
        if self.buffer:
            self._send_part()
        s3.complete_multipart_upload(Bucket=bucket, Key=self.key, UploadId=self.upload_id,
                                     MultipartUpload={"Parts": self.parts})

    def abort(self) -> None:
        if self.upload_id is not None:
            self.storage.s3.abort_multipart_upload(Bucket=self.storage.bucket, Key=self.key, UploadId=self.upload_id)
        self.buffer.clear()
