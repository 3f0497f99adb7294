"""Runs batches: validates each new one, sends its requests through the gateway, writes each answer as it
comes (the checkpoint), retries what failed for a reason that may pass, and finalises the output and error
files. Restarted, it resumes every batch that is not final from its checkpoint.

Sending goes through `send(owner, url, body) -> (status, body bytes, request id, Retry-After seconds)`: the
gateway's own front door, as the batch's owner, so a batch for a service at zero holds and wakes it like any
request."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time

from .deferred import DeferredStore
from .files import FileStore
from ..openai_api import tokens_to_reserve
from .inputs import Item, requests, validate
from .records import FINAL, BatchStore

log = logging.getLogger("tidal.gateway.batches")
RETRIED_STATUSES = (408, 429, 500, 502, 503, 504)
# A retry waits what the answer's Retry-After asks, when that is longer than the backoff: the gateway's 429
# (too many requests held) asks 5 s and its 503 for a model still loading 10 s, and retries at 1, 2 and 4 s
# would spend all four attempts inside one such wait. Capped, so a far date cannot park a line for hours.
MAX_RETRY_AFTER_S = 60.0
SAVE_EVERY_S = 1.0  # request_counts in the batch object: at most this stale
MAX_WORKERS = 512  # requests one batch may have in flight, at most (a few replicas' worth of places)
SEND_AHEAD = 256  # requests read from the input ahead of sending: what a batch holds in memory


class BatchRunner:
    def __init__(self, files: FileStore, batches: BatchStore, send, concurrency: int = 16, attempts: int = 4,
                 backoff_s: float = 1.0, clock=time.time, deferred: DeferredStore | None = None, places=None,
                 published=None, enqueued_limit=None):
        self.files, self.batches, self.send, self.deferred = files, batches, send, deferred
        # places(model) -> batch requests the model may have in flight now, None when unknown
        # (gateway.batch_door.places); `_mine` counts ours, from the moment one is decided to its answer
        self.places = places or (lambda model: None)
        self._mine: dict[str, int] = {}
        # published(owner, batch), blocking, after every save: the InferenceBatch mirror (mirror.py)
        self.published = published
        self.slots = asyncio.Semaphore(concurrency)  # requests in flight for all batches together
        self.attempts, self.backoff_s, self.clock = attempts, backoff_s, clock
        self._cancelled: set[str] = set()
        self._running: dict[str, asyncio.Task] = {}
        self._live: dict[str, dict] = {}  # the batches being run: the runner alone writes them
        self._unsent: dict[str, dict[str, int]] = {}  # batch id -> model -> requests not sent yet
        # enqueued_limit(owner) -> tokens the key's unfinished batches may hold, None: no limit
        self.enqueued_limit = enqueued_limit or (lambda owner: None)
        self._enqueued: dict[str, tuple[str, int]] = {}  # batch id -> (owner, tokens it may use)

    def backlog(self) -> dict[str, int]:
        """Requests of running batches not yet sent, by model: demand the autoscaler sees (the gateway
        exports it), so a long batch gets the replicas to finish instead of one replica's spare places."""
        out: dict[str, int] = {}
        for per_model in self._unsent.values():
            for model, n in per_model.items():
                if n > 0:
                    out[model] = out.get(model, 0) + n
        return out

    async def cancel(self, owner: str, batch: dict) -> dict:
        """Cancel a batch that is not final: it stops sending at once, its requests in flight are dropped,
        and what was answered goes to its output file (status cancelling, then cancelled)."""
        batch = self._live.get(batch["id"], batch)
        if batch["status"] in FINAL or batch["status"] == "cancelling":
            return batch
        self._cancelled.add(batch["id"])
        batch.update(status="cancelling", cancelling_at=int(self.clock()))
        await self._save(owner, batch)
        if batch["id"] not in self._running:  # not running here (a restart between create and run): finish it
            self.start(owner, batch)
        return batch

    def start(self, owner: str, batch: dict) -> None:
        """Run a batch just created (through the API or adopted from kubectl), without a storage scan."""
        if batch["status"] not in FINAL and batch["id"] not in self._running:
            self._running[batch["id"]] = asyncio.create_task(self._run(owner, batch))

    def start_deferred(self, owner: str, record: dict, body: dict) -> None:
        """Send a `Prefer: respond-async` request just accepted."""
        if record["id"] not in self._running:
            self._running[record["id"]] = asyncio.create_task(self._run_deferred(owner, dict(record), body))

    async def run_forever(self, rescan_s: float = 60.0) -> None:
        """Resume what storage holds unfinished, then look again every `rescan_s` (new work is started
        directly by start()): reading every record is O(history), a cost paid once a minute rather than
        every few seconds or per async request."""
        while True:
            for owner, batch in await asyncio.to_thread(self.batches.all):
                self.start(owner, batch)
            if self.deferred is not None:
                for owner, record, body in await asyncio.to_thread(self.deferred.open_requests):
                    self.start_deferred(owner, record, body)
                await asyncio.to_thread(self.deferred.forget_expired)
            await asyncio.sleep(rescan_s)

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _save(self, owner: str, batch: dict) -> None:
        await asyncio.to_thread(self.batches.save, owner, batch)
        if self.published is not None:
            await asyncio.to_thread(self.published, owner, batch)

    async def _run(self, owner: str, batch: dict) -> None:
        self._live[batch["id"]] = batch
        try:
            await self._advance(owner, batch)
        except asyncio.CancelledError:
            raise
        except Exception:  # one broken batch must not stop the others: it fails, and says why in the log
            log.exception("batch %s failed", batch["id"])
            batch.update(status="failed", failed_at=int(self.clock()),
                         errors={"object": "list", "data": [{"code": "internal_error", "line": None, "param": None,
                                                             "message": "the batch runner failed; see its log"}]})
            await self._save(owner, batch)
        finally:
            self._running.pop(batch["id"], None)
            self._live.pop(batch["id"], None)
            self._enqueued.pop(batch["id"], None)

    async def _run_deferred(self, owner: str, record: dict, body: dict) -> None:
        """One `Prefer: respond-async` request: sent like a batch line, its answer kept for polling."""
        try:
            async with self.slots:
                item = Item(0, record["id"], record["url"], body)
                line, _ = await self._attempt(owner, item, lambda: False)
            response = line["response"] or {"status_code": 502, "request_id": None,
                                             "body": {"error": {**line["error"], "type": "server_error"}}}
            await asyncio.to_thread(self.deferred.answered, owner, record, response["status_code"], response["body"],
                                    response["request_id"])
        finally:
            self._running.pop(record["id"], None)

    def _lines(self, owner: str, batch: dict):
        """The input's lines, streamed from storage (blocking: iterate in a thread); None when it is gone."""
        return self.files.lines(owner, batch["input_file_id"])

    async def _requests(self, owner: str, batch: dict, skip: set[str]):
        """The input's requests not in `skip`, read and parsed in a worker thread SEND_AHEAD at a time: the
        event loop never parses, and memory holds a few hundred requests, not the whole file."""
        lines = await asyncio.to_thread(self._lines, owner, batch)
        if lines is None:
            return
        source = requests(lines, batch["endpoint"], skip)
        while chunk := await asyncio.to_thread(lambda: list(itertools.islice(source, SEND_AHEAD))):
            for item in chunk:
                yield item

    async def _advance(self, owner: str, batch: dict) -> None:
        validated = None
        if batch["status"] == "validating":
            # Validated as the lines stream past, in a thread: the event loop keeps serving online requests.
            lines = await asyncio.to_thread(self._lines, owner, batch)
            summary = None if lines is None else await asyncio.to_thread(validate, lines, batch["endpoint"])
            problems = summary.problems if summary else [{
                "code": "file_not_found", "line": None, "param": "input_file_id",
                "message": f"the input file {batch['input_file_id']} no longer exists"}]
            if not problems:
                problems = self._over_enqueued_limit(owner, summary.tokens)
            if problems:
                batch.update(status="failed", failed_at=int(self.clock()), errors={"object": "list", "data": problems})
                await self._save(owner, batch)
                return
            self._enqueued[batch["id"]] = (owner, summary.tokens)
            validated = summary  # what is left to send is all of it: no second pass to count it
            models = list(summary.per_model)
            batch.update(status="in_progress", in_progress_at=int(self.clock()),
                         model=models[0] if len(models) == 1 else None,
                         request_counts={"total": summary.total, "completed": 0, "failed": 0})
            await self._save(owner, batch)
        if batch["status"] == "cancelling":
            self._cancelled.add(batch["id"])  # cancelled before a restart: finish cancelling
        if batch["status"] == "in_progress" and batch["id"] not in self._cancelled:
            await self._send_all(owner, batch, validated)
        await self._finalise(owner, batch)

    def _over_enqueued_limit(self, owner: str, tokens: int) -> list[dict]:
        """OpenAI's batch queue limit: a key's unfinished batches may hold so many tokens; a batch that would
        go past it fails at once, saying by how much."""
        limit = self.enqueued_limit(owner)
        held = sum(t for o, t in self._enqueued.values() if o == owner)
        if limit is None or held + tokens <= limit:
            return []
        return [{"code": "token_limit_exceeded", "line": None, "param": None,
                 "message": f"Enqueued token limit reached: this batch may use up to {tokens:,} tokens and this "
                            f"key's unfinished batches hold {held:,}, over its limit of {limit:,} "
                            "(tidal.dev/batch-enqueued-tokens). Try again once those finish."}]

    def _unsent_by_model(self, owner: str, batch: dict, done: set[str]) -> tuple[dict[str, int], int]:
        """Requests not answered yet, by model, and the tokens they may use (blocking: one streamed pass)."""
        out: dict[str, int] = {}
        tokens = 0
        lines = self._lines(owner, batch)
        for item in requests(lines, batch["endpoint"], done) if lines is not None else ():
            out[item.body["model"]] = out.get(item.body["model"], 0) + 1
            tokens += tokens_to_reserve(batch["endpoint"], item.body, len(json.dumps(item.body)))
        return out, tokens

    async def _send_all(self, owner: str, batch: dict, validated=None) -> None:
        """Send what has no result line yet. The input is read once more as it is sent; a batch resumed after
        a restart (validated None) first counts what is left by model, in one more streamed pass."""
        done, completed, failed = await asyncio.to_thread(self.batches.answered, batch["id"])
        counts = batch["request_counts"]
        counts.update(completed=completed, failed=failed)
        if validated is not None and not done:
            unsent, tokens = dict(validated.per_model), validated.tokens
        else:
            unsent, tokens = await asyncio.to_thread(self._unsent_by_model, owner, batch, done)
        self._unsent[batch["id"]] = unsent
        self._enqueued.setdefault(batch["id"], (owner, tokens))  # resumed after a restart: what is left
        todo = sum(unsent.values())
        stop = asyncio.Event()
        saver = asyncio.create_task(self._save_counts(owner, batch, stop))
        queue: asyncio.Queue = asyncio.Queue(maxsize=SEND_AHEAD)
        workers_n = min(MAX_WORKERS, todo)

        async def feed() -> None:
            try:
                async for item in self._requests(owner, batch, done):
                    await queue.put(item)
            except Exception:  # what was not sent ends as an internal_error line when the batch finalises
                log.exception("batch %s: reading its input failed", batch["id"])
            for _ in range(workers_n):  # then each worker is told there is no more
                await queue.put(None)

        feeder = asyncio.create_task(feed())

        async def worker() -> None:  # a few workers, not a task per line
            while (item := await queue.get()) is not None:
                model = item.body["model"]
                await self._room_for(model, batch)
                unsent[model] -= 1
                self._mine[model] = self._mine.get(model, 0) + 1  # no await since the check: no overtaking
                # Where the model's capacity is known, its free places are the limit; else --batch-concurrency.
                limit = self.slots if self.places(model) is None else contextlib.nullcontext()
                try:
                    async with limit:
                        if self._stopping(batch):
                            return
                        line, failed = await self._attempt(owner, item, lambda: self._stopping(batch))
                except Exception as err:  # one line's failure is that line's error; the worker goes on
                    log.exception("batch %s, %s: unexpected error", batch["id"], item.custom_id)
                    line, failed = _error_line(item, "internal_error", f"{type(err).__name__}: {str(err)[:200]}"), True
                finally:
                    self._mine[model] -= 1
                if line is None:
                    return
                await asyncio.to_thread(self.batches.add_result, batch["id"], line, failed)
                counts["failed" if failed else "completed"] += 1

        workers = [asyncio.create_task(worker()) for _ in range(workers_n)]
        try:
            while workers:
                _, pending = await asyncio.wait(workers, timeout=0.5)
                workers = list(pending)
                if self._stopping(batch):  # cancel takes effect now, not after the requests in flight
                    for task in workers:
                        task.cancel()
                    await asyncio.gather(*workers, return_exceptions=True)
                    break
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
            self._unsent.pop(batch["id"], None)
            stop.set()
            await saver

    async def _room_for(self, model: str, batch: dict) -> None:
        """Online first: a batch request goes out only into a place no online request needs (polled every
        50 ms; a place frees when any request on the model finishes)."""
        while not self._stopping(batch):
            allowed = self.places(model)
            if allowed is None or self._mine.get(model, 0) < allowed:
                return
            await asyncio.sleep(0.05)

    def _stopping(self, batch: dict) -> bool:
        return batch["id"] in self._cancelled or self.clock() >= batch["expires_at"]

    async def _attempt(self, owner: str, item: Item, stopping) -> tuple[dict | None, bool]:
        """The result line for one request and whether it failed; (None, _) if stopping() first."""
        why, asked_s = "", None
        for attempt in range(self.attempts):
            if attempt:
                backoff_s = self.backoff_s * 2 ** (attempt - 1)  # 1, 2, 4 s
                await asyncio.sleep(max(backoff_s, min(asked_s or 0.0, MAX_RETRY_AFTER_S)))
                if stopping():
                    return None, True
            asked_s = None
            try:
                status, body, request_id, asked_s = await self.send(owner, item.url, item.body)
            except (OSError, asyncio.TimeoutError) as err:
                why = f"the request could not be sent: {err or type(err).__name__}"
                continue
            except Exception as err:  # anything else is retried too, and ends as this line's error, never lost
                log.exception("batch request %s: unexpected error while sending", item.custom_id)
                why = f"unexpected error while sending: {type(err).__name__}: {str(err)[:200]}"
                continue
            if status in RETRIED_STATUSES and attempt + 1 < self.attempts:
                continue
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = {"error": {"message": body[:1000].decode(errors="replace"), "type": "server_error"}}
            response = {"status_code": status, "request_id": request_id, "body": parsed}
            return {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": item.custom_id, "response": response,
                    "error": None}, status >= 400
        return _error_line(item, "request_failed", f"{why} ({self.attempts} attempts)"), True

    async def _save_counts(self, owner: str, batch: dict, stop: asyncio.Event) -> None:
        saved = None
        while True:
            now_counts = dict(batch["request_counts"])
            if now_counts != saved:
                await self._save(owner, batch)
                saved = now_counts
            if stop.is_set():
                return
            try:
                await asyncio.wait_for(stop.wait(), SAVE_EVERY_S)
            except asyncio.TimeoutError:
                pass

    async def _finalise(self, owner: str, batch: dict) -> None:
        now = int(self.clock())
        cancelled = batch["id"] in self._cancelled or batch["status"] == "cancelling"
        expired = not cancelled and now >= batch["expires_at"]
        if not cancelled:  # every line ends in one of the two files: what never ran says why
            done, _, _ = await asyncio.to_thread(self.batches.answered, batch["id"])
            code, message = (("batch_expired", "the batch expired before this request ran") if expired else
                             ("internal_error", "the batch runner lost this request; see the gateway's log"))
            async for item in self._requests(owner, batch, done):
                await asyncio.to_thread(self.batches.add_result, batch["id"], _error_line(item, code, message), True)
        batch.update(status="finalizing", finalizing_at=batch.get("finalizing_at") or now)
        await self._save(owner, batch)
        for which, field in (("output", "output_file_id"), ("errors", "error_file_id")):
            if not batch.get(field):
                name = f"{batch['id']}_{'output' if which == 'output' else 'error'}.jsonl"
                made = await asyncio.to_thread(self._result_file, owner, batch["id"], which, name)
                if made is not None:
                    batch[field] = made["id"]
        _, completed, failed = await asyncio.to_thread(self.batches.answered, batch["id"])
        batch["request_counts"].update(completed=completed, failed=failed)
        final = "cancelled" if cancelled else "expired" if expired else "completed"
        batch.update(status=final, **{f"{final}_at": int(self.clock())})
        await self._save(owner, batch)
        self._cancelled.discard(batch["id"])
        log.info("batch %s %s: %d completed, %d failed", batch["id"], final, completed, failed)

    def _result_file(self, owner: str, batch_id: str, which: str, name: str) -> dict | None:
        """The results as a file of the owner's, copied line by line (blocking); None when there are none."""
        upload = None
        for raw in self.batches.result_lines(batch_id, which):
            upload = upload or self.files.begin(owner, name, "batch_output")
            upload.write(raw + b"\n")
        return upload.commit() if upload is not None else None


def _error_line(item: Item, code: str, message: str) -> dict:
    return {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": item.custom_id, "response": None,
            "error": {"code": code, "message": message}}
