"""OpenAI's Files and Batch APIs on the gateway, with the official `openai` client: the real gateway on
loopback with API keys, in front of simulated vLLM engines, a batch directory in the test's tmp dir.
(The batch on the local cluster, a service at zero and the SIGKILLed runner are in
tests/cluster/test_batches.py.)"""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest
from aiohttp import web

from tests.test_gateway_openai import FULL, ONLY_A, Stack, free_port
from tidal.gateway.batches.service import BatchService


class BatchStack(Stack):
    """Two models behind the gateway, with /v1/files and /v1/batches kept in `directory`."""

    def __init__(self, directory, concurrency=16):
        self.directory, self.concurrency = directory, concurrency

    async def __aenter__(self):
        await super().__aenter__()
        # a second front door for the same gateway with the batch routes: the app must be built with them
        port = free_port()
        self.batches = BatchService(self.gateway, self.directory, f"http://127.0.0.1:{port}", self.concurrency)
        runner = web.AppRunner(self.gateway.app(self.batches.add_routes), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.runners.append(runner)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.batches.start()
        return self

    async def __aexit__(self, *exc):
        await self.batches.close()
        await super().__aexit__(*exc)


def chat_line(i, model="model-a", **extra):
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 5,
                     **extra}}


def jsonl(lines) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


async def until_final(client, batch_id, timeout=60):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        batch = await client.batches.retrieve(batch_id)
        seen.append(batch.status)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch, seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"batch {batch_id} not final after {timeout}s: {seen[-5:]}")


async def read_lines(client, file_id):
    return [json.loads(line) for line in (await client.files.content(file_id)).read().splitlines()]


def test_a_batch_of_chat_requests_completes_with_one_line_per_custom_id(tmp_path):
    async def scenario():
        async with BatchStack(tmp_path) as stack:
            client = stack.client(FULL)
            lines = [chat_line(i, "model-a" if i % 2 else "model-b") for i in range(300)]
            uploaded = await client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
            assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
            assert uploaded.filename == "requests.jsonl"
            batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                completion_window="24h", metadata={"team": "a"})
            assert batch.status == "validating" and batch.metadata == {"team": "a"}
            done, seen = await until_final(client, batch.id)
            assert done.status == "completed" and "in_progress" in seen
            assert done.request_counts.total == 300 and done.request_counts.completed == 300
            assert done.request_counts.failed == 0 and done.error_file_id is None
            assert done.completed_at >= done.in_progress_at >= done.created_at
            output = await read_lines(client, done.output_file_id)
            assert sorted(o["custom_id"] for o in output) == sorted(f"req-{i}" for i in range(300))
            for o in output:
                assert o["error"] is None and o["response"]["status_code"] == 200
                assert o["response"]["body"]["model"] == ("model-a" if int(o["custom_id"][4:]) % 2 else "model-b")
                assert o["response"]["body"]["usage"]["completion_tokens"] == 5
            out_file = await client.files.retrieve(done.output_file_id)
            assert out_file.purpose == "batch_output"
            # the batch's tokens are metered under the key that created it, like any request
            assert stack.counter("tidal_gateway_completion_tokens_total", key="full", model="model-a") == 150 * 5
            listed = await client.batches.list()
            assert [b.id for b in listed.data] == [batch.id]
    asyncio.run(scenario())


def test_malformed_lines_fail_validation_naming_each_line(tmp_path):
    async def scenario():
        async with BatchStack(tmp_path) as stack:
            client = stack.client(FULL)
            lines = [chat_line(0), "{not json", chat_line(0), {**chat_line(3), "url": "/v1/completions"},
                     {**chat_line(4), "method": "GET"}, {"custom_id": "req-5", "method": "POST",
                                                         "url": "/v1/chat/completions", "body": {"messages": []}}]
            uploaded = await client.files.create(file=("bad.jsonl", jsonl(lines)), purpose="batch")
            batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
            done, _ = await until_final(client, batch.id)
            assert done.status == "failed" and done.failed_at
            by_line = {e.line: e for e in done.errors.data}
            assert sorted(by_line) == [2, 3, 4, 5, 6]
            assert "not valid JSON" in by_line[2].message
            assert "'req-0' is also on line 1" in by_line[3].message and by_line[3].param == "custom_id"
            assert by_line[4].param == "url" and "'/v1/completions'" in by_line[4].message
            assert by_line[5].param == "method" and by_line[6].param == "body.model"
            assert done.output_file_id is None  # nothing ran
    asyncio.run(scenario())


