# The commands a user runs. Everything here calls the `tidal` CLI or pytest.
PYTHON ?= python3
STATE_DIR ?= $(CURDIR)/.tidal

.PHONY: install build-cluster cluster cluster-down cluster-status test test-unit test-cluster

install:
	$(PYTHON) -m pip install -q -e '.[test]'

# Build (or reuse from ~/.cache/tidal/bin) etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok and helm.
build-cluster:
	$(PYTHON) -m tidal.cli dev-cluster build

cluster:
	$(PYTHON) -m tidal.cli dev-cluster up --state-dir $(STATE_DIR)

cluster-down:
	$(PYTHON) -m tidal.cli dev-cluster down --state-dir $(STATE_DIR)

cluster-status:
	$(PYTHON) -m tidal.cli dev-cluster status --state-dir $(STATE_DIR)

# The whole suite: unit tests, then tests on a throw-away local cluster of their own.
test:
	$(PYTHON) -m pytest -q

test-unit:
	$(PYTHON) -m pytest -q -m "not cluster"

test-cluster:
	$(PYTHON) -m pytest -q -m cluster
