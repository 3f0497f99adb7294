"""The Kubernetes API, as the operator uses it: a narrow async interface.

The official client is blocking; every call runs in a worker thread so the
event loop never waits on the network. Objects go in and come out as plain
dicts (the JSON the apiserver speaks), which is what the renderers produce.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import re
import socket
from dataclasses import dataclass

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from ..api.v1alpha1 import GROUP, PLURAL, VERSION

log = logging.getLogger("tidal.kube")
OPERATOR_MANAGER = "tidal-operator"
AUTOSCALER_MANAGER = "tidal-autoscaler"


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    if kubeconfig:
        api = config.new_client_from_config(config_file=kubeconfig)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.ApiClient()
    # Names the replica in the apiserver's audit log: which of two operator pods wrote what.
    api.user_agent = f"tidal/{os.environ.get('POD_NAME') or socket.gethostname()}"
    return api


_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def yaml_safe_json(obj) -> str:
    """JSON that a YAML parser reads back as the same object.

    An apply body is parsed as YAML. JSON is almost YAML, but not quite: JSON writes a character
    beyond U+FFFF as a surrogate pair (\\ud83d\\ude00), which YAML refuses, and it leaves DEL and the
    C1 controls raw, which YAML refuses too. Found by fuzzing: an env value with such a character
    made every apply of that service fail. ASCII-only JSON with each pair rewritten as YAML's
    8-digit escape (\\U0001f600) is read back exactly.
    """
    def combine(match: re.Match) -> str:
        high, low = int(match.group(2), 16), int(match.group(3), 16)
        return f"{match.group(1)}\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08x}"
    return _SURROGATE_PAIR.sub(combine, json.dumps(obj, ensure_ascii=True))


class Rejected(ValueError):
    """The apiserver refused an object as invalid (not as unavailable): retrying cannot help."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message


