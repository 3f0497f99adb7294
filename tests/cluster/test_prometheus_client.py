"""The Prometheus client's edge cases, against the test cluster's real Prometheus server scraping a
local exporter whose series each test sets: several series of one service, NaN, an empty result,
pods known to be gone, an error answer, a timeout, a refused connection. Only the HTTP 5xx answer
comes from a stand-in server: a real Prometheus gives one only on a query timeout, which this
machine cannot provoke on demand (the test says so)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.cluster.test_smoke import wait_for
from tests.exposition import TextServer
from tidal.clients.prometheus import Prometheus, PrometheusError
from tidal_dev.cluster.processes import free_port, http_ok

pytestmark = pytest.mark.cluster

LABEL = "tidal_dev_inferenceservice"


def series(name: str, namespace: str, service: str, pod: str, value: str) -> str:
    return f'{name}{{namespace="{namespace}",{LABEL}="{service}",pod="{pod}"}} {value}\n'


@pytest.fixture(scope="module")
def exporter(dev_cluster):
    """Serves whatever exposition text `.text` holds, as an engine's /metrics would."""
    with TextServer().scraped_by(dev_cluster.state_dir, "prometheus-client-test", job="prometheus-client-test") as exp:
        yield exp


def loads_once_scraped(prometheus: Prometheus, namespace: str, expect_services: int, **kwargs):
    """The loads of `namespace` once Prometheus has scraped what the exporter serves now."""
    def scraped():
        loads = asyncio.run(prometheus.service_loads(**kwargs))
        mine = {k: v for k, v in loads.items() if k[0] == namespace}
        return mine if len(mine) == expect_services else None
    return wait_for(scraped, timeout=30, interval=0.5, what=f"{expect_services} services of {namespace} scraped")


def test_series_of_several_pods_are_summed_per_service_and_a_departed_pod_is_left_out(dev_cluster, exporter):
    exporter.text = (series("vllm:num_requests_waiting", "pc-sum", "chat", "chat-a", "3")
                     + series("vllm:num_requests_waiting", "pc-sum", "chat", "chat-b", "4")
                     + series("vllm:num_requests_running", "pc-sum", "chat", "chat-a", "48")
                     + series("vllm:num_requests_running", "pc-sum", "chat", "chat-b", "10")
                     + series("vllm:kv_cache_usage_perc", "pc-sum", "chat", "chat-a", "0.9")
                     + series("vllm:kv_cache_usage_perc", "pc-sum", "chat", "chat-b", "0.5")
                     + series("nv_inference_pending_request_count", "pc-sum", "vision", "vision-a", "2")
                     + 'vllm:num_requests_waiting{namespace="pc-sum",pod="stray"} 99\n')  # no service label
    prometheus = Prometheus(dev_cluster.prometheus_url)
    loads = loads_once_scraped(prometheus, "pc-sum", 2)
    chat, vision = loads[("pc-sum", "chat")], loads[("pc-sum", "vision")]
    assert (chat.waiting, chat.running, chat.unknown) == (7, 58, False)
    assert (vision.waiting, vision.running) == (2, 0)
    assert chat.kv_usage == pytest.approx(0.7) and vision.kv_usage is None  # the pods' mean; Triton has none
    assert chat.running_pods == {"chat-a", "chat-b"} and not vision.running_pods  # whose batches `running` sums
    assert "vllm:num_requests_waiting" in chat.seen and "up" not in chat.seen  # `up` carries no service label here
    # How old the scrape is, by Prometheus's own clock: the test cluster scrapes every second (conftest), so
    # within about a second (a slow scrape, a loaded machine: 3 s); a quarter of an hour would be the lookback.
    assert 0 <= chat.scrape_age_s <= 3 and 0 <= vision.scrape_age_s <= 3
    # A pod the watch saw deleted: its series are history, not load.
    gone = loads_once_scraped(prometheus, "pc-sum", 2, gone=lambda key, pod: pod == "chat-b")
    assert (gone[("pc-sum", "chat")].waiting, gone[("pc-sum", "chat")].running) == (3, 48)
    assert gone[("pc-sum", "chat")].kv_usage == pytest.approx(0.9) and gone[("pc-sum", "chat")].running_pods == {"chat-a"}
    assert prometheus.queries >= 2


