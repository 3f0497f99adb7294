"""`make up` / `make down` as a user runs them: the cluster plus Tidal's operator and gateway, their URLs
and a working API key in state.json, and nothing left behind."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import openai
import pytest

from tests.cluster.test_smoke import wait_for

pytestmark = pytest.mark.cluster


def test_up_records_urls_and_a_bootstrap_key_that_serves_and_down_stops_everything(tmp_path, dev_cluster):
    state_dir = tmp_path / "stack"
    cli = [sys.executable, "-m", "tidal_dev", "cluster"]
    try:
        up = subprocess.run([*cli, "up", "--with-tidal", "--state-dir", str(state_dir)], capture_output=True,
                            text=True, timeout=300)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        state_file = state_dir / "state.json"
        state = json.loads(state_file.read_text())
        assert {"operator_url", "gateway_url", "gateway_metrics_url", "api_key", "prometheus_url",
                "playground_url", "files_url", "batches_url"} <= set(state)
        import urllib.request
        page = urllib.request.urlopen(state["playground_url"], timeout=10).read().decode()
        assert "<title>Tidal playground</title>" in page
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600  # it holds a key
        assert state["api_key"] not in up.stdout  # printed: where the key is, not the key
        kubectl = [state["binaries_dir"] + "/kubectl", "--kubeconfig", state["kubeconfig"]]
        subprocess.run([*kubectl, "apply", "-f", "examples/demo-scale-to-zero.yaml"], check=True, capture_output=True)
        client = openai.OpenAI(base_url=state["gateway_url"] + "/v1", api_key=state["api_key"], max_retries=0,
                               timeout=120)
        wait_for(lambda: [m.id for m in client.models.list().data] == ["llama-3.1-8b"], timeout=20,
                 what="the example listed")
        answer = client.completions.create(model="llama-3.1-8b", prompt="hello", max_tokens=4)
        assert answer.usage.completion_tokens == 4
        # the Files and Batch APIs on the same endpoint, with the same key
        assert state["batches_url"] == state["gateway_url"] + "/v1/batches"
        lines = "".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                                    "body": {"model": "llama-3.1-8b", "prompt": "hi", "max_tokens": 2}}) + "\n"
                        for i in range(3))
        batch = client.batches.create(input_file_id=client.files.create(file=("b.jsonl", lines.encode()),
                                                                        purpose="batch").id,
                                      endpoint="/v1/completions", completion_window="24h")
        wait_for(lambda: client.batches.retrieve(batch.id).status == "completed", timeout=60, what="the batch")
        output = client.files.content(client.batches.retrieve(batch.id).output_file_id).read().splitlines()
        assert sorted(json.loads(line)["custom_id"] for line in output) == ["c0", "c1", "c2"]
        # ...each batch is an InferenceBatch beside the keys, with its progress in the printer columns
        get = [*kubectl, "get", "inferencebatches", "-n", "tidal-system"]
        wait_for(lambda: "completed" in subprocess.run([*get, batch.id], capture_output=True, text=True).stdout,
                 timeout=20, what="the InferenceBatch of the API batch")
        row = subprocess.run([*get, batch.id], capture_output=True, text=True, check=True).stdout.splitlines()
        assert row[0].split() == ["NAME", "STATE", "MODEL", "TOTAL", "COMPLETED", "FAILED", "AGE"]
        assert row[1].split()[:6] == [batch.id, "completed", "llama-3.1-8b", "3", "3", "0"]
        # ...and one created with kubectl runs as the key it names, on a file that key uploaded
        file_id = client.batches.retrieve(batch.id).input_file_id
        for name, key_secret in (("nightly", "tidal-bootstrap-key"), ("nobody", "no-such-key")):
            made = {"apiVersion": "tidal.dev/v1alpha1", "kind": "InferenceBatch", "metadata": {"name": name},
                    "spec": {"inputFileId": file_id, "endpoint": "/v1/completions", "apiKeySecret": key_secret}}
            subprocess.run([*kubectl, "apply", "-n", "tidal-system", "-f", "-"], input=json.dumps(made),
                           text=True, check=True, capture_output=True)

        def status(name):
            out = subprocess.run([*get, name, "-o", "json"], capture_output=True, text=True, check=True).stdout
            return json.loads(out).get("status") or {}
        wait_for(lambda: status("nightly").get("state") == "completed", timeout=60, what="the kubectl batch")
        nightly = status("nightly")
        assert (nightly["total"], nightly["completed"]) == (3, 3)
        assert client.batches.retrieve(nightly["batchId"]).status == "completed"  # the key sees it in the API
        assert len(client.files.content(nightly["outputFileId"]).read().splitlines()) == 3
        wait_for(lambda: status("nobody").get("state") == "failed", timeout=20, what="the refused batch")
        assert "spec.apiKeySecret" in status("nobody")["message"] and "no-such-key" in status("nobody")["message"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=state["gateway_url"] + "/v1", api_key="not-the-key-000000000",
                          max_retries=0).models.list()
        again = subprocess.run([*cli, "up", "--with-tidal", "--state-dir", str(state_dir)], capture_output=True,
                               text=True, timeout=120)  # running twice reuses what runs, key included
        assert again.returncode == 0 and json.loads(state_file.read_text())["api_key"] == state["api_key"]
        pids = [json.loads((state_dir / f"{n}.json").read_text())["pid"] for n in ("operator", "gateway")]
    finally:
        down = subprocess.run([*cli, "down", "--state-dir", str(state_dir)], capture_output=True, text=True,
                              timeout=300)
    assert down.returncode == 0, down.stderr
    assert not (state_dir / "state.json").exists()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                assert f.read().split()[2] == "Z", f"process {pid} still running"
        except FileNotFoundError:
            pass
