"""Conditions as the Kubernetes API conventions describe them.

A condition's lastTransitionTime changes only when its status does, so an
unchanged situation produces an identical status and no write.
"""

from __future__ import annotations


def set_condition(conditions: list[dict], type_: str, status: str, reason: str, message: str,
                  generation: int, now: str) -> list[dict]:
    """A new list with `type_` set; the others are kept as they were."""
    previous = next((c for c in conditions if c.get("type") == type_), None)
    since = previous["lastTransitionTime"] if previous and previous.get("status") == status else now
    updated = {"type": type_, "status": status, "reason": reason, "message": message,
               "lastTransitionTime": since, "observedGeneration": generation}
    out = [c for c in conditions if c.get("type") != type_]
    out.append(updated)
    return sorted(out, key=lambda c: c["type"])


def get_condition(conditions: list[dict] | None, type_: str) -> dict | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)
