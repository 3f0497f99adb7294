"""The Files and Batch APIs put together for one gateway: storage, the API's routes, and the runner that
sends each batch's requests back through the gateway's front door."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from .api import BatchApi
from .deferred import DeferredStore
from .files import FileStore
from .records import BatchStore
from .runner import BatchRunner
from .sender import GatewaySender
from .storage import open_storage

log = logging.getLogger("tidal.gateway.batches")


class BatchService:
    def __init__(self, gateway, storage: str | Path, front_door: str, concurrency: int = 16, mirror=None):
        """storage: a directory or s3://bucket[/prefix]. mirror: a KubeMirror (mirror.py) to publish batches
        as InferenceBatch objects and run those created with kubectl; None without a cluster."""
        storage = open_storage(storage)
        self.files, self.batches = FileStore(storage), BatchStore(storage)
        self.sender = GatewaySender(front_door)
        gateway.admission.internal_token = self.sender.token
        self.deferred = DeferredStore(storage)
        self.runner = BatchRunner(self.files, self.batches, self.sender, concurrency=concurrency,
                                  deferred=self.deferred, places=gateway.batch_door.places,
                                  published=mirror.publish if mirror else None,
                                  enqueued_limit=self._enqueued_limit)
        self.gateway, self.mirror = gateway, mirror
        self._adopting: set[str] = set()
        self.api = BatchApi(gateway, self.files, self.batches, self.runner, self.deferred)
        gateway.batch_door.defer = self.api.defer  # `Prefer: respond-async` requests are accepted here
        self._task: asyncio.Task | None = None
        self._backlog_task: asyncio.Task | None = None

    def _enqueued_limit(self, owner: str) -> int | None:
        key = self.gateway.keys.get(owner) if self.gateway.keys is not None else None
        return key.batch_enqueued_tokens if key is not None else None

    def add_routes(self, app: web.Application) -> None:
        self.api.add_routes(app)

    def start(self) -> None:
        self._task = asyncio.create_task(self.runner.run_forever())
        self._backlog_task = asyncio.create_task(self._export_backlog())
        if self.mirror is not None:
            import threading
            loop = asyncio.get_running_loop()
            threading.Thread(target=self.mirror.watch, args=(loop, self.adopt), daemon=True,
                             name="watch-inferencebatches").start()

    def adopt(self, obj: dict) -> None:
        """An InferenceBatch created with kubectl: run it as the key it names (on the event loop)."""
        name = obj["metadata"]["name"]
        if name not in self._adopting:
            self._adopting.add(name)
            asyncio.create_task(self._adopt(name, obj.get("spec") or {}))

    async def _adopt(self, name: str, raw_spec: dict) -> None:
        from pydantic import ValidationError

        from ...api.batch import InferenceBatchSpec

        def refuse(message: str) -> None:
            log.warning("InferenceBatch %s: %s", name, message)
            return asyncio.to_thread(self.mirror.report, name, {"state": "failed", "message": message})

        try:
            spec = InferenceBatchSpec.model_validate(raw_spec)
        except ValidationError as err:
            return await refuse("; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))
        if any(b.get("inference_batch") == name for _, b in await asyncio.to_thread(self.batches.all)):
            return  # adopted before a restart: its batch runs and publishes itself
        keys = self.gateway.keys
        owner = spec.apiKeySecret if keys is not None else "-"
        if keys is not None and keys.get(owner) is None:
            return await refuse(f"spec.apiKeySecret: there is no API key Secret named {owner!r} in the "
                                f"gateway's namespace {self.mirror.namespace}")
        if await asyncio.to_thread(self.files.get, owner, spec.inputFileId) is None:
            return await refuse(f"spec.inputFileId: no file {spec.inputFileId} uploaded by the key {owner!r} "
                                "(POST /v1/files with purpose batch)")
        batch = await asyncio.to_thread(self.batches.create, owner, spec.inputFileId, spec.endpoint,
                                        spec.completionWindow, None)
        batch["inference_batch"] = name
        await asyncio.to_thread(self.batches.save, owner, batch)
        await asyncio.to_thread(self.mirror.publish, owner, batch)
        self.runner.start(owner, batch)

    async def _export_backlog(self, every_s: float = 1.0) -> None:
        """The runner's unsent requests as the gateway's gauge, per service (a model the catalog does not
        know has no service to scale). A service whose batches are done is dropped from the gauge."""
        gauge, shown = self.gateway.metrics.batch_backlog, set()
        while True:
            now = {}
            for model, n in self.runner.backlog().items():
                entry = self.gateway.catalog.model(model)
                if entry is not None:
                    now[entry.key] = now.get(entry.key, 0) + n
            for key in shown - set(now):
                gauge.remove(*key)
            for key, n in now.items():
                gauge.labels(*key).set(n)
            shown = set(now)
            await asyncio.sleep(every_s)

    async def close(self) -> None:
        for task in (self._task, self._backlog_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.runner.close()
        await self.sender.close()