def test_a_line_for_an_unknown_or_forbidden_model_gets_its_own_error_line_and_the_rest_completes(tmp_path):
    async def scenario():
        async with BatchStack(tmp_path) as stack:
            client = stack.client(ONLY_A)  # may use model-a only
            lines = [chat_line(0), chat_line(1, "no-such-model"), chat_line(2, "model-b"), chat_line(3)]
            uploaded = await client.files.create(file=("mixed.jsonl", jsonl(lines)), purpose="batch")
            done, _ = await until_final(client, (await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")).id)
            assert done.status == "completed"
            assert (done.request_counts.completed, done.request_counts.failed) == (2, 2)
            assert sorted(o["custom_id"] for o in await read_lines(client, done.output_file_id)) == ["req-0", "req-3"]
            errors = {e["custom_id"]: e["response"] for e in await read_lines(client, done.error_file_id)}
            assert errors["req-1"]["status_code"] == 403  # this key may not learn whether it exists
            assert errors["req-2"]["body"]["error"]["code"] == "model_not_permitted"
    asyncio.run(scenario())


def test_a_key_sees_only_its_own_files_and_batches_and_bad_requests_name_the_field(tmp_path):
    async def scenario():
        async with BatchStack(tmp_path) as stack:
            mine, other = stack.client(FULL), stack.client(ONLY_A)
            uploaded = await mine.files.create(file=("a.jsonl", jsonl([chat_line(0)])), purpose="batch")
            batch = await mine.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                              completion_window="24h")
            with pytest.raises(openai.NotFoundError):
                await other.files.retrieve(uploaded.id)
            with pytest.raises(openai.NotFoundError):
                await other.batches.retrieve(batch.id)
            with pytest.raises(openai.NotFoundError):  # nor may it run a batch on someone else's file
                await other.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                           completion_window="24h")
            assert (await other.files.list()).data == [] and (await other.batches.list()).data == []
            assert [f.id for f in (await mine.files.list(purpose="batch")).data] == [uploaded.id]
            with pytest.raises(openai.BadRequestError) as err:
                await mine.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="1h")
            assert err.value.param == "completion_window" and "'1h'" in err.value.message
            with pytest.raises(openai.BadRequestError) as err:
                await mine.files.create(file=("a.jsonl", b"{}"), purpose="fine-tune")
            assert err.value.param == "purpose" and "supported: batch" in err.value.message
            with pytest.raises(openai.AuthenticationError):
                await stack.client("wrong-" + "q" * 20).files.list()
            deleted = await mine.files.delete(uploaded.id)
            assert deleted.deleted and deleted.id == uploaded.id
            with pytest.raises(openai.NotFoundError):
                await mine.files.retrieve(uploaded.id)
    asyncio.run(scenario())


# ---- a gateway process, killed and restarted ----------------------------------------------------------
class Processes:
    """A simulated vLLM (`tidal-dev sim-server`, 8 slots, 50 ms a token) and `tidal activator` with a batch
    directory, as separate processes, so the gateway can be SIGKILLed mid-batch and started again."""

    def __init__(self, tmp_path, storage=None, env=None):
        """storage: where the gateway keeps batches (default: a directory in tmp_path); env: its extra
        environment (an S3 server's address and key)."""
        import subprocess
        import sys
        self.tmp, self.sys, self.subprocess = tmp_path, sys, subprocess
        self.storage, self.env = storage or str(tmp_path / "batches"), env or {}
        self.engine_port, self.port, self.metrics = free_port(), free_port(), free_port()
        self.engine = subprocess.Popen([sys.executable, "-m", "tidal_dev", "sim-server", "--model", "m",
                                        "--port", str(self.engine_port), "--max-concurrency", "8",
                                        "--decode-s-per-token", "0.05", "--overhead-s", "0"],
                                       stdout=open(tmp_path / "engine.log", "w"), stderr=self.subprocess.STDOUT)
        self.gateway = None

    def start_gateway(self):
        from tidal_dev.cluster.processes import http_ok
        self.gateway = self.subprocess.Popen(
            [self.sys.executable, "-m", "tidal.cli", "activator", "--host", "127.0.0.1", "--port", str(self.port),
             "--metrics-port", str(self.metrics), "--api-keys", "off", "--playground", "off",
             f"--static-endpoint=ns/m=127.0.0.1:{self.engine_port}", "--batch-storage", self.storage,
             "--batch-concurrency", "8"],
            stdout=open(self.tmp / "gateway.log", "a"), stderr=self.subprocess.STDOUT,
            env={**__import__("os").environ, **self.env})
        deadline = time.monotonic() + 20
        while not (http_ok(f"http://127.0.0.1:{self.metrics}/healthz")
                   and http_ok(f"http://127.0.0.1:{self.engine_port}/health")):
            assert time.monotonic() < deadline, (self.tmp / "gateway.log").read_text()[-2000:]
            time.sleep(0.1)

    def client(self):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="unused", max_retries=0,
                             timeout=20)

    def close(self):
        for proc in (self.gateway, self.engine):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(15)


