"""Prometheus, as the autoscaler reads it: one instant query per tick for every service.

The engines' queue and KV-cache usage gauges are summed per (namespace, InferenceService) in a single query,
grouped by pod and metric name, together with `up` (how many of the service's pods Prometheus scrapes):

  sum by (namespace, <service label>, pod, __name__) ({__name__=~"vllm:num_requests_waiting|...|up"})
  or label_replace(time() - timestamp({__name__=~"<queue gauges>"}) ..., "tidal_scrape", "age", "", "")

The second part is how old each pod's queue gauge is (Prometheus's own clock on both sides, so no clock skew):
the autoscaler dates what it saw by when it was scraped (autoscaling.decide.measured_at). Its extra label keeps
`or` from taking it for the pod's gauge of the same labels (`or` matches label sets without the metric name).

Edge cases, each decided here once: an HTTP error, a timeout or a malformed answer raise
PrometheusError (the autoscaler then holds every service); NaN or ±Inf make that one service's
load unknown; several series of one service are summed by the query; an empty result is "no
series", which the autoscaler treats as unknown for a service whose pods should be reporting.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from ..engines import ENGINES

# The activator's gauge of requests it holds for a service that is at zero or waking.
ACTIVATOR_PENDING = "tidal_activator_pending_requests"
# The gateway's gauge of batch requests not sent yet (a queue the engines do not see yet).
BATCH_BACKLOG = "tidal_gateway_batch_backlog_requests"


# The label marking the query's scrape-age series (see the module's docstring).
SCRAPE_AGE = ("tidal_scrape", "age")


class PrometheusError(RuntimeError):
    pass


@dataclass
class ServiceLoad:
    waiting: float = 0.0
    running: float = 0.0
    pending: float = 0.0
    batch_backlog: float = 0.0
    targets_up: float = 0.0
    scrape_age_s: float | None = None  # how long ago the freshest of its queue gauges was scraped
    kv_usage_sum: float = 0.0  # its pods' KV-cache usage gauges (0..1), summed, and how many pods have one
    kv_pods: int = 0
    running_pods: set[str] = field(default_factory=set)  # pods whose in-flight gauge is summed in `running`
    unknown: bool = False  # a NaN/Inf sample: the numbers above cannot be trusted
    seen: set[str] = field(default_factory=set)  # metric names present

    @property
    def kv_usage(self) -> float | None:
        """The mean fraction of its pods' KV caches in use; None if no pod exports the gauge."""
        return self.kv_usage_sum / self.kv_pods if self.kv_pods else None


def signal_metrics() -> tuple[set[str], set[str]]:
    """(waiting metrics, running metrics) of every registered engine."""
    waiting = {e.queue_metric for e in ENGINES.values()}
    running = {e.inflight_metric for e in ENGINES.values() if e.inflight_metric}
    return waiting, running


def kv_usage_metrics() -> set[str]:
    """Every registered engine's KV-cache usage gauge."""
    return {e.kv_usage_metric for e in ENGINES.values() if e.kv_usage_metric}


def batched_query(service_label: str) -> str:
    """Summed per pod, not per service: the autoscaler must be able to leave out a pod that is gone
    (see `service_loads`). 2,000 services of 2 pods, each pod 4 series and a scrape age, is 20,000 small samples."""
    waiting, running = signal_metrics()
    names = "|".join(sorted(waiting | running | kv_usage_metrics() | {ACTIVATOR_PENDING, BATCH_BACKLOG, "up"}))
    queues = "|".join(sorted(waiting))
    ages = (f'min by (namespace, {service_label}, pod) '
            f'(time() - timestamp({{__name__=~"{queues}", {service_label}!=""}}))')
    return (f'sum by (namespace, {service_label}, pod, __name__) ({{__name__=~"{names}", {service_label}!=""}})'
            f' or label_replace({ages}, "{SCRAPE_AGE[0]}", "{SCRAPE_AGE[1]}", "", "")')


