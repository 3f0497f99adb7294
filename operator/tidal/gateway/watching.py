"""List, then watch, forever: the one loop behind the gateway's three watches (pods, InferenceServices,
API-key Secrets). Relists after any error — the apiserver restarting, a dropped connection, an
expired resourceVersion — so the gateway's view heals by itself. Runs in a thread (the kubernetes
client blocks); callbacks are handed to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("tidal.gateway.watch")


def _get(obj, field: str):
    return obj.get(field) if isinstance(obj, dict) else getattr(obj, field)


def list_then_watch(what: str, loop: asyncio.AbstractEventLoop, on_listing: Callable[[list], None],
                    on_event: Callable[[str, object], None], lister: Callable, *args, **scope) -> None:
    """Blocking. `on_listing(items)` after each full listing, `on_event(type, object)` for each change;
    both run on `loop`. `lister(*args, **scope)` is a list call of the kubernetes client, passed as
    itself (its docstring tells the watch which type to decode, so no wrapper around it)."""
    from kubernetes import watch
    from kubernetes.client.rest import ApiException

    while True:
        try:
            listing = lister(*args, **scope)
            items = list(_get(listing, "items") or [])
            loop.call_soon_threadsafe(on_listing, items)
            rv = _get(_get(listing, "metadata"), "resource_version" if not isinstance(listing, dict)
                      else "resourceVersion")
            while True:
                for event in watch.Watch().stream(lister, *args, **scope, resource_version=rv, timeout_seconds=300):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raw = event.get("raw_object") or {}
                        raise ApiException(status=raw.get("code", 500))
                    meta = _get(obj, "metadata")
                    rv = _get(meta, "resourceVersion" if isinstance(meta, dict) else "resource_version") or rv
                    loop.call_soon_threadsafe(on_event, event["type"], obj)
        except ApiException as err:
            if err.status == 410:  # our resourceVersion expired: relist at once
                continue
            log.warning("%s watch failed (%s); relisting in 1 s", what, err.status)
        except Exception as err:  # the apiserver restarting, a dropped connection
            log.warning("%s watch interrupted (%s); relisting in 1 s", what, err)
        threading.Event().wait(1)