def unreachable(err: BaseException) -> str | None:
    """One line for an error that says the apiserver is away or overloaded (it will pass: retry
    quietly), or None for an error about the request itself (worth a traceback)."""
    if isinstance(err, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
        reason = getattr(err, "reason", None) or err
        return f"Kubernetes API unreachable: {type(reason).__name__}: {str(reason)[:200]}"
    if isinstance(err, ApiException) and (err.status == 429 or (err.status or 0) >= 500):
        return f"Kubernetes API answered {err.status} {err.reason}"
    return None


class Conflict(RuntimeError):
    """The object changed under us (optimistic concurrency); read it again and retry."""


def _json(response) -> dict:
    return json.loads(response.data)


@dataclass
class RequestCounter:
    """Counts API requests by verb, so 'no writes when nothing changes' can be measured."""

    reads: int = 0
    writes: int = 0


class Kube:
    def __init__(self, api_client: client.ApiClient):
        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.counter = RequestCounter()

    async def _read(self, fn, *args, **kwargs):
        self.counter.reads += 1
        return await asyncio.to_thread(fn, *args, _preload_content=False, **kwargs)

    async def _write(self, fn, *args, **kwargs):
        self.counter.writes += 1
        return await asyncio.to_thread(fn, *args, _preload_content=False, **kwargs)

    async def review_token(self, token: str, audience: str) -> dict:
        """The apiserver's verdict on a ServiceAccount token for one audience: TokenReview's status."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [audience]}}
        api = client.AuthenticationV1Api(self.api)
        # Not counted as a write: it changes nothing in the cluster.
        response = await asyncio.to_thread(api.create_token_review, body, _preload_content=False)
        return _json(response).get("status") or {}

    # ---- reads ----------------------------------------------------------------------------------
    async def _get_or_none(self, fn, *args) -> dict | None:
        """One object, or None when it does not exist."""
        try:
            return _json(await self._read(fn, *args))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    async def get_deployment(self, namespace: str, name: str) -> dict | None:
        return await self._get_or_none(self.apps.read_namespaced_deployment, name, namespace)

    async def get_service(self, namespace: str, name: str) -> dict | None:
        return await self._get_or_none(self.core.read_namespaced_service, name, namespace)

    async def get_daemonset(self, namespace: str, name: str) -> dict | None:
        return await self._get_or_none(self.apps.read_namespaced_daemon_set, name, namespace)

    async def get_network_policy(self, namespace: str, name: str) -> dict | None:
        return await self._get_or_none(self.networking.read_namespaced_network_policy, name, namespace)

    async def get_inference_service(self, namespace: str, name: str) -> dict | None:
        return await self._get_or_none(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace,
                                       PLURAL, name)

    async def list_pods(self, namespace: str, selector: str) -> list[dict]:
        return _json(await self._read(self.core.list_namespaced_pod, namespace, label_selector=selector))["items"]

    async def list_nodes(self, selector: str = "") -> list[dict]:
        return _json(await self._read(self.core.list_node, label_selector=selector))["items"]

    async def exists(self, kind: str, namespace: str, name: str) -> bool:
        """Whether a Secret or PersistentVolumeClaim exists (its content is not looked at)."""
        fn = {"Secret": self.core.read_namespaced_secret,
              "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim}[kind]
        return await self._get_or_none(fn, name, namespace) is not None

    # ---- writes ---------------------------------------------------------------------------------
    async def apply(self, obj: dict, manager: str = OPERATOR_MANAGER) -> dict:
        """Server-side apply: we own exactly the fields we send."""
        kind, meta = obj["kind"], obj["metadata"]
        path = {"Deployment": "/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
                "Service": "/api/v1/namespaces/{namespace}/services/{name}",
                "DaemonSet": "/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}",
                "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{name}"}[kind]
        self.counter.writes += 1
        return await asyncio.to_thread(self._apply_sync, path.format(**meta), obj, manager)

    def _apply_sync(self, path: str, obj: dict, manager: str) -> dict:
        body = yaml_safe_json(obj).encode()
        api = self.core.api_client
        method, url, headers, _, _ = api.param_serialize(
            method="PATCH", resource_path=path, query_params=[("fieldManager", manager), ("force", "true")],
            header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
            auth_settings=["BearerToken"])
        response = api.call_api(method, url, header_params=headers, body=body)
        response.read()
        if response.status in (400, 422) or (response.status == 500 and b"failed to create typed patch" in response.data):
            try:
                message = json.loads(response.data).get("message", "")
            except ValueError:
                message = response.data.decode(errors="replace")
            raise Rejected(obj["kind"], message[:500])
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=response.data.decode(errors="replace"),
                                             data=None)
        return json.loads(response.data)

    async def delete_daemonset(self, namespace: str, name: str) -> None:
        try:
            await self._write(self.apps.delete_namespaced_daemon_set, name, namespace)
        except ApiException as err:
            if err.status != 404:
                raise

    async def label_node(self, name: str, labels: dict[str, str | None]) -> dict:
        """Set (or, with None, remove) labels on a node; nothing else about it is touched."""
        return _json(await self._write(self.core.patch_node, name, {"metadata": {"labels": labels}},
                                       _content_type="application/merge-patch+json"))

    async def patch_status(self, namespace: str, name: str, status: dict, resource_version: str | None) -> dict:
        """Replace the status, only if the object is still at `resource_version` (else Conflict)."""
        body = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            return _json(await self._write(self.custom.patch_namespaced_custom_object_status, GROUP, VERSION,
                                           namespace, PLURAL, name, body,
                                           _content_type="application/merge-patch+json"))
        except ApiException as err:
            if err.status == 409:
                raise Conflict(f"{namespace}/{name} changed since resourceVersion {resource_version}") from err
            raise

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Set a Deployment's replicas as the autoscaler: it owns spec.replicas and nothing else."""
        await self.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                          "metadata": {"name": name, "namespace": namespace}, "spec": {"replicas": replicas}},
                         manager=AUTOSCALER_MANAGER)

    async def event(self, involved: dict, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about an object, as `kubectl describe` shows them."""
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": "tidal"}, "reportingComponent": "tidal.dev/operator",
            "reportingInstance": "tidal", "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            await self._write(self.core.create_namespaced_event, meta["namespace"], body)
        except ApiException as err:  # an Event is best effort; never fail a reconcile over it
            log.warning("could not record event %s on %s/%s: %s", reason, meta["namespace"], meta["name"],
                        err.reason)


def manages(obj: dict, manager: str, *path: str) -> bool:
    """Whether `manager` owns the field at `path` (e.g. "spec", "replicas") per managedFields."""
    for entry in obj.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") != manager:
            continue
        node = entry.get("fieldsV1") or {}
        for part in path:
            node = node.get(f"f:{part}")
            if node is None:
                break
        else:
            return True
    return False
