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


def test_the_activator_proxies_only_to_the_named_services_replicas(operator, activator, kubectl, namespace):
    apply(kubectl, namespace, service("alpha", minReplicas=1))
    wait_condition(kubectl, namespace, "alpha", "Ready", "True", "ModelReady")
    canary = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canary)
    threading.Thread(target=canary.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{canary.server_address[1]}"
    Canary.hits.clear()
    attempts = [  # (path, Host header) of requests that try to reach something else
        (f"/{target}/v1/models", None),
        ("/v1/models", target),
        (f"/{namespace}/alpha/../../{target}/v1/models", None),
        (f"/{namespace}/alpha/%2e%2e/%2e%2e/{target}", None),
        (f"/{namespace}/alpha/@{target}/v1/models", None),
        (f"/{namespace}/alpha//{target}/v1/models", None),
        ("/kube-system/kube-dns/", None),
        (f"/{namespace}/nonexistent/v1/models", None),
        ("/v1/models", f"alpha.{namespace}.svc@{target}"),
        ("/v1/models", f"{target}\r\nX-Injected: 1"),
    ]
    statuses = []
    for path, host in attempts:
        request = urllib.request.Request(activator.url + path, headers={"Host": host} if host else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read().decode()
                statuses.append(response.status)
                assert "canary" not in body
        except urllib.error.HTTPError as err:
            statuses.append(err.code)
        except (ValueError, urllib.error.URLError):  # the client itself refused a hostile header
            statuses.append(None)
    canary.shutdown()
    assert Canary.hits == [], f"the activator reached a non-endpoint: {Canary.hits}"
    # What did go through went to alpha's own engine: it answers as alpha's model.
    with urllib.request.urlopen(f"{activator.url}/{namespace}/alpha/v1/models", timeout=10) as response:
        models = json.loads(response.read())
    assert [m["id"] for m in models["data"]] == ["alpha"]  # served name: the uri's last segment
    assert all(s in (200, 400, 404, 503, None) for s in statuses), statuses