def poll(client, batch_id, until, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if until(batch):
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id}: {batch.status} {batch.request_counts}")


def test_a_gateway_killed_mid_batch_resumes_and_every_custom_id_appears_exactly_once(tmp_path):
    killed_mid_batch_resumes(Processes(tmp_path))


def killed_mid_batch_resumes(procs, count=240):
    import signal
    try:
        procs.start_gateway()
        client = procs.client()
        lines = [{**chat_line(i, "m"), "body": {**chat_line(i, "m")["body"], "max_tokens": 4}} for i in range(count)]
        uploaded = client.files.create(file=("r.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        # 8 at a time, 0.2 s each: about 40 a second; kill it a third of the way through
        midway = poll(client, batch.id, lambda b: b.request_counts and b.request_counts.completed >= count // 3)
        assert midway.status == "in_progress"
        procs.gateway.send_signal(signal.SIGKILL)
        procs.gateway.wait(10)
        procs.start_gateway()
        done = poll(client, batch.id, lambda b: b.status in ("completed", "failed"))
        assert done.status == "completed" and done.request_counts.completed == count, done
        output = [json.loads(x) for x in client.files.content(done.output_file_id).read().splitlines()]
        ids = [o["custom_id"] for o in output]
        assert len(ids) == count and sorted(ids) == sorted(f"req-{i}" for i in range(count))
        assert all(o["response"]["status_code"] == 200 for o in output)
    finally:
        procs.close()


def test_cancel_stops_a_batch_within_seconds_and_keeps_what_was_answered(tmp_path):
    procs = Processes(tmp_path)
    try:
        procs.start_gateway()
        client = procs.client()
        lines = [{**chat_line(i, "m"), "body": {**chat_line(i, "m")["body"], "max_tokens": 20}} for i in range(400)]
        uploaded = client.files.create(file=("r.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        poll(client, batch.id, lambda b: b.request_counts and b.request_counts.completed >= 8)
        asked = time.monotonic()
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        done = poll(client, batch.id, lambda b: b.status == "cancelled", timeout=10)
        took = time.monotonic() - asked
        assert took < 5, took  # requests in flight (1 s each) are dropped, not waited for
        output = [json.loads(x) for x in client.files.content(done.output_file_id).read().splitlines()]
        assert 8 <= len(output) < 400 and len({o["custom_id"] for o in output}) == len(output)
        assert done.request_counts.completed == len(output)
        time.sleep(1.5)  # and nothing more is sent or written after it
        assert client.batches.retrieve(batch.id).request_counts.completed == len(output)
    finally:
        procs.close()


def test_prefer_respond_async_answers_202_and_the_polled_result_equals_the_synchronous_answer(tmp_path):
    async def scenario():
        async with BatchStack(tmp_path) as stack:
            client = stack.client(FULL)
            ask = dict(model="model-a", messages=[{"role": "user", "content": "same question"}], max_tokens=6)
            raw = await client.chat.completions.with_raw_response.create(
                **ask, extra_headers={"Prefer": "respond-async, wait=0"})
            assert raw.status_code == 202 and raw.headers["preference-applied"] == "respond-async"
            accepted = json.loads(raw.content)
            assert raw.headers["location"] == f"/v1/async/{accepted['id']}"
            assert accepted["status"] == "queued" and accepted["model"] == "model-a"
            import aiohttp
            where = stack.base_url.removesuffix("/v1") + raw.headers["location"]
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {FULL}"}) as http:
                for _ in range(100):
                    async with http.get(where) as r:
                        polled = await r.json()
                    if polled["status"] not in ("queued", "in_progress"):
                        break
                    await asyncio.sleep(0.1)
                async with http.get(where, headers={"Authorization": f"Bearer {ONLY_A}"}) as other:
                    assert other.status == 404  # another key's request does not exist for it
            assert polled["status"] == "completed" and polled["expires_at"] >= polled["completed_at"] + 86_400 - 1
            deferred = openai.types.chat.ChatCompletion.model_validate(polled["response"]["body"]).model_dump()
            direct = (await client.chat.completions.create(**ask)).model_dump()
            assert polled["response"]["status_code"] == 200
            for field in ("object", "model", "choices", "usage"):
                assert deferred[field] == direct[field], field
            with pytest.raises(openai.NotFoundError):  # the model is checked before a 202 is given
                await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}],
                                                     extra_headers={"Prefer": "respond-async"})
    asyncio.run(scenario())


def test_online_requests_are_not_held_behind_a_running_batch(tmp_path):
    """One replica of 8 places (the capacity annotation's number) at 20 ms a token: a batch of 120
    20-token requests takes at most 7 places (one in eight kept for online requests), so online requests
    sent meanwhile go straight to the replica, never into the gateway's line."""
    async def scenario():
        async with BatchStack(tmp_path, concurrency=32) as stack:
            from tidal.gateway.endpoints import Endpoint
            endpoint = stack.gateway.endpoints.get(("ns-a", "model-a"))[0]
            slow_port = free_port()
            from tidal.simulate.latency import LatencyModel
            from tidal_dev.simserver.podspec import EngineSpec
            from tidal_dev.simserver.runtime import serve_engine
            latency = LatencyModel(prefill_s_per_token=0, decode_s_per_token=0.02, overhead_s=0, max_concurrency=8)
            _, runners = await serve_engine(EngineSpec("vllm", ("model-a",), "model-a", slow_port, None, latency),
                                            "127.0.0.1")
            stack.runners += runners
            stack.gateway.endpoints.update(("ns-a", "model-a"), "pod", Endpoint("127.0.0.1", slow_port, capacity=8))
            assert endpoint is not stack.gateway.endpoints.get(("ns-a", "model-a"))[0]
            client = stack.client(FULL)
            lines = [{**chat_line(i), "body": {**chat_line(i)["body"], "max_tokens": 20}} for i in range(120)]
            uploaded = await client.files.create(file=("b.jsonl", jsonl(lines)), purpose="batch")
            batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
            peak, held = 0, []
            runner = stack.batches.runner
            while (await client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
                raw = await client.chat.completions.with_raw_response.create(
                    model="model-a", messages=[{"role": "user", "content": "online"}], max_tokens=2)
                held.append(float(raw.headers["x-tidal-held-seconds"]))
                peak = max(peak, runner._mine.get("model-a", 0))
                await asyncio.sleep(0.05)
            done = await client.batches.retrieve(batch.id)
            assert done.status == "completed" and done.request_counts.completed == 120
            assert len(held) >= 10 and max(held) == 0.0, held  # no online request waited in the line
            assert peak == 7  # the batch used every place but the reserve
    asyncio.run(scenario())


def test_every_line_ends_in_the_output_or_the_error_file_whatever_the_sender_raises(tmp_path):
    """An exception nobody planned for, raised while a line is sent, must not make the line vanish. The real
    gateway and engines cannot be made to raise one on demand, so the runner's send is wrapped to raise for
    chosen lines (a fake fault, on purpose): RuntimeError every time for req-3, KeyError once for req-5."""
    async def scenario():
        async with BatchStack(tmp_path) as stack:
            runner = stack.batches.runner
            runner.backoff_s = 0.01
            real_send, raised = runner.send, []

            async def faulty_send(owner, url, body):
                content = body["messages"][0]["content"]
                if content == "question 3" or (content == "question 5" and "req-5" not in raised):
                    raised.append("req-3" if content == "question 3" else "req-5")
                    raise (RuntimeError("injected fault") if content == "question 3" else KeyError("injected"))
                return await real_send(owner, url, body)
            runner.send = faulty_send
            client = stack.client(FULL)
            uploaded = await client.files.create(file=("r.jsonl", jsonl([chat_line(i) for i in range(10)])),
                                                 purpose="batch")
            done, _ = await until_final(client, (await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")).id)
            assert done.status == "completed" and raised.count("req-5") == 1 and raised.count("req-3") == 4
            output = [o["custom_id"] for o in await read_lines(client, done.output_file_id)]
            errors = {e["custom_id"]: e["error"] for e in await read_lines(client, done.error_file_id)}
            assert sorted(output + list(errors)) == sorted(f"req-{i}" for i in range(10))  # each exactly once
            assert list(errors) == ["req-3"] and "RuntimeError: injected fault" in errors["req-3"]["message"]
            assert (done.request_counts.completed, done.request_counts.failed) == (9, 1)
    asyncio.run(scenario())


def test_a_line_the_gateway_refuses_for_now_is_retried_after_the_wait_its_retry_after_asks(tmp_path):
    """The gateway holds at most max_pending requests per service and refuses more with a 429 whose Retry-After
    says 5 s. Here it holds none (max_pending 0) and model-a has no ready replica, so the first send is refused;
    the replica is back at once. The runner must wait the 5 s it was told, not retry at 1, 2 and 4 s (which
    would spend its attempts inside one such wait), and then the line completes. `send` is wrapped only to
    watch: every answer is the real gateway's."""
    async def scenario():
        async with BatchStack(tmp_path) as stack:
            from dataclasses import replace
            gateway, runner, key = stack.gateway, stack.batches.runner, ("ns-a", "model-a")
            replica = gateway.endpoints.get(key)[0]
            gateway.endpoints.update(key, "pod", None)
            gateway.limits = gateway.holds.limits = replace(gateway.limits, max_pending=0)
            real_send, answers = runner.send, []

            async def watched_send(owner, url, body):
                answer = await real_send(owner, url, body)
                answers.append((time.monotonic(), answer[0], answer[3]))
                gateway.endpoints.update(key, "pod", replica)  # the replica is ready again
                return answer
            runner.send = watched_send
            client = stack.client(FULL)
            uploaded = await client.files.create(file=("r.jsonl", jsonl([chat_line(0)])), purpose="batch")
            done, _ = await until_final(client, (await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")).id)
            assert [(status, asked) for _, status, asked in answers] == [(429, 5.0), (200, None)]
            assert answers[1][0] - answers[0][0] >= 5.0
            assert done.status == "completed" and done.request_counts.completed == 1
    asyncio.run(scenario())


def test_an_input_past_openais_limits_is_refused_at_upload_and_blank_lines_are_each_lines_error(tmp_path):
    async def scenario():
        async with BatchStack(tmp_path) as stack:
            client = stack.client(FULL)
            with pytest.raises(openai.BadRequestError) as refused:
                await client.files.create(file=("many.jsonl", b"{}\n" * 50_001), purpose="batch")
            assert "at most 50,000 requests" in refused.value.body["message"]
            with pytest.raises(openai.BadRequestError) as refused:
                await client.files.create(file=("huge.jsonl", b"x" * (200 * 1024 * 1024 + 1)), purpose="batch")
            assert "larger than 200 MB" in refused.value.body["message"]
            assert (await client.files.list()).data == []  # nothing half-written is left as a file
            # 1 MB of blank lines (once 300 MB of Python objects): a failed validation naming the first lines.
            blank = await client.files.create(file=("blank.jsonl", b"\n" * 49_999), purpose="batch")
            done, _ = await until_final(client, (await client.batches.create(
                input_file_id=blank.id, endpoint="/v1/chat/completions", completion_window="24h")).id)
            assert done.status == "failed" and len(done.errors.data) == 100
            assert done.errors.data[0].line == 1 and done.errors.data[0].message == "line 1 is empty"
            ok = await client.chat.completions.create(model="model-a", max_tokens=2,
                                                      messages=[{"role": "user", "content": "still there?"}])
            assert ok.usage.completion_tokens == 2
    asyncio.run(scenario())


def test_a_batch_past_its_keys_enqueued_token_limit_fails_saying_by_how_much(tmp_path):
    """As OpenAI's batch queue limit: tidal.dev/batch-enqueued-tokens on the key. Each line below may use 100
    tokens plus a quarter of its bytes (about 150): 5 lines fit in 1,000, 10 do not."""
    from tests.test_gateway_openai import key
    token = "batchy-" + "q" * 24

    async def scenario():
        async with BatchStack(tmp_path) as stack:
            stack.gateway.keys.put(key("batchy", token, **{"batch-enqueued-tokens": "1000"}))
            client = stack.client(token)

            async def run(lines):
                uploaded = await client.files.create(file=("b.jsonl", jsonl(lines)), purpose="batch")
                return (await until_final(client, (await client.batches.create(
                    input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")).id))[0]
            over = await run([chat_line(i, max_tokens=100) for i in range(10)])
            assert over.status == "failed" and over.errors.data[0].code == "token_limit_exceeded"
            assert "over its limit of 1,000" in over.errors.data[0].message
            within = await run([chat_line(i, max_tokens=100) for i in range(5)])
            assert within.status == "completed" and within.request_counts.completed == 5
    asyncio.run(scenario())
