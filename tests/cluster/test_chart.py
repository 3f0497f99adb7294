"""The Helm chart as users install it: lint, render, install, every example's lifecycle under the
chart's ServiceAccounts, leader handover, RBAC audit, upgrade and uninstall.

Each test sets up what it checks (the upgrade and uninstall tests bring their own service), with two
exceptions kept on purpose and placed last: the uninstall ends the install the others share, and the RBAC
audit reads what every test before it made the operator and the gateway do.

One cluster of its own (with the apiserver's audit log on), because the chart installs the CRD and
the RBAC and the uninstall test removes them; the session cluster keeps serving the other tests.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.chart_helpers import (CHART, ChartProcess, audit_events, deployment_args, granted, helm,
                                         permissions, sa_kubeconfig, template)
from tests.cluster.test_operator import EXAMPLES, condition
from tests.cluster.test_smoke import wait_for
from tests.conftest import TEST_NODES, Kubectl
from tidal.modelcache.layout import cache_key, node_label
from tidal_dev.cluster.cluster import DevCluster
from tidal_dev.cluster.processes import free_port

pytestmark = pytest.mark.cluster
RELEASE, NS, MODELS = "tidal", "tidal-system", "models"
OPERATOR_SA, ACTIVATOR_SA = "tidal-operator", "tidal-activator"

# Everything the operator calls, and why. The chart must grant exactly this, and the audit log of the
# lifecycle below must show each one used (and nothing refused).
OPERATOR_PERMISSIONS = {
    ("tidal.dev", "inferenceservices", "get"): "a fresh copy after a status write conflicted",
    ("tidal.dev", "inferenceservices", "list"): "kopf lists, then watches, every InferenceService",
    ("tidal.dev", "inferenceservices", "watch"): "",
    ("tidal.dev", "inferenceservices/status", "patch"): "conditions, replicas, the last scaling decision",
    ("apps", "deployments", "get"): "the reconciler compares the live Deployment with the plan",
    ("apps", "deployments", "list"): "the watch that tells when replicas become ready",
    ("apps", "deployments", "watch"): "",
    ("apps", "deployments", "create"): "a server-side apply that creates the Deployment needs it",
    ("apps", "deployments", "patch"): "server-side apply of the Deployment, and of spec.replicas by the autoscaler",
    ("", "services", "get"): "compared with the plan before applying",
    ("", "services", "create"): "a server-side apply that creates the Service needs it",
    ("", "services", "patch"): "server-side apply of the Service",
    ("", "pods", "list"): "the pods of a service, for readiness and scheduling problems",
    ("", "pods", "watch"): "",
    ("", "nodes", "list"): "placement checks: node pools and their GPUs",
    ("", "nodes", "watch"): "",
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"): "kopf learns which resources exist",
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"): "",
    ("authentication.k8s.io", "tokenreviews", "create"): "the wake endpoint checks that its caller is the gateway",
    ("", "secrets", "get"): "that a referenced credentials Secret exists (its data is not used)",
    ("", "persistentvolumeclaims", "get"): "that a pvc:// model's claim exists",
    ("", "events", "create"): "Events on InferenceServices",
    ("networking.k8s.io", "networkpolicies", "get"): "compared with the plan before applying",
    ("networking.k8s.io", "networkpolicies", "create"): "a server-side apply that creates the NetworkPolicy needs it",
    ("networking.k8s.io", "networkpolicies", "patch"): "server-side apply of each service's NetworkPolicy",
    ("coordination.k8s.io", "leases", "get"): "leader election",
    ("coordination.k8s.io", "leases", "create"): "",
    ("coordination.k8s.io", "leases", "update"): "",
    ("coordination.k8s.io", "leases", "delete"): "a leader that stops cleanly hands over at once",
}
ACTIVATOR_PERMISSIONS = {
    ("", "pods", "list"): "ready replicas of every service, from a pod watch",
    ("", "pods", "watch"): "",
    ("tidal.dev", "inferenceservices", "list"): "served names, for routing by the request's model, and /v1/models",
    ("tidal.dev", "inferenceservices", "watch"): "",
    ("", "secrets", "list"): "API keys (Secrets labelled tidal.dev/api-key in the release namespace only)",
    ("", "secrets", "watch"): "a revoked key stops working within a second",
}
# With operator.modelCache.enabled (the install below has it): prefetch DaemonSets, and the labels on the nodes
# whose caches hold a model.
MODEL_CACHE_PERMISSIONS = {
    ("apps", "daemonsets", "get"): "the live prefetch DaemonSet, compared with the plan",
    ("apps", "daemonsets", "create"): "a server-side apply that creates the prefetch DaemonSet needs it",
    ("apps", "daemonsets", "patch"): "server-side apply of the prefetch DaemonSet",
    ("apps", "daemonsets", "delete"): "prefetch turned off",
    ("", "nodes", "patch"): "the label model-cache.tidal.dev/<key> on a node whose cache holds the model",
}
# With activator.batches.enabled (the install below has it): each batch is an InferenceBatch.
BATCH_PERMISSIONS = {
    ("tidal.dev", "inferencebatches", "list"): "InferenceBatches created with kubectl, to run them",
    ("tidal.dev", "inferencebatches", "watch"): "",
    ("tidal.dev", "inferencebatches", "create"): "one InferenceBatch per batch created through the API",
    ("tidal.dev", "inferencebatches/status", "patch"): "the batch's progress, for kubectl get",
}


def test_chart_lints_and_renders_least_privilege():
    lint = helm(None, "lint", "--strict", str(CHART), "--kube-version", "1.36.3")
    assert "0 chart(s) failed" in lint.stdout
    docs = template()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 2 and "CustomResourceDefinition" in kinds
    tiers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PriorityClass"}  # spec.placement.priority
    assert sorted(tiers) == ["tidal-high", "tidal-low", "tidal-normal"]
    assert tiers["tidal-low"]["value"] < tiers["tidal-normal"]["value"] < tiers["tidal-high"]["value"]
    assert tiers["tidal-low"]["preemptionPolicy"] == "Never"
    operator = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "tidal-operator")
    assert operator["spec"]["replicas"] == 2 and "--leader-elect" in operator["spec"]["template"]["spec"]["containers"][0]["args"]
    for doc in docs:  # no wildcard anywhere, in any role
        for rule in doc.get("rules", []):
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], doc["metadata"]["name"]
    for deployment in (d for d in docs if d["kind"] == "Deployment"):  # non-root, read-only, no privileges
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert container["readOnlyRootFilesystem"] is True and container["allowPrivilegeEscalation"] is False
        assert container["capabilities"]["drop"] == ["ALL"]
    assert granted(docs, OPERATOR_SA) == set(OPERATOR_PERMISSIONS)
    assert granted(docs, ACTIVATOR_SA) == set(ACTIVATOR_PERMISSIONS)
    cached = template("--set", "operator.modelCache.enabled=true")
    assert granted(cached, OPERATOR_SA) == set(OPERATOR_PERMISSIONS) | set(MODEL_CACHE_PERMISSIONS)
    # The chart's CRD is the generated one, behind crds.enabled and kept on uninstall by default.
    crds = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert sorted(crds) == ["inferencebatches.tidal.dev", "inferenceservices.tidal.dev"]
    for name, file in (("inferenceservices.tidal.dev", "tidal.dev_inferenceservices.yaml"),
                       ("inferencebatches.tidal.dev", "tidal.dev_inferencebatches.yaml")):
        assert crds[name]["spec"] == yaml.safe_load((CHART.parents[1] / "crds" / file).read_text())["spec"]
        assert crds[name]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not [d for d in template("--set", "crds.enabled=false") if d["kind"] == "CustomResourceDefinition"]
    # Limited to namespaces: Roles there, and only nodes (cluster-scoped) through a ClusterRole.
    scoped = template("--set", "watchNamespaces={team-a,team-b}")
    roles = [(d["kind"], d["metadata"].get("namespace")) for d in scoped if d["kind"] in ("Role", "ClusterRole")]
    assert ("Role", "team-a") in roles and ("Role", "team-b") in roles
    assert [d["metadata"]["name"] for d in scoped if d["kind"] == "ClusterRole"] == ["tidal-operator-cluster-reads"]
    # Batches: on one activator replica, with a claim for files and progress (or a bucket, its key by reference).
    batches = template("--set", "activator.batches.enabled=true", "--set", "activator.replicas=1")
    assert granted(batches, ACTIVATOR_SA) == set(ACTIVATOR_PERMISSIONS) | set(BATCH_PERMISSIONS)
    claim = next(d for d in batches if d["kind"] == "PersistentVolumeClaim")
    pod = next(d for d in batches if d["metadata"]["name"] == "tidal-activator" and d["kind"] == "Deployment")
    pod = pod["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "wake-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "tidal.dev/wake", "expirationSeconds": 3600, "path": "token"}}]}},
        {"name": "batches", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}]
    assert "--wake-token-file=/var/run/secrets/tidal.dev/wake/token" in pod["containers"][0]["args"]
    assert "--batch-storage=/var/lib/tidal/batches" in pod["containers"][0]["args"]
    on_s3 = template("--set", "activator.batches.enabled=true", "--set", "activator.replicas=1",
                     "--set", "activator.batches.s3.url=s3://tidal-files/prod",
                     "--set", "activator.batches.s3.credentialsSecret=s3-key")
    assert not [d for d in on_s3 if d["kind"] == "PersistentVolumeClaim"]
    container = next(d for d in on_s3 if d["metadata"]["name"] == "tidal-activator" and d["kind"] == "Deployment")
    container = container["spec"]["template"]["spec"]["containers"][0]
    assert "--batch-storage=s3://tidal-files/prod" in container["args"]
    assert {"name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": "s3-key", "key": "AWS_SECRET_ACCESS_KEY"}}} in container["env"]
    two = helm(None, "template", "t", str(CHART), "--set", "activator.batches.enabled=true", check=False)
    assert two.returncode != 0 and "activator.replicas is 2: set it to 1" in two.stderr
    monitors = template("--set", "monitoring.podMonitor.enabled=true", "--set", "monitoring.serviceMonitor.enabled=true")
    assert {"PodMonitor", "ServiceMonitor"} <= {d["kind"] for d in monitors}


def test_values_schema_names_the_wrong_value():
    bad = helm(None, "template", "t", str(CHART), "--kube-version", "1.36.3", "--set", "defaultScaling.idleSecondz=5",
               check=False)
    assert bad.returncode != 0 and "idleSecondz" in bad.stderr
    bad = helm(None, "template", "t", str(CHART), "--kube-version", "1.36.3", "--set", "image.pullPolicy=Sometimes",
               check=False)
    assert bad.returncode != 0 and "/image/pullPolicy" in bad.stderr and "IfNotPresent" in bad.stderr


# ---- on a cluster of its own ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def chart_cluster(tmp_path_factory):
    cluster = DevCluster(tmp_path_factory.mktemp("chart-cluster"), TEST_NODES, scrape_interval="1s", audit=True)
    info = cluster.up()
    yield cluster, info
    cluster.down()


class Installed:
    def __init__(self, info, kubectl, workdir: Path):
        self.info, self.kubectl, self.workdir = info, kubectl, workdir
        self.operators: list[ChartProcess] = []
        self.activator: ChartProcess | None = None

    def start_operator(self, replica: str) -> ChartProcess:
        kubeconfig = sa_kubeconfig(self.info, self.kubectl, NS, OPERATOR_SA, self.workdir / f"{replica}.kubeconfig")
        proc = ChartProcess(replica, deployment_args(self.kubectl, NS, "tidal-operator"), kubeconfig, self.workdir,
                            "--http-port", {"POD_NAME": replica, "POD_NAMESPACE": NS},
                            extra={"--http-host": "127.0.0.1"})
        self.operators.append(proc)
        return proc

    def leader(self) -> ChartProcess | None:
        return next((p for p in self.operators if p.proc.poll() is None and p.ready()), None)


@pytest.fixture(scope="module")
def installed(chart_cluster, tmp_path_factory):
    cluster, info = chart_cluster
    kubectl = Kubectl(info)
    workdir = tmp_path_factory.mktemp("chart")
    values = workdir / "values.yaml"
    values.write_text(yaml.safe_dump({
        "prometheus": {"url": info.prometheus_url},
        "operator": {"leaderElection": {"leaseDurationSeconds": 6}, "autoscaleIntervalSeconds": 1,
                     "metricsGraceSeconds": 8, "resyncSeconds": 5, "modelCache": {"enabled": True}},
        "activator": {"replicas": 1, "batches": {"enabled": True}}}))
    # The batches' claim binds to this volume (the local cluster has no provisioner); the activator
    # process below keeps its files in the same directory, as the pod would through the mount.
    kubectl("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "tidal-batches-test"},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                 "hostPath": {"path": str(workdir / "batches")}}}))
    helm(info, "install", RELEASE, str(CHART), "-n", NS, "--create-namespace", "-f", str(values), "--wait",
         "--timeout", "2m")
    state = Installed(info, kubectl, workdir)
    state.chart_cluster = cluster
    first = state.start_operator("operator-a")
    first.wait_healthy()
    wait_for(first.ready, timeout=20, what="the first operator to lead")
    state.start_operator("operator-b").wait_healthy()  # a standby: alive, not ready
    act_kubeconfig = sa_kubeconfig(info, kubectl, NS, ACTIVATOR_SA, workdir / "activator.kubeconfig")
    state.gateway_port = free_port()
    # What the pod's projected volume holds: a token of the activator's ServiceAccount for the wake audience.
    (workdir / "wake-token").write_text(wake_token(kubectl, ACTIVATOR_SA))
    state.activator = ChartProcess("activator", deployment_args(kubectl, NS, "tidal-activator"), act_kubeconfig,
                                   workdir, "--metrics-port", {},
                                   extra={"--host": "127.0.0.1", "--port": str(state.gateway_port),
                                          "--operator-url": first.url,
                                          "--wake-token-file": str(workdir / "wake-token"),
                                          "--batch-storage": str(workdir / "batches")})  # the claim's mount
    state.activator.wait_healthy()
    yield state
    for proc in [*state.operators, state.activator]:
        proc.stop()


def _setup_example_prerequisites(kubectl):
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": MODELS}}))
    for secret, keys in (("hf-token", ["HF_TOKEN"]), ("s3-credentials", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])):
        kubectl("create", "secret", "generic", secret, "-n", MODELS, *[f"--from-literal={k}=not-real" for k in keys])
    # The cluster has no storage provisioner: a pre-made volume the example's claim binds to.
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "model-store"},
        "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                 "hostPath": {"path": "/models"}}}))


def _tis(kubectl, name):
    return json.loads(kubectl("get", "tis", name, "-n", MODELS, "-o", "json").stdout)


def _ready(kubectl, name, reason="ModelReady", *more_reasons):
    def check():
        obj = _tis(kubectl, name)
        c = condition(obj, "Ready")
        return obj if c and c["status"] == "True" and c["reason"] in (reason, *more_reasons) and \
            obj["status"].get("observedGeneration") == obj["metadata"]["generation"] else None
    return check


EXAMPLE_FILES = ["vllm-llama-h100.yaml", "triton-a100.yaml", "vllm-custom-promql.yaml", "vllm-model-from-pvc.yaml"]


def test_every_example_runs_its_lifecycle_under_the_charts_service_account(installed):
    kubectl = installed.kubectl
    _setup_example_prerequisites(kubectl)
    # The whole folder at once, as a user trying the examples would: each has a name of its own (two once
    # shared one, and the second silently replaced the first), and each becomes Ready.
    applied = kubectl("apply", "-n", MODELS, "-f", str(EXAMPLES)).stdout
    every = {path.name: next(d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "InferenceService")
             ["metadata"]["name"] for path in sorted(EXAMPLES.glob("*.yaml"))}
    assert len(set(every.values())) == len(every) >= 6, every
    assert sorted(line.split()[0] for line in applied.splitlines() if line.startswith("inferenceservice")) == \
        sorted(f"inferenceservice.tidal.dev/{name}" for name in every.values()), applied
    for filename, name in every.items():
        # The demo's service idles to zero after 30 s: by the time it is looked at, it may already be there.
        obj = wait_for(_ready(kubectl, name, "ModelReady", "ScaledToZero"), timeout=90, interval=0.5,
                       what=f"{filename} Ready")
        assert condition(obj, "Valid")["status"] == "True"
    names = {f: every[f] for f in EXAMPLE_FILES}
    for filename in set(every) - set(EXAMPLE_FILES):  # the rest need no more checking here
        kubectl("delete", "-n", MODELS, "-f", str(EXAMPLES / filename), "--wait=true")
    # The custom PromQL service is scaled from its own query: the autoscaler has its metric.
    wait_for(lambda: (condition(_tis(kubectl, "qwen-7b"), "ScalingActive") or {}).get("status") == "True",
             timeout=60, interval=0.5, what="qwen-7b ScalingActive from its custom query")
    # Edit: every example rolls out the change; delete: its children go.
    for name in names.values():
        kubectl("patch", "tis", name, "-n", MODELS, "--type=merge", "-p",
                json.dumps({"spec": {"engine": {"env": [{"name": "EDITED", "value": "yes"}]}}}))
    def edited(name):
        dep = json.loads(kubectl("get", "deployment", name, "-n", MODELS, "-o", "json").stdout)
        return {"name": "EDITED", "value": "yes"} in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    for name in names.values():
        # The change reaches the Deployment (a Ready read at once could be the status from before the edit),
        # then the service is Ready again.
        wait_for(lambda: edited(name), timeout=90, interval=0.5, what=f"{name}'s Deployment carries the edit")
        wait_for(_ready(kubectl, name), timeout=90, interval=0.5, what=f"{name} Ready after the edit")
    for filename in EXAMPLE_FILES[:2]:
        kubectl("delete", "-n", MODELS, "-f", str(EXAMPLES / filename), "--wait=true")
    for name in list(names.values())[:2]:
        wait_for(lambda: kubectl("get", "deployment,service", name, "-n", MODELS, "--ignore-not-found", "-o", "name")
                 .stdout.strip() == "", timeout=60, what=f"{name}'s children deleted")
    for proc in installed.operators:
        # A refusal reads "Forbidden" or "(403)"; a bare "403" also matched a pid (operator-a_24038) and the
        # milliseconds of a log time (16:01:32,403), and failed CI runs at random.
        assert "Forbidden" not in proc.log() and "(403)" not in proc.log(), proc.log()


def wake_token(kubectl, account: str, audience: str = "tidal.dev/wake") -> str:
    return kubectl("create", "token", account, "-n", NS, "--audience", audience, "--duration", "1h").stdout.strip()


def test_only_the_gateways_service_account_may_call_the_wake_endpoint(installed):
    """Any pod can reach a Service; only the gateway may make the operator start GPUs. The operator (under the
    chart's RBAC) reviews each caller's token with the apiserver."""
    operator = next(p for p in installed.operators if p.ready())

    def wake(token: str | None) -> tuple[int, dict]:
        request = urllib.request.Request(f"{operator.url}/v1/wake/{MODELS}/no-such-service", b'{"pending": 1}',
                                         {"Authorization": f"Bearer {token}"} if token else {}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)
    status, said = wake(None)
    assert status == 401 and "Authorization: Bearer" in said["reason"]
    assert wake("not-a-token")[0] == 401
    assert wake(wake_token(installed.kubectl, ACTIVATOR_SA, audience="https://kubernetes.default.svc"))[0] == 401
    status, said = wake(wake_token(installed.kubectl, OPERATOR_SA))  # a real token, of someone else
    assert status == 403 and f"system:serviceaccount:{NS}:{OPERATOR_SA} may not wake" in said["reason"]
    status, said = wake(wake_token(installed.kubectl, ACTIVATOR_SA))
    assert status == 404 and said["reason"] == "UnknownService"  # past the door: the service is made up


def test_a_batch_is_an_inferencebatch_under_the_charts_service_account(installed):
    """A key's batch through the chart's activator: the InferenceBatch appears and follows it (its one line
    names a model that does not exist, so it completes with one error line; no engine is needed)."""
    import openai
    kubectl, token = installed.kubectl, "tk-batch-" + "c" * 24
    kubectl("create", "secret", "generic", "batch-team", "-n", NS, f"--from-literal=key={token}")
    kubectl("label", "secret", "batch-team", "-n", NS, "tidal.dev/api-key=true")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{installed.gateway_port}/v1", api_key=token, max_retries=0)

    def key_works():
        try:
            return client.files.list() is not None
        except openai.AuthenticationError:
            return False
    wait_for(key_works, timeout=20, what="the new key accepted")
    line = {"custom_id": "only", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}}
    uploaded = client.files.create(file=("one.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    done = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status in ("completed", "failed") and b,
                    timeout=60, what="the batch final")
    assert done.status == "completed" and done.request_counts.failed == 1

    def published():
        items = json.loads(kubectl("get", "inferencebatches", "-n", NS, "-o", "json").stdout)["items"]
        status = (items[0].get("status") or {}) if items else {}
        return status if status.get("state") == "completed" else None
    status = wait_for(published, timeout=20, what="the InferenceBatch completed")
    assert status["batchId"] == batch.id and status["total"] == 1 and status["failed"] == 1
    assert "Forbidden" not in installed.activator.log() and "(403)" not in installed.activator.log()


def _models_namespace(kubectl):
    """The namespace and Secret the model-cache tests use (made here too: they must not rely on an earlier test)."""
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": MODELS}}))
    if kubectl("get", "secret", "s3-credentials", "-n", MODELS, check=False).returncode != 0:
        kubectl("create", "secret", "generic", "s3-credentials", "-n", MODELS,
                "--from-literal=AWS_ACCESS_KEY_ID=not-real", "--from-literal=AWS_SECRET_ACCESS_KEY=not-real")


def _nodes(kubectl, selector: str) -> set[str]:
    return {n.split("/", 1)[1] for n in kubectl("get", "nodes", "-l", selector, "-o", "name").stdout.split()}


def test_a_prefetched_model_is_cached_on_every_pool_node_as_status_and_kubectl_get_show(installed):
    """The example with spec.model.cache.prefetch, under the chart's model cache (operator.modelCache.enabled):
    one prefetch pod per pool node (a DaemonSet on the pool), each node that fetched labelled, status and
    `kubectl get` counting them; a new model version is prefetched again; prefetch off removes the DaemonSet."""
    kubectl = installed.kubectl
    _models_namespace(kubectl)
    kubectl("apply", "-n", MODELS, "-f", str(EXAMPLES / "vllm-prefetch-a100.yaml"))
    name, a100 = "gemma-9b", _nodes(kubectl, "tidal.dev/pool=a100")
    assert len(a100) == 4

    def prefetched(uri):
        obj = _tis(kubectl, name)
        c = condition(obj, "Prefetched") or {}
        return obj if c.get("status") == "True" and obj["spec"]["model"]["uri"] == uri and \
            obj["status"].get("observedGeneration") == obj["metadata"]["generation"] else None
    obj = wait_for(lambda: prefetched("s3://models/gemma-2-9b-it"), timeout=90, interval=0.5,
                   what="Prefetched=True")
    assert (obj["status"]["cachedNodes"], obj["status"]["poolNodes"]) == (4, 4)
    assert condition(obj, "Prefetched")["message"] == "the weights are cached on 4 of 4 pool node(s)"
    ds = wait_for(lambda: (d := json.loads(kubectl("get", "daemonset", f"{name}-prefetch", "-n", MODELS, "-o",
                                                   "json").stdout))["status"].get("numberReady") == 4 and d,
                  timeout=30, what="the DaemonSet's 4 pods ready")
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {"tidal.dev/pool": "a100"}
    assert ds["status"]["desiredNumberScheduled"] == 4  # one per pool node, none elsewhere
    label = node_label(cache_key("s3://models/gemma-2-9b-it"))
    assert _nodes(kubectl, label) == a100  # the pool's nodes, and no other
    deployment = json.loads(kubectl("get", "deployment", name, "-n", MODELS, "-o", "json").stdout)
    assert label in json.dumps(deployment["spec"]["template"]["spec"]["affinity"])
    table = kubectl("get", "tis", name, "-n", MODELS).stdout.splitlines()
    assert "CACHED" in table[0].split() and table[1].split()[table[0].split().index("CACHED")] == "4"
    assert "POOL" in kubectl("get", "tis", name, "-n", MODELS, "-o", "wide").stdout.splitlines()[0].split()
    said = [(e["type"], e["reason"]) for e in json.loads(kubectl(
        "get", "events", "-n", MODELS, "--field-selector", f"involvedObject.name={name}", "-o", "json").stdout)["items"]]
    assert ("Normal", "Prefetched") in said, said
    # A new version of the model: the DaemonSet changes with it, and every pool node fetches it too.
    kubectl("patch", "tis", name, "-n", MODELS, "--type=merge", "-p",
            json.dumps({"spec": {"model": {"uri": "s3://models/gemma-2-9b-it-v2"}}}))
    wait_for(lambda: prefetched("s3://models/gemma-2-9b-it-v2"), timeout=90, interval=0.5,
             what="the new version Prefetched")
    assert _nodes(kubectl, node_label(cache_key("s3://models/gemma-2-9b-it-v2"))) == a100
    # Prefetch off: no more DaemonSet (the copies stay on the nodes, no longer held), no Prefetched condition.
    kubectl("patch", "tis", name, "-n", MODELS, "--type=merge", "-p",
            json.dumps({"spec": {"model": {"cache": {"prefetch": False}}}}))
    wait_for(lambda: kubectl("get", "daemonset", f"{name}-prefetch", "-n", MODELS, check=False).returncode != 0,
             timeout=60, interval=0.5, what="the prefetch DaemonSet deleted")
    obj = wait_for(lambda: (o := _tis(kubectl, name)) and condition(o, "Prefetched") is None and o, timeout=30,
                   what="the Prefetched condition gone")
    assert obj["status"]["cachedNodes"] == 4
    kubectl("delete", "tis", name, "-n", MODELS, "--wait=true")


def test_a_wake_lands_where_the_weights_are_and_never_waits_for_such_a_node(installed):
    """A replica that fetched its model labels its node; each later wake from zero goes back there (without the
    preference the scheduler picks any of the pool's free nodes: three wakes land on the first node by chance
    about once in 27 runs). When that node is full, the next replica starts on another at once."""
    kubectl = installed.kubectl
    _models_namespace(kubectl)
    name = "near-weights"

    def apply(min_replicas: int, max_replicas: int = 2) -> None:
        kubectl("apply", "-n", MODELS, "-f", "-", input=json.dumps({
            "apiVersion": "tidal.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
            "spec": {"engine": {"type": "vllm"},
                     "model": {"uri": "s3://models/near-weights", "credentials": {"secretName": "s3-credentials"}},
                     "resources": {"gpus": 8}, "placement": {"nodePool": "h100"},  # a whole node per replica
                     "scaling": {"minReplicas": min_replicas, "maxReplicas": max_replicas,
                                 "idleSecondsBeforeZero": 0, "adaptIdlePeriod": False,
                                 "scaleDownStabilizationSeconds": 0}}}))

    def ready_pods() -> list[dict]:
        pods = json.loads(kubectl("get", "pods", "-n", MODELS, "-l", f"tidal.dev/inferenceservice={name}",
                                  "-o", "json").stdout)["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp") and any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]

    def no_pods() -> bool:
        return not kubectl("get", "pods", "-n", MODELS, "-l", f"tidal.dev/inferenceservice={name}",
                           "-o", "name").stdout.strip()
    label = node_label(cache_key("s3://models/near-weights"))
    apply(1)
    [first] = wait_for(lambda: len(p := ready_pods()) == 1 and p, timeout=90, interval=0.5, what="one replica")
    home = first["spec"]["nodeName"]
    wait_for(lambda: _nodes(kubectl, label) == {home}, timeout=30, interval=0.5, what=f"{home} labelled")
    obj = wait_for(lambda: (o := _tis(kubectl, name))["status"].get("cachedNodes") == 1 and o, timeout=30,
                   what="status.cachedNodes 1")
    assert obj["status"]["poolNodes"] == 4
    for _ in range(3):
        apply(0)
        wait_for(no_pods, timeout=90, interval=0.5, what="scaled to zero")
        apply(1)
        [woken] = wait_for(lambda: len(p := ready_pods()) == 1 and p, timeout=90, interval=0.5, what="woken")
        assert woken["spec"]["nodeName"] == home, f"woke on {woken['spec']['nodeName']}, the weights are on {home}"
    apply(2)  # the node with the weights is full: the second replica goes elsewhere, and does not wait
    pods = wait_for(lambda: len(p := ready_pods()) == 2 and p, timeout=90, interval=0.5, what="a second replica")
    other = next(p["spec"]["nodeName"] for p in pods if p["spec"]["nodeName"] != home)
    wait_for(lambda: _nodes(kubectl, label) == {home, other}, timeout=30, interval=0.5, what=f"{other} labelled")
    wait_for(lambda: _tis(kubectl, name)["status"].get("cachedNodes") == 2, timeout=30, what="status.cachedNodes 2")
    kubectl("delete", "tis", name, "-n", MODELS, "--wait=true")


def test_the_standby_takes_over_when_the_leader_is_killed(installed):
    kubectl = installed.kubectl
    leader = installed.leader()
    standby = next(p for p in installed.operators if p is not leader)
    assert not standby.ready()
    leader.stop("kill")  # no chance to release the Lease: the standby must wait it out (6 s here)
    killed = time.monotonic()
    wait_for(standby.ready, timeout=30, interval=0.2, what="the standby to take the Lease")
    handover = time.monotonic() - killed
    print(f"handover after SIGKILL: {handover:.1f} s (lease duration 6 s)")
    assert handover < 6 + 10
    # The new leader serves: a fresh service becomes Ready, an edited one rolls out.
    kubectl("apply", "-n", MODELS, "-f", "-", input=json.dumps({
        "apiVersion": "tidal.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "after-handover"},
        "spec": {"engine": {"type": "vllm"}, "model": {"uri": "hf://org/after"}, "placement": {"nodePool": "h100"},
                 "scaling": {"minReplicas": 1}}}))
    wait_for(_ready(kubectl, "after-handover"), timeout=60, interval=0.5, what="a service created after handover")
    # The two never both wrote: in the audit log, the old leader's last write comes before the new one's first.
    writes: dict[str, list[str]] = {}
    for event in audit_events(installed.chart_cluster.audit_log_path, f"system:serviceaccount:{NS}:{OPERATOR_SA}"):
        if event["verb"] in ("create", "update", "patch", "delete") and event["userAgent"].startswith("tidal/"):
            writes.setdefault(event["userAgent"], []).append(event["requestReceivedTimestamp"])
    old_writes, new_writes = writes.get(f"tidal/{leader.name}", []), writes.get(f"tidal/{standby.name}", [])
    assert old_writes and new_writes and max(old_writes) < min(new_writes), (
        f"{leader.name} wrote until {max(old_writes or ['-'])}, {standby.name} from {min(new_writes or ['-'])}")
    # The killed replica comes back (its Deployment would restart it) and stands by.
    installed.start_operator("operator-c").wait_healthy()
    time.sleep(3)
    assert sum(p.ready() for p in installed.operators if p.proc.poll() is None) == 1


def test_an_inferencebatch_may_name_only_a_key_its_creator_may_read(installed):
    """Two users who may both create InferenceBatches; only alice may read the Secret of key-a. The chart's
    admission policy, evaluated by the real apiserver's authorizer, lets alice run a batch as key-a and
    refuses bob with the field and the reason."""
    kubectl = installed.kubectl
    kubectl("create", "secret", "generic", "key-a", "-n", NS, "--from-literal=key=tk-alice-" + "a" * 24)
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "batch-users", "namespace": NS},
         "rules": [{"apiGroups": ["tidal.dev"], "resources": ["inferencebatches"], "verbs": ["create", "get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "batch-users", "namespace": NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "batch-users"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": n} for n in ("alice", "bob")]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "key-a", "namespace": NS},
         "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["key-a"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "key-a", "namespace": NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "key-a"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}]))

    def batch(name):
        return json.dumps({"apiVersion": "tidal.dev/v1alpha1", "kind": "InferenceBatch",
                           "metadata": {"name": name, "namespace": NS},
                           "spec": {"inputFileId": "file-" + "0" * 24, "endpoint": "/v1/chat/completions",
                                    "apiKeySecret": "key-a"}})
    # The Roles take effect at once, but the policy's first use may race its own registration: retry briefly.
    refused = wait_for(lambda: (r := kubectl("--as=bob", "create", "-f", "-", input=batch("bobs"), check=False))
                       .returncode != 0 and "ValidatingAdmissionPolicy" in r.stderr and r, timeout=30,
                       what="bob refused by the admission policy")
    assert "spec.apiKeySecret: Forbidden: bob may not read the Secret tidal-system/key-a" in refused.stderr
    assert kubectl("get", "inferencebatch", "bobs", "-n", NS, check=False).returncode != 0
    kubectl("--as=alice", "create", "-f", "-", input=batch("alices"))
    assert kubectl("--as=alice", "get", "inferencebatch", "alices", "-n", NS).returncode == 0


@pytest.fixture(scope="module")
def kept(installed) -> str:
    """A service of the upgrade and uninstall tests' own (they once relied on one an earlier test created)."""
    kubectl = installed.kubectl
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": MODELS}}))
    kubectl("apply", "-n", MODELS, "-f", "-", input=json.dumps({
        "apiVersion": "tidal.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "kept"},
        "spec": {"engine": {"type": "vllm"}, "model": {"uri": "hf://org/kept"}, "placement": {"nodePool": "h100"},
                 "scaling": {"minReplicas": 1, "maxReplicas": 2}}}))
    wait_for(_ready(kubectl, "kept"), timeout=90, interval=0.5, what="the kept service Ready")
    return "kept"


def test_helm_upgrade_changes_values_and_keeps_services(installed, kept):
    info, kubectl = installed.info, installed.kubectl
    before = _tis(kubectl, kept)["metadata"]["uid"]
    helm(info, "upgrade", RELEASE, str(CHART), "-n", NS, "--reuse-values", "--set", "activator.replicas=1",
         "--set", "operator.autoscaleIntervalSeconds=3", "--set", "defaultScaling.maxReplicas=2", "--wait")
    args = deployment_args(kubectl, NS, "tidal-operator")
    assert "--autoscale-interval=3" in args and '--scaling-defaults={"maxReplicas":2}' in args
    act = json.loads(kubectl("get", "deployment", "tidal-activator", "-n", NS, "-o", "json").stdout)
    assert act["spec"]["replicas"] == 1
    assert _tis(kubectl, kept)["metadata"]["uid"] == before
    assert wait_for(_ready(kubectl, kept), timeout=30, what="the kept service still Ready")


def _release_objects(kubectl) -> list[str]:
    kinds = "deployments,services,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings,leases"
    found = kubectl("get", kinds, "-A", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name").stdout.split()
    return found


def test_helm_uninstall_leaves_nothing_behind(installed, kept):
    info, kubectl = installed.info, installed.kubectl
    # As `helm uninstall` does to the pods: every replica is told to stop; the leader hands the Lease
    # back (deletes it) and a standby that was about to take over does not.
    for proc in [installed.activator, *installed.operators]:
        proc.proc.terminate()
    for proc in [installed.activator, *installed.operators]:
        proc.stop()
    helm(info, "uninstall", RELEASE, "-n", NS, "--wait")
    assert _release_objects(kubectl) == []
    assert kubectl("get", "lease", "tidal-operator", "-n", NS, check=False).returncode != 0  # released, deleted
    # The CRD is kept by default, and with it every InferenceService.
    assert _tis(kubectl, kept)["metadata"]["name"] == kept
    # Reinstalled with crds.keep=false, an uninstall removes the CRD too.
    helm(info, "install", RELEASE, str(CHART), "-n", NS, "--set", "crds.keep=false", "--set", "prometheus.url=",
         "--wait")
    helm(info, "uninstall", RELEASE, "-n", NS, "--wait")
    assert _release_objects(kubectl) == []
    wait_for(lambda: kubectl("get", "crd", "inferenceservices.tidal.dev", check=False).returncode != 0,
             timeout=60, what="the CRD deleted")
    leftover = kubectl("get", "clusterroles,clusterrolebindings", "-o", "name").stdout.split()
    assert not [n for n in leftover if n.split("/")[1].startswith(("tidal-operator", "tidal-activator"))]


def test_rbac_grants_exactly_what_the_operator_and_activator_use(chart_cluster, installed):
    cluster, _ = chart_cluster
    for account, expected in ((OPERATOR_SA, {**OPERATOR_PERMISSIONS, **MODEL_CACHE_PERMISSIONS}),
                              (ACTIVATOR_SA, {**ACTIVATOR_PERMISSIONS, **BATCH_PERMISSIONS})):
        events = audit_events(cluster.audit_log_path, f"system:serviceaccount:{NS}:{account}")
        assert events, f"no audited requests from {account}"
        refused = sorted({(e["verb"], e["requestURI"]) for e in events
                          if e.get("responseStatus", {}).get("code") == 403}, key=str)
        assert not refused, f"{account} was refused: {refused}"
        used = {p for e in events for p in permissions(e)}
        assert used <= set(expected), f"{account} used what the test does not list: {used - set(expected)}"
        assert set(expected) <= used, f"{account} is granted what it never used: {set(expected) - used}"
