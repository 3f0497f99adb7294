"""Objects every fresh local cluster needs: its helpers' RBAC and the simulated nodes."""

from __future__ import annotations

import time
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .nodes import ClusterDescription, node_manifests

SIM_RUNTIME_USER = "tidal-sim-runtime"


def api_client(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


def _create(fn, body) -> None:
    try:
        fn(body=body)
    except ApiException as err:
        if err.status != 409:  # already there: a re-run of bootstrap
            raise


# What the cluster's own helpers may do, by user name (their client certificates carry it).
INFRA_PERMISSIONS = {
    # patch: the drain finalizer on the pods it serves; secrets get: a real fetch container's secretKeyRef
    # (what a kubelet reads for the pods on its node)
    SIM_RUNTIME_USER: [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
                       {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
                       {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
}


def create_infra_rbac(kubeconfig: Path) -> None:
    with api_client(kubeconfig) as api:
        rbac = client.RbacAuthorizationV1Api(api)
        for user, rules in INFRA_PERMISSIONS.items():
            name = f"tidal-dev:{user}"
            _create(rbac.create_cluster_role, {"metadata": {"name": name}, "rules": rules})
            _create(rbac.create_cluster_role_binding, {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            })


def create_nodes(kubeconfig: Path, desc: ClusterDescription, log=print, timeout: float = 60,
                 octet: int = 16) -> None:
    api = api_client(kubeconfig)
    core = client.CoreV1Api(api)
    manifests = node_manifests(desc, octet)
    for node in manifests:
        _create(core.create_node, node)
    wanted = {n["metadata"]["name"] for n in manifests}
    deadline = time.monotonic() + timeout
    while True:
        ready = {n.metadata.name for n in core.list_node().items
                 if any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))}
        default_sa = bool(core.list_namespaced_service_account("default").items)
        if wanted <= ready and default_sa:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"nodes not Ready after {timeout:.0f} s: {sorted(wanted - ready)}; "
                               f"default ServiceAccount present: {default_sa} (see logs/kwok.log)")
        time.sleep(0.3)
    gpus = sum(p.nodes * p.gpus_per_node for p in desc.pools)
    log(f"  {len(wanted)} simulated nodes Ready ({', '.join(f'{p.name}: {p.nodes}' for p in desc.pools)}; "
        f"{gpus} GPUs)")
    api.close()
