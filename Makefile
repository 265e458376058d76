# geopin — every entry point a developer or CI uses. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help prereqs venv controlplane controlplane-1.36 nodes lint test test-unit test-e2e dev-up install-local dev-down demo lock clean

help: ## list the targets
	@grep -E '^[a-z0-9.-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

$(STAMP): pyproject.toml requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements/dev.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

venv: $(STAMP) ## create .venv from the lock

# First in the list of every target that starts the local environment, so that a fresh machine learns
# what it lacks (or, as root, gets it) before minutes of building.
prereqs: ## check (as root: install) the commands and packages the local environment needs
	@PYTHON=$(PYTHON) hack/prereqs.sh

controlplane: ## build (or find cached) etcd, kube-apiserver, kube-controller-manager, kubectl
	@hack/controlplane/build.sh

# Only the MutatingAdmissionPolicy tests run on it; built here, before pytest, so that a cold build
# (about 5 min) never eats a test's time-out.
controlplane-1.36: ## build (or find cached) etcd and kube-apiserver 1.36 (MutatingAdmissionPolicy v1)
	@hack/controlplane/build.sh hack/controlplane-1.36

nodes: controlplane ## build (or find cached) kubelet, kube-scheduler, geopin-pod, geopin-runc (hack/node)
	@hack/node/build.sh

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(BIN)/ruff check operator tests
	$(BIN)/ruff format --check operator tests
	$(BIN)/mypy

test-unit: $(STAMP) ## the pure core's tests (seconds)
	$(BIN)/pytest tests/unit -q

# Two pytest-xdist workers, each taking whole files (module fixtures stay shared within a file): most
# end-to-end time is spent waiting on probes, Pods and the API server, not on the CPU. Files go out in
# collection order, which tests/e2e/conftest.py sorts longest first (xdist's own order is by test count).
WORKERS ?= 2
PARALLEL := -n $(WORKERS) --dist loadfile --no-loadscope-reorder

test-e2e: prereqs $(STAMP) controlplane controlplane-1.36 nodes ## end-to-end tests on the local control plane and registries
	$(BIN)/pytest tests/e2e -q $(PARALLEL)

test: prereqs lint controlplane controlplane-1.36 nodes ## the whole suite: what .ci/run runs (WORKERS=0: in one process)
	$(BIN)/pytest tests -q $(PARALLEL) --durations=15

# NODES=1 for one real node; NODES=0 for the node-less environment (fake Node objects).
NODES ?= 2
dev-up: prereqs $(STAMP) controlplane nodes ## start the control plane, three ACR-shaped replicas and NODES real nodes (default 2), write .dev/
	$(BIN)/python -m tests.harness up --nodes $(NODES)

install-local: $(STAMP) tools ## after dev-up: the image (built unless build/ has HEAD's) pushed to the replicas, helm install onto the nodes
	$(BIN)/python -m tests.harness install-local $(INSTALL_ARGS)

dev-down: $(STAMP) ## stop what dev-up started and remove .dev/
	$(BIN)/python -m tests.harness down

demo: prereqs $(STAMP) controlplane nodes ## the guided tour: ACR-shaped replicas, a real node, geopin, real Pods through an outage
	$(BIN)/python -m tests.harness.demo $(DEMO_ARGS)

lock: ## re-resolve requirements/*.lock from pyproject.toml
	$(BIN)/uv pip compile --quiet --generate-hashes pyproject.toml -o requirements/runtime.lock
	$(BIN)/uv pip compile --quiet pyproject.toml --extra dev -o requirements/dev.lock

clean: ## remove the venv and local state (build cache stays in ~/.cache/geopin)
	rm -rf $(VENV) .dev .pytest_cache .mypy_cache .ruff_cache

# -- shipping artifacts: chart, plain manifests, image lint (charts/geopin, deploy/, Dockerfile) --------
CHART := charts/geopin
CRD := registrypolicies.geopin.io.yaml
CHART_ALL_FEATURES := --set serviceMonitor.enabled=true --set prometheusRule.enabled=true \
	--set grafanaDashboard.enabled=true --set samplePolicy.enabled=true --set rbac.secrets.enabled=true \
	--set azureWorkloadIdentity.enabled=true --set azureWorkloadIdentity.clientId=11111111-2222-3333-4444-555555555555 \
	--set service.webhook.enabled=true --set networkPolicy.enabled=true --set priorityClass.create=true \
	--set metrics.secure=true --set metrics.certSecret=geopin-metrics-tls

.PHONY: tools chart-lint deploy-render deploy-check corpus-render

tools: ## build (or find cached) helm and kubeconform; prints their directory
	@hack/tools/build.sh

chart-lint: $(STAMP) ## helm lint --strict (defaults and every optional feature) and hadolint the Dockerfile
	bin=$$(hack/tools/build.sh) && $$bin/helm lint --strict $(CHART) && $$bin/helm lint --strict $(CHART) $(CHART_ALL_FEATURES)
	$(BIN)/hadolint Dockerfile

deploy-render: ## copy deploy/crds into the chart and render deploy/geopin.yaml from it
	cp deploy/crds/$(CRD) $(CHART)/crds/$(CRD)
	hack/render-deploy.sh

corpus-render: ## re-render the plan corpus (tests/fixtures/manifests/rendered) with helm and kubectl kustomize
	hack/render-corpus.sh

deploy-check: ## fail when the chart's CRD or deploy/geopin.yaml is out of date
	@cmp -s deploy/crds/$(CRD) $(CHART)/crds/$(CRD) || { echo "$(CHART)/crds/$(CRD) differs from deploy/crds/: make deploy-render" >&2; exit 1; }
	hack/render-deploy.sh --check

# -- the image without a Docker daemon (hack/image/, docs/install.md) ----------------------------------
.PHONY: image image-push

image: $(STAMP) ## build the Dockerfile (buildah, no daemon) into build/image (OCI layout), check it runs, write its SBOM
	hack/image/build.sh

image-push: ## push build/image to REGISTRY=host:port [REPOSITORY=geopin] (REGISTRY_CA=file for a private CA)
	@[ -n "$(REGISTRY)" ] || { echo "usage: make image-push REGISTRY=host:port [REPOSITORY=name] [REGISTRY_CA=ca.pem]" >&2; exit 2; }
	REGISTRY_CA="$(REGISTRY_CA)" hack/image/push.sh "$(REGISTRY)" "$(or $(REPOSITORY),geopin)"

# -- benchmarks (bench/, docs/performance.md): full sizes write bench/results/, smoke is what CI runs -----
.PHONY: bench bench-smoke

bench: prereqs $(STAMP) controlplane nodes ## every benchmark at full size (about 35 min on 2 cores), results in bench/results/
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-smoke: prereqs $(STAMP) controlplane nodes ## every benchmark at smoke size (about 4 min), results in a temp dir
	$(BIN)/python -m bench --smoke $(BENCH_ARGS)

# -- the chaos soak (bench/soak.py, docs/reliability.md): exits 1 on a violated invariant -------------------
.PHONY: soak soak-smoke
SEED ?= 1

soak: prereqs $(STAMP) controlplane ## random faults for 20 minutes, invariants checked throughout (SEED=n)
	$(BIN)/python -m bench soak --seed $(SEED) $(SOAK_ARGS)

soak-smoke: prereqs $(STAMP) controlplane ## the soak for 2 minutes (about 3 min in all), results in a temp dir
	$(BIN)/python -m bench soak --smoke --seed $(SEED) $(SOAK_ARGS)
