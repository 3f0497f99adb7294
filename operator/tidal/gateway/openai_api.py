"""The one endpoint's own answers and its model lookup: `GET /v1/models`, `GET /v1/models/{id}`, and which
model a `/v1/...` or `/v2/models/{name}/...` request names.

Model objects are OpenAI's (`id`, `object`, `created`, `owned_by`) with Tidal's view of the service under
`tidal`: where it runs and whether it is ready, waking or at zero.
"""

from __future__ import annotations

import calendar
import time

from .. import strict_json
from .catalog import Entry


def model_in_body(body: bytes) -> tuple[str | None, dict | None]:
    """(the `model` field, the parsed object) of a JSON request body; (None, None) when there is none.
    Raises BadJson naming the problem when the body looks like JSON but is not JSON Tidal accepts."""
    if not body or body.lstrip()[:1] not in (b"{", b"["):
        return None, None
    payload = strict_json.loads(body)
    model = payload.get("model") if isinstance(payload, dict) else None
    return (model if isinstance(model, str) else None), (payload if isinstance(payload, dict) else None)


# What a request that leaves out max_tokens may generate, for the rate limiter's reservation: OpenAI's
# completions default to 16; chat and responses run to the model's context, so a reservation can only guess.
DEFAULT_COMPLETION_TOKENS = {"/v1/completions": 16, "/v1/embeddings": 0}
DEFAULT_GENERATED = 1024


def tokens_to_reserve(path: str, payload: dict | None, body_bytes: int) -> int:
    """Tokens a request may use, before it runs: its prompt (a quarter of the body's bytes, the usual bytes per
    token of English) plus what it may generate (max_tokens, max_completion_tokens or max_output_tokens, times
    n; else the endpoint's default)."""
    prompt = body_bytes // 4
    if payload is None:
        return prompt
    limit = next((payload[k] for k in ("max_completion_tokens", "max_tokens", "max_output_tokens")
                  if isinstance(payload.get(k), int) and payload[k] >= 0), None)
    if limit is None:
        limit = DEFAULT_COMPLETION_TOKENS.get(path.split("?", 1)[0], DEFAULT_GENERATED)
    n = payload.get("n") if isinstance(payload.get("n"), int) and 1 <= payload["n"] <= 128 else 1
    return prompt + limit * n


def triton_model(path: str) -> str | None:
    """The model a KServe v2 path names: /v2/models/{name}[/versions/{v}]/infer, .../ready, ..."""
    parts = path.split("/")
    if len(parts) >= 4 and parts[1] == "v2" and parts[2] == "models" and parts[3]:
        return parts[3]
    return None


def _created(entry: Entry) -> int:
    try:
        return calendar.timegm(time.strptime(entry.created, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return 0


def state(entry: Entry, ready: int, held: int) -> str:
    if not entry.valid:
        return "invalid"
    if ready:
        return "ready"
    if entry.desired_replicas or held:
        return "waking"
    return "scaled_to_zero"


def model_object(entry: Entry, ready: int, held: int, name: str | None = None) -> dict:
    """The model `name` (the entry's served name, or one of its adapters: then `parent` names the base, as vLLM
    lists its adapters)."""
    adapter = {"parent": entry.served_name} if name and name != entry.served_name else {}
    return {"id": name or entry.served_name, "object": "model", "created": _created(entry), "owned_by": entry.key[0],
            **adapter,
            "tidal": {"namespace": entry.key[0], "name": entry.key[1], "engine": entry.engine,
                      "state": state(entry, ready, held), "ready_replicas": ready,
                      "desired_replicas": entry.desired_replicas, "held_requests": held,
                      "queue": entry.queue_depth,
                      "last_decision": {k: entry.last_decision.get(k) for k in
                                        ("time", "previousReplicas", "replicas", "reason", "message")}
                      if entry.last_decision else None}}
