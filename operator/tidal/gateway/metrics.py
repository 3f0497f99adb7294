"""The gateway's Prometheus metrics: per service (namespace, inferenceservice) and per API key and model.

Per service: requests held and for how long, request duration and time to the first byte of the answer,
and the cold start as a client feels it — from the first request held while the service had no replica
to the first byte of an answer. Series are bounded by the services and keys that exist.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds: interactive answers are sub-second, a long generation minutes, a cold start up to half an hour.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640, 1800)


class Metrics:
    def __init__(self, hold_timeout_s: float = 300.0):
        self.registry = r = CollectorRegistry()
        labels = ["namespace", "tidal_dev_inferenceservice"]
        self.pending = Gauge("tidal_activator_pending_requests", "Requests held: the service has no ready "
                             "replica, or every ready replica has its capacity in flight.", labels, registry=r)
        self.batch_backlog = Gauge("tidal_gateway_batch_backlog_requests", "Requests of running batches not "
                                   "sent yet: demand the autoscaler adds to the queue.", labels, registry=r)
        self.inflight = Gauge("tidal_activator_inflight_requests", "Requests being proxied.", labels, registry=r)
        self.responses = Counter("tidal_activator_responses", "Responses by status class.", labels + ["code"],
                                 registry=r)
        self.duration = Histogram("tidal_gateway_request_duration_seconds", "From the request's arrival to the "
                                  "end of its answer, holding included.", labels, buckets=LATENCY_BUCKETS, registry=r)
        self.first_byte = Histogram("tidal_gateway_time_to_first_byte_seconds", "From the request's arrival to the "
                                    "first byte of the engine's answer, holding included.", labels,
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.held = Histogram("tidal_gateway_held_seconds", "How long held requests waited for a replica (no "
                              "replica ready, or all at capacity).", labels, buckets=LATENCY_BUCKETS, registry=r)
        self.cold_start = Histogram("tidal_gateway_cold_start_seconds", "From the first request held while the "
                                    "service had no replica to the first byte of an answer: the cold start as "
                                    "a client feels it.", labels, buckets=LATENCY_BUCKETS, registry=r)
        self.retried = Counter("tidal_gateway_retried_requests", "Requests a replica gave back unprocessed and "
                               "the gateway sent to another replica, by why: connection (refused or closed), "
                               "draining (the engine's shutdown refusal, or 503), empty (aborted before its "
                               "first token).", labels + ["why"], registry=r)
        self.routed = Counter("tidal_gateway_routed_requests", "Requests sent to a replica, by how it was chosen: "
                              "least-loaded, prefix (the replica owning the prompt's prefix), overflow (the owner "
                              "was over its load bound: the next one on the ring).", labels + ["how"], registry=r)
        self.hold_timeout = Gauge("tidal_gateway_hold_timeout_seconds", "Held requests are answered 503 after "
                                  "this long (--hold-timeout).", registry=r)
        self.hold_timeout.set(hold_timeout_s)
        usage = ["key", "model"]  # key: the API key's Secret name ("-" with keys off); model: the served name
        self.requests = Counter("tidal_gateway_requests", "Requests by API key, model and status class.",
                                usage + ["code"], registry=r)
        self.prompt_tokens = Counter("tidal_gateway_prompt_tokens", "Prompt tokens, from the engines' answers.",
                                     usage, registry=r)
        self.completion_tokens = Counter("tidal_gateway_completion_tokens", "Completion tokens, from the engines' "
                                         "answers.", usage, registry=r)
        self._cold_since: dict[tuple[str, str], float] = {}

    def cold(self, key: tuple[str, str], now: float) -> None:
        """A request found the service without any replica: its cold start (as clients feel it) runs."""
        self._cold_since.setdefault(key, now)

    def answered(self, key: tuple[str, str], arrived: float, first_byte: float) -> None:
        self.first_byte.labels(*key).observe(first_byte - arrived)
        since = self._cold_since.pop(key, None)
        if since is not None:
            self.cold_start.labels(*key).observe(first_byte - since)

    def forget_cold(self, key: tuple[str, str]) -> None:
        """The service's held requests all ended without an answer (timed out, unknown service)."""
        self._cold_since.pop(key, None)
