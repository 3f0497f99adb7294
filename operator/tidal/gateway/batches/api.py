"""`/v1/files` and `/v1/batches` on the gateway, as OpenAI serves them, for the gateway's API keys: a key
sees only its own files and batches (another key's id answers 404, as one that never existed)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ... import strict_json
from .. import errors
from .deferred import DeferredStore
from .files import MAX_FILE_BYTES, FileStore
from .inputs import ENDPOINTS, MAX_REQUESTS
from .records import FINAL, WINDOW_S, BatchStore
from .runner import BatchRunner

UPLOAD_PURPOSES = ("batch",)
ANONYMOUS = "-"  # the owner of everything when API keys are off


def _bad(message: str, param: str | None = None, code: str | None = None) -> web.Response:
    return errors.openai_error(400, message, "invalid_request_error", code, param)


class _Refused(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


def _missing(what: str, object_id: str) -> web.Response:
    return errors.openai_error(404, f"No such {what}: '{object_id}'.", "invalid_request_error", None, "id")


def _page(request: web.Request, objects: list[dict]) -> web.Response:
    """OpenAI's list shape, newest first unless `order=asc`, after `after`, at most `limit`."""
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        return _bad(f"limit must be an integer from 1 to 10000, not {request.query['limit']!r}", "limit")
    if not 1 <= limit <= 10_000:
        return _bad(f"limit must be from 1 to 10000, not {limit}", "limit")
    objects = objects if request.query.get("order") == "asc" else objects[::-1]
    after = request.query.get("after")
    if after:
        ids = [o["id"] for o in objects]
        objects = objects[ids.index(after) + 1:] if after in ids else []
    page = objects[:limit]
    return web.json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                              "last_id": page[-1]["id"] if page else None, "has_more": len(objects) > limit})


