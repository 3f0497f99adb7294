"""Hostile requests against the real gateway process (`tidal activator`, keys on) in front of a plain upstream
that records every byte it is sent: what an engine would really receive. Each hostile input gets a clear 4xx,
never a 5xx, never reaches the engine, and the gateway keeps serving everyone else meanwhile."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.properties import examples
from tests.upstream_recorder import UpstreamRecorder
from tidal_dev.cluster.processes import free_port, http_ok

TOKEN = "hostile-test-" + "k" * 24
MODEL = "model-a"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The gateway with one static service (ns-a/model-a) whose only replica is the recorder."""
    tmp = tmp_path_factory.mktemp("hostile")
    with UpstreamRecorder() as upstream:
        port, metrics = free_port(), free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidal.cli", "activator", "--host", "127.0.0.1", "--port", str(port),
             "--metrics-port", str(metrics), f"--static-endpoint=ns-a/model-a@{MODEL}=127.0.0.1:{upstream.port}",
             f"--static-api-key=tester={TOKEN}", "--batch-storage", str(tmp / "batches")],
            stdout=open(tmp / "gateway.log", "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not http_ok(f"http://127.0.0.1:{metrics}/healthz") and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            yield port, upstream
        finally:
            proc.terminate()
            proc.wait(15)
            log = (tmp / "gateway.log").read_text()
            assert TOKEN not in log, "the API key was logged"


def raw(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send bytes as they are (no client library to clean them up); (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


def request(target: str, body: bytes = b"", method: str = "POST", extra: str = "",
            content_type: str = "application/json") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
            ).encode("latin-1") + body


COMPLETION = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 1}).encode()


def served(port: int) -> bool:
    status, _, _ = raw(port, request("/v1/completions", COMPLETION))
    return status == 200


@pytest.mark.parametrize("target", [
    "/v1/completions%0D%0AX-Injected:%201",          # CRLF in the path: a header of the caller's choosing
    "/v1/completions%0AX-Injected:%201",             # LF alone (servers that accept bare LF)
    "/v1/completions%0DX-Injected:%201",             # CR alone
    "/v1/completions?a=1%0D%0AX-Injected:%201",      # the same in the query
    "/v1/completions?a=1%0AX-Injected:%201",
    "/v1/completions?a=1%0DX-Injected:%201",
    "/v1/completions?a=%00",                         # NUL
    "/ns-a/model-a/v1/completions%0D%0A%0D%0AGET%20/smuggled%20HTTP/1.1",  # a second request, by service path
])
def test_a_target_with_encoded_cr_lf_or_nul_is_refused_and_nothing_reaches_the_engine(stack, target):
    port, upstream = stack
    before = upstream.all_bytes()
    status, headers, body = raw(port, request(target, COMPLETION))
    assert status == 400, body
    error = json.loads(body)["error"]  # OpenAI's shape, naming what was wrong
    assert error["type"] == "invalid_request_error" and "control character" in error["message"]
    assert upstream.all_bytes() == before, "the hostile request reached the engine"
    assert b"X-Injected" not in upstream.all_bytes() and b"smuggled" not in upstream.all_bytes()
    assert served(port), "the gateway stopped serving others"


def test_the_target_goes_upstream_as_the_caller_encoded_it(stack):
    port, upstream = stack
    status, _, _ = raw(port, request("/v1/completions?tag=a%20b%2Fc&x=%25", COMPLETION))
    assert status == 200
    assert upstream.requests[-1].startswith(b"POST /v1/completions?tag=a%20b%2Fc&x=%25 HTTP/1.1\r\n")
    status, _, _ = raw(port, request("/ns-a/model-a/v1/chat%2Fcompletions", COMPLETION))
    assert status == 200 and upstream.requests[-1].startswith(b"POST /v1/chat%2Fcompletions HTTP/1.1\r\n")


