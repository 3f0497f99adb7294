"""Which InferenceService a request is for, and what goes upstream.

`route` (pure) reads the Host and the path:

- Host `<name>.<namespace>` (or `<name>.<namespace>.svc[.cluster.local]`): the path goes upstream as is;
- otherwise the path `/<namespace>/<name>/<rest>`: `/<rest>` goes upstream.

The Host form wins, except when it names the activator itself (its own Service), so that
`http://tidal-activator.tidal-system/<namespace>/<name>/v1/...` works too.

Paths under `/v1/` and `/v2/` are the one endpoint (OpenAI's API routed by the body's `model`, KServe v2
by the model in the path), never a namespace: a namespace named `v1` or `v2` is reached by Host.

`Router` turns a request into a `Call` (the service, the upstream path and body, the model for usage),
checking that the caller's key may use that model, and answers `/v1/models`.
"""

from __future__ import annotations

import json
import re

from aiohttp import web

from . import errors
from ..routing.prefix import chunk_digests
from ..routing.shared import SharedPrefixes
from ..strict_json import BadJson
from .call import Call
from .catalog import Catalog, Entry
from .endpoints import Endpoints
from .errors import gateway_error as _error
from .keys import ApiKey
from .openai_api import model_in_body, model_object, tokens_to_reserve, triton_model
from .usage import StreamMeter, ask_for_stream_usage

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_IP = re.compile(r"^[0-9.]+$|^\[")
API_PREFIXES = ("v1", "v2")


def _from_host(host: str | None) -> tuple[str, str] | None:
    if not host or _IP.match(host):
        return None
    labels = host.rsplit(":", 1)[0].split(".") if not host.startswith("[") else []
    if len(labels) >= 2 and _LABEL.match(labels[0]) and _LABEL.match(labels[1]) and \
            (len(labels) == 2 or labels[2] == "svc"):
        return labels[1], labels[0]
    return None


def route(path: str, host: str | None, own: tuple[str, str] | None = None) -> tuple[str, str, str] | None:
    """(namespace, name, upstream path) or None when the request names no service."""
    by_host = _from_host(host)
    if by_host and by_host != own:
        return by_host[0], by_host[1], path
    parts = path.split("/", 3)
    if len(parts) >= 3 and parts[1] not in API_PREFIXES and _LABEL.match(parts[1] or "") and \
            _LABEL.match(parts[2] or ""):
        return parts[1], parts[2], "/" + parts[3] if len(parts) == 4 else "/"
    return None


class Router:
    def __init__(self, catalog: Catalog, endpoints: Endpoints, own: tuple[str, str] | None = None):
        self.catalog, self.endpoints = catalog, endpoints
        self.own = own  # the gateway's own Service (namespace, name): a Host naming it names no model
        self.held = lambda key: 0  # requests held per service, for /v1/models (told by the gateway)
        self.shared = SharedPrefixes()  # where prompts part, so prefix keys reach past shared system prompts

    def target(self, request: web.Request, raw_path: str) -> tuple[str, str, str] | None:
        return route(raw_path, request.headers.get("Host"), self.own)

    def resolve(self, request: web.Request, raw_path: str, target: tuple[str, str, str] | None, body: bytes,
                key: ApiKey | None) -> Call | web.Response:
        """Which service a request is for (`target`: what Host or path named), whether its key may use it, and
        what to send upstream."""
        # OpenAI's API speaks JSON: its bodies are checked (and name the model). Other bodies pass as they are:
        # a KServe v2 request may be a JSON header followed by binary tensors.
        upstream_path = target[2] if target is not None else raw_path
        name, payload = None, None
        if request.method == "POST" and upstream_path.startswith("/v1/"):
            try:
                name, payload = model_in_body(body)
            except BadJson as err:
                return errors.bad_request(f"The request body is not acceptable JSON: {err}")
        if target is not None:  # Host or path names the service
            namespace, service, path = target
            entry = self.catalog.entries.get((namespace, service))
            model = entry.served_name if entry else None
        elif request.path.split("/", 2)[1] in API_PREFIXES:  # the one endpoint: the model picks the service
            path = raw_path
            model = name if request.path.startswith("/v1/") else triton_model(request.path)
            if not model:
                if request.path.startswith("/v1/"):
                    return errors.bad_request("the request body must be a JSON object naming a 'model'", "model")
                return errors.openai_error(404, f"no model in the path {request.path[:200]}: use "
                                                "/v2/models/<name>/...", "invalid_request_error", "model_not_found")
            entry = self.entry_for(key, model)
            if isinstance(entry, web.Response):
                return entry
            namespace, service = entry.key
        else:
            return _error(404, "UnknownService", "name a model (POST /v1/... with 'model', /v2/models/<name>/...) or "
                                                 "a service: /<namespace>/<name>/<path> or Host: <name>.<namespace>")
        if key is not None and not key.may_use(model, namespace):
            return errors.not_permitted(model or f"{namespace}/{service}")
        meter = None
        if payload is not None and payload.get("stream"):
            strip = ask_for_stream_usage(payload)
            if strip:
                body = json.dumps(payload).encode()
            meter = StreamMeter(strip)
        call = Call((namespace, service), path, body, key, model or "-", {}, meter)
        call.tokens_reserved = tokens_to_reserve(path, payload, len(body))
        if entry is not None and entry.routing == "prefix":
            call.prefix_key = self.shared.key(chunk_digests(payload, entry.prefix_chars))
        return call

    def entry_for(self, key: ApiKey | None, model: str) -> Entry | web.Response:
        """The model's entry if the key may use it; else the error the API gives (a key limited to other
        models learns nothing of this one: 403 before 404)."""
        entry = self.catalog.model(model)
        if key is not None and not key.may_use(model, entry.key[0] if entry else None):
            return errors.not_permitted(model)
        return entry if entry is not None else errors.unknown_model(model)

    def models(self, path: str, key: ApiKey | None) -> web.Response:
        """GET /v1/models (those the key may use) and /v1/models/<name>."""
        def obj(entry: Entry, name: str) -> dict:
            return model_object(entry, len(self.endpoints.get(entry.key)), self.held(entry.key), name)

        if path == "/v1/models":
            data = [obj(e, name) for name, e in sorted(self.catalog.by_name.items())
                    if key is None or key.may_use(name, e.key[0])]
            return web.json_response({"object": "list", "data": data})
        name = path[len("/v1/models/"):]
        entry = self.entry_for(key, name)
        return entry if isinstance(entry, web.Response) else web.json_response(obj(entry, name))
