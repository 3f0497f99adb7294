# The commands a user runs. Everything here calls the `tidal` CLI or pytest.
PYTHON ?= python3
STATE_DIR ?= $(CURDIR)/.tidal

.PHONY: demo demo-down install build-cluster cluster cluster-down cluster-status test test-unit test-cluster \
	test-properties-random crds run up down image chart-package

# See Tidal scale a model 0 -> N -> 0 on the local GPU cluster (builds the cluster on first use).
demo: install
	$(PYTHON) -m tidal_dev demo up --state-dir $(STATE_DIR)

demo-down:
	$(PYTHON) -m tidal_dev demo down --state-dir $(STATE_DIR)

# What demo and test need, installing only what is missing (tools/install.sh; the Debian packages are listed in
# tools/system-packages.txt). A second run with everything present takes seconds.
install:
	PYTHON=$(PYTHON) tools/install.sh

# The container image as an OCI layout at out/image (no Docker engine; root, for mmdebstrap); prints its
# digest and size. `skopeo copy oci:out/image:<version> docker://<registry>/tidal:<version>` pushes it.
image:
	$(PYTHON) tools/image/build.py --out out/image

# The chart as an archive (out/tidal-<version>.tgz), for `helm install` from a file or a chart repository.
chart-package:
	$(PYTHON) -m tidal_dev cluster build >/dev/null
	$$($(PYTHON) -c 'from tidal_dev.cluster.binaries import binaries_dir; print(binaries_dir())')/helm package charts/tidal -d out

# Build (or reuse from ~/.cache/tidal/bin) etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok and helm.
build-cluster:
	$(PYTHON) -m tidal_dev cluster build

cluster:
	$(PYTHON) -m tidal_dev cluster up --state-dir $(STATE_DIR)

# The local stack: the cluster plus Tidal's operator and gateway; URLs and an API key in .tidal/state.json.
up: install
	$(PYTHON) -m tidal_dev cluster up --with-tidal --state-dir $(STATE_DIR)

down:
	$(PYTHON) -m tidal_dev cluster down --state-dir $(STATE_DIR)

cluster-down:
	$(PYTHON) -m tidal_dev cluster down --state-dir $(STATE_DIR)

cluster-status:
	$(PYTHON) -m tidal_dev cluster status --state-dir $(STATE_DIR)

# Regenerate the CRD from the pydantic model (a test fails when the committed one is stale).
crds:
	$(PYTHON) -m tidal.api.crd > crds/tidal.dev_inferenceservices.yaml
	$(PYTHON) -m tidal.api.crd --helm > charts/tidal/templates/crd.yaml
	$(PYTHON) -m tidal.api.crd --batch > crds/tidal.dev_inferencebatches.yaml
	$(PYTHON) -m tidal.api.crd --batch --helm > charts/tidal/templates/crd-inferencebatch.yaml
	$(PYTHON) -m tidal.api.chart_values charts/tidal/values.yaml > charts/tidal/values.schema.json
	$(PYTHON) -m tidal.api.reference > docs/crd-reference.md

# Run the operator against the local cluster (make cluster first).
run:
	$(PYTHON) -m tidal.cli run --kubeconfig $(STATE_DIR)/kubeconfig \
	  --prometheus-url $$($(PYTHON) -c "import json; print(json.load(open('$(STATE_DIR)/state.json'))['prometheus_url'])") \
	  --http-port 8080

# The whole suite, in three lanes that always all run (make test fails if any does): the pure tests on both
# cores; the cluster tests on both cores, each worker with a cluster of its own (`--dist loadfile`: a module's
# tests stay on one worker, in order, so its module fixtures are made once); then, one at a time, the tests that want the machine to themselves: the real engines (vLLM's
# CPU build takes both cores) and the real browser. The slowest tests are listed, so a CI log shows which come
# close to their timeouts.
test: install
	$(PYTHON) -m pytest -q -n 2 -m "not cluster and not real_engine" --durations=10; pure=$$?; \
	$(PYTHON) -m pytest -q -n 2 --dist loadfile -m "cluster and not real_engine and not browser" --durations=20; \
	cluster=$$?; \
	$(PYTHON) -m pytest -q -m "real_engine or (cluster and browser)" --durations=20; alone=$$?; \
	exit $$(( pure || cluster || alone ))

test-unit:
	$(PYTHON) -m pytest -q -m "not cluster"

test-cluster:
	$(PYTHON) -m pytest -q -m cluster

# Property tests with a longer randomised search (make test runs them derandomised: the same examples
# every run, so CI never fails at random). A failure prints a blob to reproduce it.
test-properties-random:
	TIDAL_HYPOTHESIS_PROFILE=random $(PYTHON) -m pytest -q -m "not cluster" tests/test_autoscaling.py \
	  tests/test_lease.py tests/test_kube_client.py tests/test_gateway_hostile.py -p no:cacheprovider
