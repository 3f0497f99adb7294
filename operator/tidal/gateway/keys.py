"""API keys: Kubernetes Secrets, checked on every request, changed without a restart.

A key is a Secret in the gateway's namespace labelled `tidal.dev/api-key: "true"` whose data `key`
holds the token. Annotations narrow and limit it (all optional):

    tidal.dev/models: "llama-3.1-8b,qwen-7b"      served names it may use (default: every model)
    tidal.dev/namespaces: "team-a"                 namespaces whose models it may use (default: all)
    tidal.dev/requests-per-minute: "600"
    tidal.dev/tokens-per-minute: "200000"
    tidal.dev/batch-enqueued-tokens: "5000000"   tokens its unfinished batches may hold (as OpenAI's batch queue limit)

Only a SHA-256 digest of each token is kept in memory. A presented token is hashed and looked up by
its digest, then compared with `hmac.compare_digest`: the time taken does not depend on how much of
a valid token a guess got right. The key's identity in metrics and logs is its Secret's name, never
the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from dataclasses import dataclass

log = logging.getLogger("tidal.gateway.keys")
KEY_LABEL = "tidal.dev/api-key"
TOKEN_FIELD = "key"
MODELS_ANNOTATION = "tidal.dev/models"
NAMESPACES_ANNOTATION = "tidal.dev/namespaces"
RPM_ANNOTATION = "tidal.dev/requests-per-minute"
TPM_ANNOTATION = "tidal.dev/tokens-per-minute"
# With the batch runner's process-local token, a request acts as the key this header names (batches/sender.py).
ON_BEHALF_HEADER = "X-Tidal-On-Behalf-Of"
BATCH_TOKENS_ANNOTATION = "tidal.dev/batch-enqueued-tokens"


@dataclass(frozen=True)
class ApiKey:
    id: str  # the Secret's name: what usage and limits are counted under
    digest: bytes
    models: frozenset[str] | None = None  # None: any model
    namespaces: frozenset[str] | None = None  # None: any namespace
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    batch_enqueued_tokens: int | None = None  # None: batches unlimited

    def may_use(self, model: str | None, namespace: str | None) -> bool:
        """Whether this key may use a model. An unknown model (namespace None) is refused by a key limited
        to namespaces, so that a 403 never tells such a key whether a model exists elsewhere."""
        if self.models is not None and model not in self.models:
            return False
        if self.namespaces is not None and namespace not in self.namespaces:
            return False
        return True


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _names(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset(n.strip() for n in value.split(",") if n.strip())


def _positive(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n > 0 else None


def key_from_secret(name: str, data: dict | None, annotations: dict | None) -> tuple[ApiKey | None, str | None]:
    """(key, None), or (None, why it is not a usable key) — the reason names the field, never the value."""
    raw = (data or {}).get(TOKEN_FIELD)
    if not raw:
        return None, f"Secret {name} has no data field {TOKEN_FIELD!r}"
    try:
        token = base64.b64decode(raw, validate=True).decode().strip()
    except (ValueError, UnicodeDecodeError):
        return None, f"Secret {name}: data field {TOKEN_FIELD!r} is not base64-encoded UTF-8"
    if len(token) < 16:
        return None, f"Secret {name}: the token in {TOKEN_FIELD!r} is shorter than 16 characters"
    notes = annotations or {}
    for field in (RPM_ANNOTATION, TPM_ANNOTATION, BATCH_TOKENS_ANNOTATION):
        if field in notes and _positive(notes[field]) is None:
            return None, f"Secret {name}: annotation {field} must be a positive integer, got {notes[field]!r}"
    return ApiKey(name, digest(token), _names(notes.get(MODELS_ANNOTATION)), _names(notes.get(NAMESPACES_ANNOTATION)),
                  _positive(notes.get(RPM_ANNOTATION)), _positive(notes.get(TPM_ANNOTATION)),
                  _positive(notes.get(BATCH_TOKENS_ANNOTATION))), None


class KeyRing:
    """The keys in force, by Secret name; kept current by a Secret watch."""

    def __init__(self) -> None:
        self._by_secret: dict[str, ApiKey] = {}
        self._by_digest: dict[bytes, ApiKey] = {}

    def __len__(self) -> int:
        return len(self._by_secret)

    def put(self, key: ApiKey) -> None:
        self.remove(key.id)
        self._by_secret[key.id] = key
        self._by_digest[key.digest] = key

    def remove(self, secret_name: str) -> None:
        old = self._by_secret.pop(secret_name, None)
        if old is not None and self._by_digest.get(old.digest) is old:
            del self._by_digest[old.digest]

    def names(self) -> list[str]:
        return list(self._by_secret)

    def get(self, secret_name: str) -> ApiKey | None:
        return self._by_secret.get(secret_name)

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The key an `Authorization: Bearer <token>` header presents, or None."""
        if not authorization or not authorization[:7].lower() == "bearer ":
            return None
        presented = digest(authorization[7:].strip())
        key = self._by_digest.get(presented)
        if key is None or not hmac.compare_digest(key.digest, presented):
            return None
        return key


def watch_keys(core, ring: KeyRing, loop, namespace: str, on_listed=None, on_removed=None) -> None:
    """Blocking: keep `ring` equal to the API-key Secrets of `namespace`. A change takes effect at the
    watch event (well under a second after `kubectl apply`/`delete`), without a restart."""
    from .watching import list_then_watch

    def put(secret) -> None:
        meta = secret.metadata
        key, why = key_from_secret(meta.name, secret.data, meta.annotations)
        if key is None:
            log.warning("API key not loaded: %s", why)  # names the Secret and the field, never a token
            ring.remove(meta.name)
        else:
            ring.put(key)

    def listed(secrets: list) -> None:
        names = {s.metadata.name for s in secrets}
        for name in [n for n in ring.names() if n not in names]:
            removed(name)
        for secret in secrets:
            put(secret)
        if on_listed:
            on_listed()

    def removed(name: str) -> None:
        ring.remove(name)
        if on_removed:
            on_removed(name)

    def changed(kind: str, secret) -> None:
        if kind == "DELETED":
            removed(secret.metadata.name)
        else:
            put(secret)

    list_then_watch("API-key Secret", loop, listed, changed, core.list_namespaced_secret, namespace,
                    label_selector=f"{KEY_LABEL}=true")
