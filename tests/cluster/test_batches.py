"""A batch on the local cluster, with the official `openai` client: 2,000 chat requests for a model at
zero, through a gateway with API keys and a batch directory; the model wakes for the batch, grows for
its backlog and returns to zero after it, and `kubectl get inferencebatches` shows the progress while it runs."""

from __future__ import annotations

import json
import secrets
import time
import uuid

import openai
import pytest

from tests.cluster.test_autoscaler import apply, replicas, service
from tests.cluster.test_gateway import make_key
from tests.cluster.test_smoke import wait_for
from tests.conftest import start_activator

pytestmark = pytest.mark.cluster


def test_a_batch_of_2000_wakes_a_model_at_zero_completes_and_lets_it_return_to_zero(
        dev_cluster, operator, kubectl, namespace, tmp_path):
    keys_ns = f"keys-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", keys_ns)
    token = "tk-" + secrets.token_urlsafe(24)
    make_key(kubectl, keys_ns, "batcher", token)
    gateway = start_activator(dev_cluster, operator, "--hold-timeout", "120", "--batch-storage", str(tmp_path / "b"),
                              key_namespace=keys_ns)
    try:
        bulk = service("bulk", idleSecondsBeforeZero=5, scaleDownStabilizationSeconds=3)
        bulk["spec"]["model"]["servedName"] = f"{namespace}-bulk"
        apply(kubectl, namespace, bulk)
        wait_for(lambda: replicas(kubectl, namespace, "bulk") == 0, timeout=60, interval=0.5, what="bulk at zero")
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0, timeout=60)
        lines = "".join(json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"model": f"{namespace}-bulk", "max_tokens": 2,
                                             "messages": [{"role": "user", "content": f"question {i}"}]}}) + "\n"
                        for i in range(2000))
        uploaded = client.files.create(file=("bulk.jsonl", lines.encode()), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        seen_rows, peak = [], 0
        deadline = time.monotonic() + 300
        while client.batches.retrieve(batch.id).status not in ("completed", "failed"):
            assert time.monotonic() < deadline, seen_rows[-3:]
            row = kubectl("get", "inferencebatches", batch.id, "-n", keys_ns, "--no-headers", check=False).stdout
            if row.strip():
                seen_rows.append(row.split()[1:5])  # state, model, total, completed
            peak = max(peak, replicas(kubectl, namespace, "bulk") or 0)
            time.sleep(0.5)
        done = client.batches.retrieve(batch.id)
        errors = client.files.content(done.error_file_id).read().splitlines()[:3] if done.error_file_id else []
        assert done.status == "completed" and done.request_counts.completed == 2000, (
            done.request_counts, errors, gateway.log_path.read_text()[-3000:])
        # The unsent requests are demand (tidal_gateway_batch_backlog_requests): more than the one replica
        # a wake for the first held requests gives, up to maxReplicas (4).
        print(f"replicas at the peak of the batch: {peak}")
        assert peak > 1, peak
        running = [r for r in seen_rows if r[0] == "in_progress"]
        assert running and all(r[1] == f"{namespace}-bulk" and r[2] == "2000" for r in running)
        assert any(0 < int(r[3]) < 2000 for r in running), seen_rows  # progress was visible mid-way
        output = [json.loads(x) for x in client.files.content(done.output_file_id).read().splitlines()]
        assert sorted(o["custom_id"] for o in output) == sorted(f"q{i}" for i in range(2000))
        assert all(o["response"]["status_code"] == 200 for o in output)
        wait_for(lambda: replicas(kubectl, namespace, "bulk") == 0, timeout=60, interval=0.5,
                 what="bulk back at zero after the batch")
    finally:
        gateway.proc.terminate()
        gateway.proc.wait(10)
        kubectl("delete", "namespace", keys_ns, "--wait=false")
