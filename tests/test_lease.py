"""Leader election's takeover rule, on synthetic time (the protocol runs against a real apiserver in
tests/cluster/test_chart.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidal.clients.lease import Observation, lease_is_free


def test_a_lease_nobody_holds_is_free():
    assert lease_is_free(None, "me", 15, now=0)
    assert lease_is_free(Observation("", "7", seen_at=100), "me", 15, now=100)


def test_our_own_lease_is_always_ours_to_renew():
    assert lease_is_free(Observation("me", "7", seen_at=100), "me", 15, now=100.1)


def test_another_holder_keeps_it_until_a_whole_duration_passed_unchanged_on_our_clock():
    seen = Observation("other", "7", seen_at=100)
    assert not lease_is_free(seen, "me", 15, now=114.9)
    assert lease_is_free(seen, "me", 15, now=115)


@given(seen_at=st.floats(0, 1e6), duration=st.floats(1, 600), waited=st.floats(0, 1e4))
def test_takeover_depends_only_on_how_long_we_saw_it_unchanged(seen_at, duration, waited):
    seen = Observation("other", "7", seen_at=seen_at)
    assert lease_is_free(seen, "me", duration, now=seen_at + waited) == (seen_at + waited >= seen_at + duration)