def test_the_callers_key_and_hop_by_hop_headers_never_reach_the_engine(stack):
    port, upstream = stack
    hop = ("Proxy-Authorization: Basic c2VjcmV0\r\nTE: trailers\r\nUpgrade: websocket\r\nKeep-Alive: timeout=5\r\n"
           "X-Caller-Header: kept\r\n")
    status, _, _ = raw(port, request("/v1/completions", COMPLETION, extra=hop))
    assert status == 200
    head = upstream.requests[-1].lower()
    assert b"x-caller-header: kept" in head  # end-to-end headers pass
    assert TOKEN.encode().lower() not in upstream.all_bytes().lower()
    for name in (b"authorization", b"proxy-authorization", b"te:", b"upgrade", b"keep-alive"):
        assert b"\r\n" + name not in head, name


@pytest.mark.parametrize("header", ["X-A: a\x00b", "X-A: a\x0bb", "X-A: a\x1bb"])
def test_a_header_with_a_control_character_is_refused(stack, header):
    port, upstream = stack
    before = upstream.all_bytes()
    status, _, _ = raw(port, request("/v1/completions", COMPLETION, extra=header + "\r\n"))
    assert status == 400
    assert upstream.all_bytes() == before
    assert served(port)


@pytest.mark.parametrize("body,named", [
    (b"[" * 200_000 + b"]" * 200_000, "nested more than 64 levels"),
    (b'{"model": "model-a", "prompt": ' + b"[" * 100 + b"]" * 100 + b"}", "nested more than 64 levels"),
    (b'{"model": "model-a", "prompt": "hi", "temperature": 1e999999}', "too large for a 64-bit float"),
    (b'{"model": "model-a", "prompt": "hi", "temperature": NaN}', "NaN is not a JSON number"),
    (b'{"model": "model-a", "prompt": "hi", "max_tokens": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"model": "model-a", "prompt": "hi", "seed": ' + b"9" * 5000 + b"}", "not acceptable JSON"),
    (b'{"model": "model-a", "prompt": "\xff\xfe"}', "not UTF-8"),
])
def test_json_that_would_crash_or_mislead_is_a_400_naming_the_problem(stack, body, named):
    port, upstream = stack
    before = upstream.all_bytes()
    for path in ("/v1/completions", "/ns-a/model-a/v1/completions", "/v1/batches"):
        status, _, answer = raw(port, request(path, body))
        assert status == 400, (path, answer[:300])
        assert named in json.loads(answer)["error"]["message"], (path, answer[:300])
    assert upstream.all_bytes() == before
    assert served(port)


# Every endpoint the gateway serves, with each method a client may use on it.
ENDPOINTS = [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings"),
             ("POST", "/ns-a/model-a/v1/completions"), ("POST", "/v2/models/model-a/infer"),
             ("GET", "/v1/models"), ("GET", "/v1/models/model-a"), ("POST", "/v1/files"), ("GET", "/v1/files"),
             ("POST", "/v1/batches"), ("GET", "/v1/batches"), ("GET", "/v1/batches/batch_x"),
             ("POST", "/v1/batches/batch_x/cancel"), ("GET", "/v1/async/x"), ("GET", "/playground/")]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["model", "prompt", "messages", "stream", "max_tokens", "input", "file", "endpoint", "input_file_id",
         "completion_window", "metadata", "n", "purpose"]) | st.text(max_size=8), inner, max_size=5),
    max_leaves=20)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"model": st.sampled_from([MODEL, "nope", ""]) | st.integers()},
                          optional={"stream": st.booleans() | st.text(), "messages": json_values}).map(
        lambda v: json.dumps(v).encode()),
    st.binary(max_size=200))


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(endpoint=st.sampled_from(ENDPOINTS), body=bodies,
       content_type=st.sampled_from(["application/json", "multipart/form-data; boundary=x", "text/plain"]),
       prefer=st.booleans())
def test_no_body_sent_to_any_endpoint_makes_the_gateway_fail(stack, endpoint, body, content_type, prefer):
    port, _ = stack
    method, path = endpoint
    status, _, answer = raw(port, request(path, body, method, "Prefer: respond-async\r\n" if prefer else "",
                                          content_type))
    assert status < 500, (method, path, body[:200], answer[:300])
