"""The Files and Batch APIs put together for one gateway: storage, the API's routes, and the runner that
sends each batch's requests back through the gateway's front door."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from .api import BatchApi
from .deferred import DeferredStore
from .files import FileStore
from .records import BatchStore
from .runner import BatchRunner
from .sender import GatewaySender
from .storage import DirectoryStorage


class BatchService:
    def __init__(self, gateway, directory: str | Path, front_door: str, concurrency: int = 16):
        storage = DirectoryStorage(directory)
        self.files, self.batches = FileStore(storage), BatchStore(storage)
        self.sender = GatewaySender(front_door)
        gateway.internal_token = self.sender.token
        self.deferred = DeferredStore(storage)
        self.runner = BatchRunner(self.files, self.batches, self.sender, concurrency=concurrency,
                                  deferred=self.deferred, places=gateway.batch_places)
        self.api = BatchApi(gateway, self.files, self.batches, self.runner, self.deferred)
        gateway.defer = self.api.defer  # `Prefer: respond-async` requests are accepted here
        self._task: asyncio.Task | None = None

    def add_routes(self, app: web.Application) -> None:
        self.api.add_routes(app)

    def start(self) -> None:
        self._task = asyncio.create_task(self.runner.run_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.runner.close()
        await self.sender.close()
