"""The operator's memory of deleted pods: what the autoscaler leaves out of Prometheus' answer."""

from tidal.controller.store import DEPARTED_PER_SERVICE, ServiceStore

CHAT, OTHER = ("ns", "chat"), ("ns", "other")


def test_a_deleted_pod_is_departed_for_its_service_only():
    store = ServiceStore()
    store.pod_departed(CHAT, "chat-a", now=100.0)
    assert store.is_departed(CHAT, "chat-a")
    assert not store.is_departed(CHAT, "chat-b") and not store.is_departed(OTHER, "chat-a")


def test_a_pod_seen_again_is_no_longer_departed():
    store = ServiceStore()
    store.pod_departed(CHAT, "chat-a", now=100.0)
    store.pod_present(CHAT, "chat-a")
    assert not store.is_departed(CHAT, "chat-a") and store.departed == {}


def test_departed_pods_are_forgotten_after_the_cutoff_and_with_their_service():
    store = ServiceStore()
    store.pod_departed(CHAT, "old", now=100.0)
    store.pod_departed(CHAT, "new", now=700.0)
    store.pod_departed(OTHER, "gone", now=100.0)
    store.forget_departed_before(650.0)
    assert store.departed == {CHAT: {"new": 700.0}}
    store.drop_service(CHAT)
    assert store.departed == {}


def test_memory_per_service_is_bounded_and_keeps_the_newest():
    store = ServiceStore()
    for i in range(DEPARTED_PER_SERVICE + 50):
        store.pod_departed(CHAT, f"pod-{i}", now=float(i))
    assert len(store.departed[CHAT]) == DEPARTED_PER_SERVICE
    assert store.is_departed(CHAT, f"pod-{DEPARTED_PER_SERVICE + 49}") and not store.is_departed(CHAT, "pod-0")
