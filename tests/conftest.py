"""Shared fixtures. Tests that need the local cluster use `dev_cluster` and are marked `cluster`."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tidal.devcluster.cluster import ClusterInfo, DevCluster

TESTS_DIR = Path(__file__).parent
TEST_NODES = TESTS_DIR / "nodepools-test.yaml"


def pytest_collection_modifyitems(items):
    for item in items:
        if "dev_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory) -> ClusterInfo:
    """One real control plane + Prometheus for the whole session, torn down at the end.

    It has its own state directory, so it never touches a cluster started with `make cluster`.
    """
    state_dir = Path(os.environ.get("TIDAL_TEST_STATE_DIR") or tmp_path_factory.mktemp("cluster"))
    cluster = DevCluster(state_dir, TEST_NODES, scrape_interval="1s")
    info = cluster.up()
    yield info
    cluster.down()


@pytest.fixture(scope="session")
def k8s(dev_cluster):
    from tidal.devcluster.bootstrap import api_client
    api = api_client(dev_cluster.kubeconfig)
    yield api
    api.close()


@pytest.fixture
def namespace(k8s):
    """A fresh namespace per test, deleted afterwards (with everything in it)."""
    from kubernetes import client
    core = client.CoreV1Api(k8s)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")
