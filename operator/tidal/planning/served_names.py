"""Which InferenceService answers to a served name (the OpenAI `model`, Triton's model name).

Two services may claim one name (two namespaces, or a copy being tried out). The gateway routes the
name to one of them and the operator tells the other, both by this rule, so they always agree: the
oldest claim wins (creationTimestamp), then namespace/name in alphabetical order for a tie within
the same second. A newcomer therefore never takes a name away from a service that clients already use.
A service's LoRA adapters (spec.adapters) are names it claims too, by the same rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Claim:
    key: Key
    served_name: str
    created: str  # RFC 3339 creationTimestamp; these sort in time order as strings

    @property
    def rank(self) -> tuple[str, str, str]:
        return (self.created, *self.key)


def owners(claims: Iterable[Claim]) -> dict[str, Claim]:
    """served name -> the claim that wins it."""
    won: dict[str, Claim] = {}
    for claim in claims:
        best = won.get(claim.served_name)
        if best is None or claim.rank < best.rank:
            won[claim.served_name] = claim
    return won


def conflict(mine: Claim, claims: Iterable[Claim]) -> Claim | None:
    """The claim that wins `mine`'s served name, when it is another service's; else None."""
    winner = owners([c for c in claims if c.served_name == mine.served_name] + [mine])[mine.served_name]
    return None if winner.key == mine.key else winner


def claim_of(body: dict) -> Claim | None:
    """The served name an InferenceService body claims (its spec's servedName, else the uri's last
    segment, as `Model.served_name` says), read without a full parse; None when it names no model."""
    meta, model = body.get("metadata") or {}, (body.get("spec") or {}).get("model") or {}
    uri = model.get("uri")
    if not isinstance(uri, str) or "://" not in uri:
        return None
    served = model.get("servedName") or uri.split("://", 1)[1].rstrip("/").rsplit("/", 1)[-1]
    return Claim((meta.get("namespace"), meta.get("name")), served, meta.get("creationTimestamp") or "")


def claims_of(body: dict) -> list[Claim]:
    """Every name an InferenceService body claims: its model's served name first, then its adapters' names."""
    base = claim_of(body)
    if base is None:
        return []
    adapters = (body.get("spec") or {}).get("adapters") or []
    names = [a.get("name") for a in adapters if isinstance(a, dict) and isinstance(a.get("name"), str)]
    return [base, *(Claim(base.key, n, base.created) for n in dict.fromkeys(names) if n != base.served_name)]
