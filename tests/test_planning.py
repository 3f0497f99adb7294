"""Planning: problems only the cluster reveals, and the status the operator reports."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tidal.api.v1alpha1 import parse_spec
from tidal.controller.reconcile import initial_replicas, spec_problems
from tidal.planning.checks import ClusterFacts, find_problems
from tidal.planning.status import Observation, plan_status


def node(pool, gpus=8, product="NVIDIA-H100-80GB-HBM3"):
    return {"metadata": {"labels": {"tidal.dev/pool": pool, "nvidia.com/gpu.product": product}},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}}}


NODES = [node("h100"), node("a100", product="NVIDIA-A100-SXM4-80GB"), node("cpu", 0, None)]


def spec(**kw):
    return parse_spec({"engine": {"type": "vllm"}, "model": {"uri": "hf://o/m"}, **kw})


def reasons(problems):
    return [p.reason for p in problems]


def test_unknown_pool_names_the_field_and_the_pools_that_exist():
    problems = find_problems(spec(placement={"nodePool": "h200"}), ClusterFacts(NODES), "tidal.dev/pool")
    assert reasons(problems) == ["UnknownNodePool"]
    assert "spec.placement.nodePool 'h200'" in problems[0].message and "a100, cpu, h100" in problems[0].message


def test_more_gpus_than_any_node_of_the_pool_has():
    problems = find_problems(spec(placement={"nodePool": "h100"}, resources={"gpus": 16}),
                             ClusterFacts(NODES), "tidal.dev/pool")
    assert reasons(problems) == ["InsufficientGPUCapacity"]
    assert "spec.resources.gpus 16" in problems[0].message and "has 8" in problems[0].message


def test_gpu_product_missing_from_the_pool():
    problems = find_problems(spec(placement={"nodePool": "a100"}, resources={"gpuProduct": "NVIDIA-H100-80GB-HBM3"}),
                             ClusterFacts(NODES), "tidal.dev/pool")
    assert reasons(problems) == ["UnknownGPUProduct"]


def test_missing_secret_and_claim():
    problems = find_problems(spec(), ClusterFacts(NODES, ("hf-token",), ("weights",)), "tidal.dev/pool")
    assert reasons(problems) == ["SecretNotFound", "ClaimNotFound"]


def test_a_valid_spec_has_no_problems():
    assert find_problems(spec(placement={"nodePool": "h100"}, resources={"gpus": 8}), ClusterFacts(NODES),
                         "tidal.dev/pool") == []


def test_spec_errors_name_field_value_and_rule():
    try:
        parse_spec({"engine": {"type": "vllm"}, "model": {"uri": "hf://o/m"}, "scaling": {"maxReplicas": 0}})
    except ValidationError as err:
        [problem] = spec_problems(err)
    assert problem.reason == "InvalidSpec"
    assert problem.message.startswith("spec.scaling.maxReplicas: Input should be greater than or equal to 1")
    assert problem.message.endswith("(got 0)")


def deployment(want, ready, progressing=None):
    status = {"replicas": want, "readyReplicas": ready}
    if progressing:
        status["conditions"] = [{"type": "Progressing", "reason": progressing, "message": "deadline"}]
    return {"spec": {"replicas": want}, "status": status}


def ready(status):
    c = next(c for c in status["conditions"] if c["type"] == "Ready")
    return c["status"], c["reason"]


def test_status_follows_the_replicas_and_the_engine():
    loading = plan_status({}, Observation(1, deployment=deployment(1, 0)), "t1")
    assert ready(loading) == ("False", "ModelLoading")
    up = plan_status(loading, Observation(1, deployment=deployment(1, 1), engine_ready=True), "t2")
    assert ready(up) == ("True", "ModelReady") and up["readyReplicas"] == 1 and up["observedGeneration"] == 1
    engine_down = plan_status(up, Observation(1, deployment=deployment(1, 1), engine_ready=False,
                                              engine_message="no model"), "t3")
    assert ready(engine_down) == ("False", "EngineNotReady")
    zero = plan_status(up, Observation(2, deployment=deployment(0, 0)), "t4")
    assert ready(zero) == ("True", "ScaledToZero")


def test_unchanged_observation_gives_an_identical_status():
    obs = Observation(3, deployment=deployment(2, 2), engine_ready=True, url="http://x")
    first = plan_status({}, obs, "t1")
    assert plan_status(first, obs, "t2") == first  # no write when nothing changed


def test_transition_time_moves_only_with_the_status():
    first = plan_status({}, Observation(1, deployment=deployment(2, 1), engine_ready=True), "t1")
    second = plan_status(first, Observation(1, deployment=deployment(2, 2), engine_ready=True), "t2")
    [c] = [c for c in second["conditions"] if c["type"] == "Ready"]
    assert c["lastTransitionTime"] == "t1" and c["message"] == "2/2 replicas serving"


def test_unschedulable_and_deadline_are_reported():
    pods = [{"status": {"conditions": [{"type": "PodScheduled", "reason": "Unschedulable",
                                        "message": "0/10 nodes are available: Insufficient nvidia.com/gpu"}]}}]
    assert ready(plan_status({}, Observation(1, deployment=deployment(1, 0), pods=pods), "t")) == \
        ("False", "Unschedulable")
    assert ready(plan_status({}, Observation(1, deployment=deployment(1, 0, "ProgressDeadlineExceeded")), "t")) == \
        ("False", "ProgressDeadlineExceeded")


def test_initial_replicas():
    assert initial_replicas(spec(scaling={"minReplicas": 0, "maxReplicas": 4})) == 1
    assert initial_replicas(spec(scaling={"minReplicas": 3, "maxReplicas": 4})) == 3


@pytest.mark.model_cache
def test_a_failed_model_fetch_is_the_ready_condition_naming_its_reason():
    """The kubelet's status of a replica whose fetch init container failed (tidal fetch-model writes its reason
    as the first word of the termination message), while the next attempt waits in CrashLoopBackOff."""
    def pod(message, exit_code=1):
        return {"status": {"initContainerStatuses": [{
            "name": "fetch-model", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": exit_code, "reason": "Error", "message": message}}}]}}
    too_small = pod("CacheTooSmall: s3://m/llama is 140.0 GiB; the node's model cache holds 100.0 GiB")
    status = plan_status({}, Observation(1, deployment=deployment(1, 0), pods=[too_small]), "t")
    [c] = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert (c["status"], c["reason"]) == ("False", "CacheTooSmall") and "140.0 GiB" in c["message"]
    missing = pod("ModelFetchFailed: s3://m/nope: s3://m/nope/: no objects there")
    assert ready(plan_status({}, Observation(1, deployment=deployment(1, 0), pods=[missing]), "t")) == \
        ("False", "ModelFetchFailed")
    killed = pod("", exit_code=137)  # OOM-killed: no message of its own
    status = plan_status({}, Observation(1, deployment=deployment(1, 0), pods=[killed]), "t")
    [c] = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert c["reason"] == "ModelFetchFailed" and "137" in c["message"]


# ---- which nodes hold a model (#30.2) ------------------------------------------------------------------------

def _node(name, pool, *labels):
    return {"metadata": {"name": name, "labels": {"tidal.dev/pool": pool, **{k: "true" for k in labels}}}}


def _fetched_pod(node, exit_code=0):
    return {"spec": {"nodeName": node}, "status": {"initContainerStatuses": [
        {"name": "fetch-model", "state": {"terminated": {"exitCode": exit_code}}}]}}


def test_nodes_where_a_fetch_succeeded_get_the_label_and_count_as_cached():
    from tidal.planning.cache_nodes import fetched_on, plan_cache_nodes
    label = "model-cache.tidal.dev/0123456789abcdef"
    nodes = [_node("a1", "a100", label), _node("a2", "a100"), _node("a3", "a100"), _node("h1", "h100")]
    pods = [_fetched_pod("a2"), _fetched_pod("a3", exit_code=1), _fetched_pod("h1"),
            {"spec": {"nodeName": "a3"}, "status": {"initContainerStatuses": [
                {"name": "fetch-model", "state": {"running": {}}}]}}]  # still fetching: not yet
    assert fetched_on(pods) == {"a2", "h1"}
    plan = plan_cache_nodes(nodes, {"tidal.dev/pool": "a100"}, label, fetched_on(pods))
    # a1 already carries it; a2 and h1 (a replica placed off the pool by the user's own selector) get it
    assert plan.to_label == ["a2", "h1"] and (plan.cached, plan.pool) == (2, 3)
    gone = plan_cache_nodes(nodes, {"tidal.dev/pool": "a100"}, label, {"a-deleted-node"})
    assert gone.to_label == [] and (gone.cached, gone.pool) == (1, 3)


def test_the_prefetched_condition_counts_pool_nodes_whose_prefetch_pod_holds_the_model():
    from tidal.planning.cache_nodes import pool_nodes_holding, prefetch_condition
    nodes = [_node("a1", "a100", "stale-label"), _node("a2", "a100"), _node("h1", "h100")]
    # labels outlive a deleted service's DaemonSet: only the prefetch pods that fetched count
    assert pool_nodes_holding(nodes, {"tidal.dev/pool": "a100"}, {"a2", "h1"}) == 1
    assert prefetch_condition(4, 4, None) == ("True", "Prefetched", "the weights are cached on 4 of 4 pool node(s)")
    assert prefetch_condition(1, 4, None)[:2] == ("False", "Prefetching")
    status, reason, message = prefetch_condition(1, 4, ("CacheTooSmall", "140.0 GiB > 100.0 GiB"))
    assert (status, reason) == ("False", "CacheTooSmall") and "140.0 GiB" in message and "1 of 4" in message
    assert prefetch_condition(0, 0, None)[1] == "NoPoolNodes"


def test_status_reports_cached_and_pool_nodes_and_drops_them_when_the_cache_is_off():
    from tidal.planning.cache_nodes import CachePlan
    on = plan_status({}, Observation(1, deployment=deployment(1, 1), cache=CachePlan([], 2, 4),
                                     prefetch=("False", "Prefetching", "on 2 of 4")), "t")
    assert (on["cachedNodes"], on["poolNodes"]) == (2, 4)
    assert [c["reason"] for c in on["conditions"] if c["type"] == "Prefetched"] == ["Prefetching"]
    off = plan_status(on, Observation(1, deployment=deployment(1, 1)), "t")
    assert "cachedNodes" not in off and "poolNodes" not in off
    assert not [c for c in off["conditions"] if c["type"] == "Prefetched"]


@pytest.mark.parametrize("spec,field", [
    ({"model": {"uri": "pvc://claim/m", "cache": {"prefetch": True}}, "placement": {"nodePool": "a100"}},
     "a pvc:// model is mounted, not cached per node"),
    ({"model": {"uri": "s3://b/m", "cache": {"prefetch": True}}}, "needs placement.nodePool"),
])
def test_prefetch_that_cannot_happen_is_refused_naming_the_field(spec, field):
    with pytest.raises(ValidationError, match="model.cache.prefetch") as err:
        parse_spec({"engine": {"type": "vllm"}, **spec})
    assert field in str(err.value)


def test_a_gs_model_may_be_prefetched():
    spec = parse_spec({"engine": {"type": "vllm"}, "model": {"uri": "gs://b/m", "cache": {"prefetch": True}},
                       "placement": {"nodePool": "a100"}})
    assert spec.model.cache.prefetch


QUOTA_MESSAGE = ('pods "llm-7d9-x" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1, '
                 'used: requests.nvidia.com/gpu=1, limited: requests.nvidia.com/gpu=1')


def test_a_quota_that_keeps_a_service_below_its_minimum_is_a_false_ready_naming_the_quota():
    refused = deployment(2, 1)
    refused["status"]["conditions"] = [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                        "message": QUOTA_MESSAGE}]
    status = plan_status({}, Observation(1, deployment=refused, min_replicas=2), "t")
    [c] = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert (c["status"], c["reason"]) == ("False", "QuotaExceeded") and "exceeded quota: gpus" in c["message"]
    assert "minReplicas is 2" in c["message"]
    # Above its minimum, the quota limits growth (the autoscaler says so), not readiness.
    assert ready(plan_status({}, Observation(1, deployment=refused, min_replicas=1), "t")) == ("True", "ModelReady")


def test_the_autoscaler_asks_for_no_more_than_the_quota_allows_and_says_so():
    from tidal.autoscaling import Observation as Seen, Policy, ScalerState, decide
    obs = Seen(current=2, ready=1, waiting=50.0, running=10.0, quota_refused=QUOTA_MESSAGE)
    d = decide(obs, ScalerState(), Policy(max_replicas=8, target_queue=4, max_concurrency=10), now=100.0)
    assert (d.replicas, d.reason) == (2, "QuotaExceeded") and "exceeded quota" in d.message