class BatchApi:
    def __init__(self, gateway, files: FileStore, batches: BatchStore, runner: BatchRunner,
                 deferred: DeferredStore | None = None):
        self.gateway, self.files, self.batches, self.runner = gateway, files, batches, runner
        self.deferred = deferred

    def add_routes(self, app: web.Application) -> None:
        for method, path, handler in (
                ("POST", "/v1/files", self.upload), ("GET", "/v1/files", self.list_files),
                ("GET", "/v1/files/{id}", self.get_file), ("GET", "/v1/files/{id}/content", self.file_content),
                ("DELETE", "/v1/files/{id}", self.delete_file), ("POST", "/v1/batches", self.create_batch),
                ("GET", "/v1/batches", self.list_batches), ("GET", "/v1/batches/{id}", self.get_batch),
                ("POST", "/v1/batches/{id}/cancel", self.cancel_batch), ("GET", "/v1/async/{id}", self.get_deferred)):
            app.router.add_route(method, path, self._as_owner(handler))

    def _as_owner(self, handler):
        """The handler, called with the API key's name once the request's key is checked."""
        async def route(request: web.Request) -> web.Response:
            owner = self._owner(request)
            if isinstance(owner, web.Response):
                return owner
            return await handler(request, owner)
        return route

    def _owner(self, request: web.Request) -> str | web.Response:
        keys = self.gateway.keys
        if keys is None:
            return ANONYMOUS
        header = request.headers.get("Authorization")
        key = keys.authenticate(header)
        if key is None:
            return errors.missing_key() if not header else errors.wrong_key()
        return key.id

    # ---- files ---------------------------------------------------------------------------------------
    async def upload(self, request: web.Request, owner: str) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            return _bad("upload a file as multipart/form-data with fields 'file' and 'purpose'", "file")
        try:
            return await self._upload(request, owner)
        except ValueError as err:  # aiohttp's multipart reader: no boundary, a broken part
            return _bad(f"the upload is not valid multipart/form-data: {str(err)[:200]}", "file")

    async def _upload(self, request: web.Request, owner: str) -> web.Response:
        """The file goes to storage as it arrives, a megabyte at a time: a 200 MB upload never sits in memory."""
        reader = await request.multipart()
        purpose, obj = None, None
        async for part in reader:
            if part.name == "purpose":
                raw = b""
                while chunk := await part.read_chunk(256):
                    raw += chunk
                    if len(raw) > 256:
                        return _bad("purpose is longer than 256 bytes; supported: " + ", ".join(UPLOAD_PURPOSES),
                                    "purpose")
                purpose = raw.decode(errors="replace").strip()
            elif part.name == "file" and obj is None:
                upload = self.files.begin(owner, part.filename or "upload.jsonl", purpose or "batch")
                try:
                    while chunk := await part.read_chunk(1 << 20):
                        await asyncio.to_thread(upload.write, chunk)
                        if upload.bytes > MAX_FILE_BYTES:
                            raise _Refused(f"the file is larger than {MAX_FILE_BYTES // (1 << 20)} MB, the most a "
                                           "batch input may be", "file")
                        if upload.line_count > MAX_REQUESTS:
                            raise _Refused(f"the file has more than {MAX_REQUESTS:,} lines; a batch input may have "
                                           f"at most {MAX_REQUESTS:,} requests", "file")
                except _Refused as refused:
                    await asyncio.to_thread(upload.abort)
                    return _bad(refused.message, refused.param)
                except BaseException:
                    await asyncio.to_thread(upload.abort)
                    raise
                obj = upload
        if obj is None:
            return _bad("no 'file' field in the upload", "file")
        if purpose not in UPLOAD_PURPOSES:
            await asyncio.to_thread(obj.abort)
            return _bad(f"purpose {purpose!r} is not supported here; supported: {', '.join(UPLOAD_PURPOSES)}",
                        "purpose")
        obj.purpose = purpose
        return web.json_response(await asyncio.to_thread(obj.commit))

    async def list_files(self, request: web.Request, owner: str) -> web.Response:
        return _page(request, await asyncio.to_thread(self.files.list, owner, request.query.get("purpose")))

    async def get_file(self, request: web.Request, owner: str) -> web.Response:
        obj = await asyncio.to_thread(self.files.get, owner, request.match_info["id"])
        return web.json_response(obj) if obj else _missing("file", request.match_info["id"])

    async def file_content(self, request: web.Request, owner: str) -> web.StreamResponse:
        """Streamed a megabyte at a time, the bytes as stored: a 200 MB file is never held."""
        chunks = await asyncio.to_thread(self.files.chunks, owner, request.match_info["id"])
        if chunks is None:
            return _missing("file", request.match_info["id"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        while chunk := await asyncio.to_thread(next, chunks, b""):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def delete_file(self, request: web.Request, owner: str) -> web.Response:
        file_id = request.match_info["id"]
        if not await asyncio.to_thread(self.files.delete, owner, file_id):
            return _missing("file", file_id)
        return web.json_response({"id": file_id, "object": "file", "deleted": True})

    # ---- batches -------------------------------------------------------------------------------------
    async def create_batch(self, request: web.Request, owner: str) -> web.Response:
        try:
            spec = strict_json.loads(await request.read())
        except strict_json.BadJson as err:
            return _bad(f"the request body is not acceptable JSON: {err}")
        if not isinstance(spec, dict):
            return _bad("the request body must be a JSON object")
        endpoint, window = spec.get("endpoint"), spec.get("completion_window")
        if endpoint not in ENDPOINTS:
            return _bad(f"endpoint {endpoint!r} is not supported; supported: {', '.join(ENDPOINTS)}", "endpoint")
        if window not in WINDOW_S:
            return _bad(f"completion_window {window!r} is not supported; supported: {', '.join(WINDOW_S)}",
                        "completion_window")
        metadata = spec.get("metadata")
        if metadata is not None and not (isinstance(metadata, dict) and len(metadata) <= 16 and all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                for k, v in metadata.items())):
            return _bad("metadata must be at most 16 string pairs (keys up to 64, values up to 512 characters)",
                        "metadata")
        file_id = spec.get("input_file_id")
        found = await asyncio.to_thread(self.files.get, owner, file_id) if isinstance(file_id, str) else None
        if found is None:
            return _missing("file", str(file_id))
        if found["purpose"] != "batch":
            return _bad(f"file {file_id} has purpose {found['purpose']!r}; a batch's input needs purpose 'batch'",
                        "input_file_id")
        batch = await asyncio.to_thread(self.batches.create, owner, file_id, endpoint, window, metadata)
        response = web.json_response(batch)  # before the runner changes it
        self.runner.start(owner, batch)
        return response

    async def list_batches(self, request: web.Request, owner: str) -> web.Response:
        return _page(request, await asyncio.to_thread(self.batches.list, owner))

    async def get_batch(self, request: web.Request, owner: str) -> web.Response:
        batch = await asyncio.to_thread(self.batches.get, owner, request.match_info["id"])
        return web.json_response(batch) if batch else _missing("batch", request.match_info["id"])

    async def cancel_batch(self, request: web.Request, owner: str) -> web.Response:
        batch = await asyncio.to_thread(self.batches.get, owner, request.match_info["id"])
        if batch is None:
            return _missing("batch", request.match_info["id"])
        if batch["status"] in FINAL:
            return errors.openai_error(409, f"Cannot cancel a batch with status {batch['status']!r}.",
                                       "invalid_request_error", None, "id")
        return web.json_response(await self.runner.cancel(owner, batch))

    # ---- Prefer: respond-async -----------------------------------------------------------------------
    async def defer(self, owner: str, path: str, body: bytes) -> web.Response:
        """Accept a request the gateway has authenticated, authorised and admitted: 202 and where to poll."""
        if not path.startswith("/v1/"):
            return _bad("only OpenAI requests (/v1/...) can be answered asynchronously")
        try:
            payload = strict_json.loads(body)
        except strict_json.BadJson as err:
            return _bad(f"the request body is not acceptable JSON: {err}")
        if not isinstance(payload, dict):
            return _bad("the request body must be a JSON object")
        if payload.get("stream"):
            return _bad("a streamed request cannot be answered asynchronously; leave out 'stream' or "
                        "'Prefer: respond-async'", "stream")
        record = await asyncio.to_thread(self.deferred.create, owner, path, payload)
        self.runner.start_deferred(owner, record, payload)
        location = f"/v1/async/{record['id']}"
        return web.json_response(record, status=202, headers={"Location": location, "Retry-After": "1",
                                                              "Preference-Applied": "respond-async"})

    async def get_deferred(self, request: web.Request, owner: str) -> web.Response:
        record = await asyncio.to_thread(self.deferred.get, owner, request.match_info["id"])
        if record is None:
            return _missing("async request", request.match_info["id"])
        headers = {"Retry-After": "1"} if record["status"] in ("queued", "in_progress") else None
        return web.json_response(record, headers=headers)
