"""The models the gateway can route to: every InferenceService, by served name, from a watch.

Kept per service: its served name and its adapters' names, engine, creation time, how requests spread over its replicas
(spec.routing) and what its status says (desired replicas, Valid). The served-name owner is decided by the rule the operator reports conflicts with
(`planning.served_names`), so a request for a name goes where the operator says it goes.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from ..api.v1alpha1 import GROUP, PLURAL, VERSION
from ..planning.served_names import Claim, claims_of, owners
from ..routing.prefix import DEFAULT_PREFIX_CHARS
from .watching import list_then_watch

Key = tuple[str, str]


@dataclass(frozen=True)
class Entry:
    key: Key
    served_name: str
    engine: str
    created: str
    desired_replicas: int = 0
    valid: bool = True
    queue_depth: int | None = None  # the queue the autoscaler saw last (status.queueDepth)
    last_decision: dict | None = None  # status.lastDecision: replicas, reason, message, time
    routing: str = "least-loaded"  # spec.routing.policy
    prefix_chars: int = DEFAULT_PREFIX_CHARS  # spec.routing.prefixCharacters
    adapters: tuple[str, ...] = ()  # spec.adapters' names: models by name too, served on these replicas

    @property
    def claims(self) -> list[Claim]:
        return [Claim(self.key, name, self.created) for name in (self.served_name, *self.adapters)]


def entry_from_object(obj: dict) -> Entry | None:
    """The catalogue entry of an InferenceService body, or None when its spec names no model."""
    claims, status = claims_of(obj), obj.get("status") or {}
    engine = ((obj.get("spec") or {}).get("engine") or {}).get("type")
    if not claims or not engine:
        return None
    claim = claims[0]
    valid = next((c.get("status") != "False" for c in status.get("conditions") or [] if c.get("type") == "Valid"),
                 True)
    decision = status.get("lastDecision") if isinstance(status.get("lastDecision"), dict) else None
    queue = status.get("queueDepth")
    routing = (obj.get("spec") or {}).get("routing") or {}
    chars = routing.get("prefixCharacters")
    return Entry(claim.key, claim.served_name, engine, claim.created, int(status.get("desiredReplicas") or 0), valid,
                 queue if isinstance(queue, int) else None, decision,
                 "prefix" if routing.get("policy") == "prefix" else "least-loaded",
                 chars if isinstance(chars, int) and chars > 0 else DEFAULT_PREFIX_CHARS,
                 tuple(c.served_name for c in claims[1:]))


@dataclass
class Catalog:
    entries: dict[Key, Entry] = field(default_factory=dict)
    by_name: dict[str, Entry] = field(default_factory=dict)  # served name -> the owner's entry
    ready: threading.Event = field(default_factory=threading.Event)

    def put(self, entry: Entry) -> None:
        self.entries[entry.key] = entry
        self._reindex()

    def remove(self, key: Key) -> None:
        if self.entries.pop(key, None) is not None:
            self._reindex()

    def retain(self, keys: set[Key], namespace: str | None = None) -> None:
        """Drop entries a fresh listing (of one namespace, or all) no longer has."""
        for key in [k for k in self.entries if k not in keys and namespace in (None, k[0])]:
            del self.entries[key]
        self._reindex()

    def _reindex(self) -> None:
        won = owners(c for e in self.entries.values() for c in e.claims)
        self.by_name = {name: self.entries[claim.key] for name, claim in won.items()}

    def model(self, served_name: str) -> Entry | None:
        return self.by_name.get(served_name)


def watch_services(custom, catalog: Catalog, loop: asyncio.AbstractEventLoop, on_listed=None,
                   namespace: str | None = None) -> None:
    """Blocking: keep `catalog` equal to the InferenceServices of one namespace, or of all."""
    def key_of(obj) -> Key:
        meta = obj.get("metadata") or {}
        return meta.get("namespace"), meta.get("name")

    def listed(items: list) -> None:
        catalog.retain({key_of(o) for o in items}, namespace)
        for obj in items:
            changed("ADDED", obj)
        catalog.ready.set()
        if on_listed:
            on_listed()

    def changed(kind: str, obj: dict) -> None:
        entry = entry_from_object(obj) if kind != "DELETED" else None
        if entry is None:
            catalog.remove(key_of(obj))
        else:
            catalog.put(entry)

    if namespace:
        list_then_watch("InferenceService", loop, listed, changed, custom.list_namespaced_custom_object, GROUP,
                        VERSION, namespace, PLURAL)
    else:
        list_then_watch("InferenceService", loop, listed, changed, custom.list_cluster_custom_object, GROUP, VERSION,
                        PLURAL)
