"""How many examples a property test runs: its own number in CI (derandomised, the same every run), and at
least ten times as many, at random, under `make test-properties-random` (TIDAL_HYPOTHESIS_PROFILE=random).
An explicit max_examples in @settings overrides the profile, so tests ask here instead of writing a number."""

from __future__ import annotations

import os


def examples(ci: int) -> int:
    return ci if os.environ.get("TIDAL_HYPOTHESIS_PROFILE", "ci") == "ci" else max(10 * ci, 5000)