class Prometheus:
    def __init__(self, url: str, service_label: str = "tidal_dev_inferenceservice", timeout: float = 2.0):
        self.url = url
        self.service_label = service_label
        self.timeout = timeout
        session = requests.Session()
        # Fail fast: an outage must be noticed in one tick, not after urllib3's retries.
        self._client = PrometheusConnect(url=url, disable_ssl=True, retry=Retry(total=0), session=session,
                                         timeout=timeout)
        self.queries = 0

    async def query(self, promql: str) -> list[dict]:
        self.queries += 1
        try:
            result = await asyncio.to_thread(self._client.custom_query, promql, None, self.timeout)
        except PrometheusApiClientException as err:
            raise PrometheusError(f"Prometheus at {self.url} answered an error: {err}") from err
        except (requests.RequestException, ValueError) as err:
            raise PrometheusError(f"Prometheus at {self.url} unreachable: {type(err).__name__}: {err}") from err
        if not isinstance(result, list):
            raise PrometheusError(f"Prometheus at {self.url} returned {type(result).__name__}, not a vector")
        return result

    async def range_query(self, promql: str, start: float, end: float, step: float) -> list[dict]:
        """A query over time (for pictures, not decisions): [{"metric": {...}, "values": [[t, "v"], ...]}]."""
        import datetime
        self.queries += 1
        when = [datetime.datetime.fromtimestamp(t, datetime.timezone.utc) for t in (start, end)]
        try:
            result = await asyncio.to_thread(self._client.custom_query_range, promql, when[0], when[1], f"{step:g}s")
        except PrometheusApiClientException as err:
            raise PrometheusError(f"Prometheus at {self.url} answered an error: {err}") from err
        except (requests.RequestException, ValueError) as err:
            raise PrometheusError(f"Prometheus at {self.url} unreachable: {type(err).__name__}: {err}") from err
        return result if isinstance(result, list) else []

    async def service_loads(self, gone: Callable[[tuple[str, str], str], bool] = lambda key, pod: False
                            ) -> dict[tuple[str, str], ServiceLoad]:
        """Every service's load from one query. `gone(key, pod)` names pods known to have been deleted:
        their series are left out. Prometheus marks a vanished target's series stale only if it was
        running when the target went; a pod deleted during a Prometheus restart keeps showing its last
        (busy) samples for the 5-minute lookback, and counting them would hold a replica for minutes."""
        waiting, running = signal_metrics()
        kv_usage = kv_usage_metrics()
        loads: dict[tuple[str, str], ServiceLoad] = {}
        for series in await self.query(batched_query(self.service_label)):
            labels = series.get("metric", {})
            key = (labels.get("namespace", ""), labels.get(self.service_label, ""))
            if labels.get("pod") and gone(key, labels["pod"]):
                continue
            try:
                value = float(series["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                raise PrometheusError(f"malformed sample from Prometheus: {series!r}") from None
            load = loads.setdefault(key, ServiceLoad())
            if labels.get(SCRAPE_AGE[0]) == SCRAPE_AGE[1]:
                if math.isfinite(value):  # the freshest pod's: a reading is never dated older than it is
                    load.scrape_age_s = max(0.0, min(value, load.scrape_age_s if load.scrape_age_s is not None
                                                     else math.inf))
                continue
            name = labels.get("__name__", "")
            load.seen.add(name)
            if not math.isfinite(value):
                load.unknown = True
                continue
            if name in waiting:
                load.waiting += value
            elif name in running:
                load.running += value
                load.running_pods.add(labels.get("pod", ""))
            elif name == ACTIVATOR_PENDING:
                load.pending += value
            elif name == BATCH_BACKLOG:
                load.batch_backlog += value
            elif name == "up":
                load.targets_up += value
            elif name in kv_usage:
                load.kv_usage_sum += value
                load.kv_pods += 1
        return loads

    async def scalar(self, promql: str) -> float | None:
        """A custom query's single value; None for an empty result or a non-finite value."""
        result = await self.query(promql)
        if not result:
            return None
        try:
            value = sum(float(s["value"][1]) for s in result)
        except (KeyError, IndexError, TypeError, ValueError):
            raise PrometheusError(f"malformed sample from Prometheus: {result[:1]!r}") from None
        return value if math.isfinite(value) else None