def test_a_nan_sample_makes_only_that_service_unknown(dev_cluster, exporter):
    exporter.text = (series("vllm:num_requests_waiting", "pc-nan", "broken", "broken-a", "NaN")
                     + series("vllm:num_requests_waiting", "pc-nan", "fine", "fine-a", "1")
                     + series("vllm:num_requests_running", "pc-nan", "inf", "inf-a", "+Inf"))
    loads = loads_once_scraped(Prometheus(dev_cluster.prometheus_url), "pc-nan", 3)
    assert loads[("pc-nan", "broken")].unknown and loads[("pc-nan", "inf")].unknown
    assert not loads[("pc-nan", "fine")].unknown and loads[("pc-nan", "fine")].waiting == 1


def test_an_empty_result_is_no_services_and_a_custom_query_with_no_series_is_none(dev_cluster):
    prometheus = Prometheus(dev_cluster.prometheus_url, service_label="a_label_nothing_carries")
    assert asyncio.run(prometheus.service_loads()) == {}
    assert asyncio.run(prometheus.scalar('sum(nothing_has_this_metric{namespace="x"})')) is None
    assert asyncio.run(prometheus.scalar("vector(2) + vector(3)")) == 5


def test_an_error_answer_names_prometheus_and_the_problem(dev_cluster):
    with pytest.raises(PrometheusError) as err:
        asyncio.run(Prometheus(dev_cluster.prometheus_url).scalar("sum(rate(x[5m])"))  # unbalanced: 400
    assert dev_cluster.prometheus_url in str(err.value) and "answered an error" in str(err.value)


def test_a_refused_connection_is_an_error_at_once(dev_cluster):
    started = time.monotonic()
    with pytest.raises(PrometheusError, match="unreachable"):
        asyncio.run(Prometheus(f"http://127.0.0.1:{free_port()}").service_loads())
    assert time.monotonic() - started < 2  # no retries: an outage shows within one tick


def test_a_prometheus_that_stops_answering_is_a_timeout_error(tmp_path):
    """A real Prometheus, frozen with SIGSTOP: it accepts connections and never answers."""
    port = free_port()
    (tmp_path / "prometheus.yml").write_text("global: {scrape_interval: 1s}\nscrape_configs: []\n")
    proc = subprocess.Popen([shutil.which("prometheus") or "prometheus", "--config.file", str(tmp_path / "prometheus.yml"),
                             "--storage.tsdb.path", str(tmp_path / "data"), "--web.listen-address", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_ok(url + "/-/ready"), timeout=30, what="the second Prometheus ready")
        prometheus = Prometheus(url, timeout=1.0)
        assert asyncio.run(prometheus.scalar("vector(1)")) == 1
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(PrometheusError, match="unreachable: .*Timeout"):
                asyncio.run(prometheus.service_loads())
            assert time.monotonic() - started < 3
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert asyncio.run(prometheus.scalar("vector(1)")) == 1  # and it recovers
    finally:
        proc.terminate()
        proc.wait(20)


def test_an_http_5xx_answer_is_an_error():
    """Stand-in server (a fake): a real Prometheus answers 503 only when a query times out on its side,
    which cannot be provoked on demand here. The body is Prometheus' error shape."""
    error = json.dumps({"status": "error", "errorType": "timeout", "error": "query timed out"})
    with TextServer(error, status=503, content_type="application/json") as server:
        with pytest.raises(PrometheusError, match="answered an error.*503"):
            asyncio.run(Prometheus(server.url).service_loads())
