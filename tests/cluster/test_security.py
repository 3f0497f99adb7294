"""Security promises: credentials are only referenced, never copied; the activator reaches only the
named service's replicas, whatever the request says."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.error
import urllib.request
import uuid

import pytest

from tests.cluster.test_autoscaler import apply, service
from tests.cluster.test_operator import get, wait_condition

pytestmark = pytest.mark.cluster


def test_model_credentials_are_referenced_never_copied(operator, kubectl, namespace):
    token, key = f"hf_{uuid.uuid4().hex}", f"AKIA{uuid.uuid4().hex[:16]}"
    kubectl("create", "secret", "generic", "hf-token", "-n", namespace, f"--from-literal=HF_TOKEN={token}")
    kubectl("create", "secret", "generic", "extra", "-n", namespace, f"--from-literal=key={key}")
    spec = service("private", minReplicas=1)
    spec["spec"]["model"]["credentials"] = {"secretName": "hf-token"}
    spec["spec"]["engine"]["env"] = [{"name": "EXTRA_KEY", "valueFromSecret": {"name": "extra", "key": "key"}}]
    apply(kubectl, namespace, spec)
    wait_condition(kubectl, namespace, "private", "Ready", "True", "ModelReady")
    everything = {
        "deployment": kubectl("get", "deployment", "private", "-n", namespace, "-o", "json").stdout,
        "replicasets and pods": kubectl("get", "rs,pods", "-n", namespace, "-o", "json").stdout,
        "inferenceservice": kubectl("get", "tis", "private", "-n", namespace, "-o", "json").stdout,
        "events": kubectl("get", "events", "-n", namespace, "-o", "json").stdout,
        "operator log": operator.log_path.read_text(),
    }
    for where, text in everything.items():
        assert token not in text and key not in text, f"a credential leaked into the {where}"
    env = get(kubectl, namespace, "deployment", "private")["spec"]["template"]["spec"]
    refs = [(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for c in env["initContainers"] + env["containers"] for e in c.get("env", []) if "valueFrom" in e]
    assert ("hf-token", "HF_TOKEN") in refs and ("extra", "key") in refs


class Canary(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):
        Canary.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"canary")

    do_POST = do_GET

    def log_message(self, *args):
        pass


def test_no_path_or_host_takes_a_request_anywhere_but_the_named_services_replicas(operator, activator, kubectl,
                                                                                  namespace):
    """Each attempt goes as raw bytes over a socket (a client library would refuse or clean some of them), and
    each gets the answer it must: a 400 for a line break smuggled in encoded, a 404 for what names no
    service; never a 5xx. A canary listening beside the cluster must receive nothing. (What an engine
    receives, byte for byte, is checked against a recording upstream in tests/test_gateway_hostile.py.)"""
    from tests.test_gateway_hostile import raw
    apply(kubectl, namespace, service("alpha", minReplicas=1))
    wait_condition(kubectl, namespace, "alpha", "Ready", "True", "ModelReady")
    canary = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canary)
    threading.Thread(target=canary.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{canary.server_address[1]}"
    Canary.hits.clear()
    port = int(activator.url.rsplit(":", 1)[1])
    attempts = [  # (path, Host header, the status it must get)
        (f"/{target}/v1/models", "gw", 404),
        ("/v1/models", target, 200),  # a Host that is an address names no service: the gateway's own listing
        (f"/{namespace}/alpha/../../{target}/v1/models", "gw", 404),  # alpha's engine has no such path
        (f"/{namespace}/alpha/%2e%2e/%2e%2e/{target}", "gw", 404),
        (f"/{namespace}/alpha/@{target}/v1/models", "gw", 404),
        (f"/{namespace}/alpha//{target}/v1/models", "gw", 404),
        ("/kube-system/kube-dns/", "gw", 503),  # names a service the operator does not know: held, then 404
        (f"/{namespace}/nonexistent/v1/models", "gw", 503),
        ("/v1/models", f"alpha.{namespace}.svc@{target}", 200),
        (f"/{namespace}/alpha/v1/models%0D%0AHost:%20{target}", "gw", 400),
        (f"/{namespace}/alpha/v1/models?x=%0D%0A%0D%0AGET%20http://{target}/%20HTTP/1.1", "gw", 400),
        (f"/{namespace}/alpha/v1/models%0AX-Forwarded-Host:%20{target}", "gw", 400),
    ]
    got = []
    for path, host, _ in attempts:
        status, _, body = raw(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                                    .encode("latin-1"), timeout=60)
        assert b"canary" not in body
        got.append(status)
    canary.shutdown()
    assert Canary.hits == [], f"the activator reached a non-endpoint: {Canary.hits}"
    expected = [e for _, _, e in attempts]
    # A service the operator does not know is answered 404 once the operator says so, or 503 if the hold
    # ends first: both say "not here", neither reaches anything.
    assert [g if e != 503 else (503 if g in (404, 503) else g) for g, e in zip(got, expected)] == expected, \
        list(zip([p for p, _, _ in attempts], got))
    # What did go through went to alpha's own engine: it answers as alpha's model.
    with urllib.request.urlopen(f"{activator.url}/{namespace}/alpha/v1/models", timeout=10) as response:
        models = json.loads(response.read())
    assert [m["id"] for m in models["data"]] == ["alpha"]  # served name: the uri's last segment
