"""Batches as InferenceBatch objects in the gateway's namespace (the Kubernetes side of the Batch API).

Every batch is published as an InferenceBatch named after it (or, for one created with kubectl, under the
name it was given), its status patched when its progress changes (at most about once a second while it
runs). An InferenceBatch that has no batch id yet was created with kubectl: it is handed to `adopt`, which
runs it as the key it names. Publishing blocks (the kubernetes client): callers run it in a thread, and a
failure is logged and retried at the next change, never stopping the batch."""

from __future__ import annotations

import logging

from ...api.batch import PLURAL
from ...api.v1alpha1 import GROUP, VERSION
from .records import FINAL

log = logging.getLogger("tidal.gateway.batches.mirror")


def object_name(batch: dict) -> str:
    return batch.get("inference_batch") or batch["id"]


def status_of(batch: dict) -> dict:
    counts = batch.get("request_counts") or {}
    errors = ((batch.get("errors") or {}).get("data") or [])
    return {"batchId": batch["id"], "state": batch["status"], "model": batch.get("model"),
            "total": counts.get("total", 0), "completed": counts.get("completed", 0),
            "failed": counts.get("failed", 0), "outputFileId": batch.get("output_file_id"),
            "errorFileId": batch.get("error_file_id"),
            "message": "; ".join(e.get("message", "") for e in errors[:5]) or None}


class KubeMirror:
    def __init__(self, custom, namespace: str):
        self.custom, self.namespace = custom, namespace
        self._created: set[str] = set()  # names this gateway made: their first event is not a kubectl batch
        self._published: dict[str, dict] = {}

    def publish(self, owner: str, batch: dict) -> None:
        from kubernetes.client.rest import ApiException

        name, status = object_name(batch), status_of(batch)
        if self._published.get(name) == status:
            return
        try:
            if name not in self._created and not batch.get("inference_batch"):
                self._created.add(name)
                body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceBatch",
                        "metadata": {"name": name, "labels": {"tidal.dev/created-by": "batches-api"}},
                        "spec": {"inputFileId": batch["input_file_id"], "endpoint": batch["endpoint"],
                                 "completionWindow": batch["completion_window"], "apiKeySecret": owner}}
                try:
                    self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
                except ApiException as err:
                    if err.status != 409:  # already there: a restarted gateway publishing again
                        raise
            self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, self.namespace, PLURAL, name,
                                                              {"status": status})
            if batch["status"] in FINAL:  # nothing changes after this: forget it (memory stays bounded
                self._published.pop(name, None)  # by the batches running, not by every batch ever run)
                self._created.discard(name)
            else:
                self._published[name] = status
        except ApiException as err:
            log.warning("InferenceBatch %s/%s not updated (%s %s); trying again at the next change",
                        self.namespace, name, err.status, err.reason)

    def report(self, name: str, status: dict) -> None:
        """Say on an InferenceBatch why it cannot run (no batch behind it)."""
        from kubernetes.client.rest import ApiException
        try:
            self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, self.namespace, PLURAL, name,
                                                              {"status": status})
        except ApiException as err:
            log.warning("InferenceBatch %s/%s not updated (%s %s)", self.namespace, name, err.status, err.reason)

    def created_here(self, name: str) -> bool:
        return name in self._created

    def watch(self, loop, adopt) -> None:
        """Blocking: hand every InferenceBatch without a batch id (one made with kubectl) to `adopt(obj)`
        on the loop."""
        from ..watching import list_then_watch

        def consider(obj) -> None:
            meta = obj.get("metadata") or {}
            name, ours = meta.get("name"), (meta.get("labels") or {}).get("tidal.dev/created-by") == "batches-api"
            if name and not ours and not (obj.get("status") or {}).get("batchId") and not self.created_here(name):
                adopt(obj)

        list_then_watch("inferencebatches", loop, lambda items: [consider(o) for o in items],
                        lambda kind, obj: consider(obj) if kind in ("ADDED", "MODIFIED") else None,
                        self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL)
