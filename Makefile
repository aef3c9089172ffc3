# kubectl-mesh developer entry points. `make help` lists them.
SHELL := /bin/bash
# The venv lives outside the checkout and is built from Debian's python3, so that processes run
# as other UIDs (the proxy as 2102) can read the interpreter (see lab/runtime.py).
VENV ?= /opt/kubectl-mesh/venv
SYSTEM_PYTHON ?= /usr/bin/python3
PY := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=

.PHONY: help setup system-deps demo test test-fast lint binaries cluster cluster-down walkthrough krew \
        bench-proxy bench-webhook bench-cli bench-inject clean

help:
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

$(VENV)/.stamp: pyproject.toml
	@test -x $(SYSTEM_PYTHON) || { echo "error: $(SYSTEM_PYTHON) is missing: apt-get install -y python3 python3-venv"; exit 1; }
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,dev]'
	touch $@

setup: $(VENV)/.stamp ## create the venv with the package and its test/dev extras

system-deps: ## install the Debian packages the tests and the demo need (root)
	scripts/install-system-deps.sh

demo: setup ## run the local demo mesh and print the walkthrough's tables (ARGS=--once to exit)
	@command -v prometheus >/dev/null || [ "$$(id -u)" != 0 ] || scripts/install-system-deps.sh
	$(VENV)/bin/kubectl-mesh demo $(ARGS)

# As root the tests include the lab: its Debian packages and binaries come first (once; then cached).
AS_ROOT := $(filter 0,$(shell id -u))

test: setup $(if $(AS_ROOT),system-deps binaries) ## run every test (root runs the namespace, iptables and lab tests too)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: setup ## only the tests that need neither root nor the lab
	$(VENV)/bin/pytest -m 'not root and not lab' $(PYTEST_ARGS)

lint: setup ## ruff, mypy and the import contracts (pyproject.toml's [tool.importlinter])
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

binaries: ## build kube-apiserver, kube-controller-manager, etcd, helm, krew, prometheus, actionlint into ~/.cache/kubectl-mesh
	lab/build-binaries.sh

cluster: setup binaries ## start the local lab cluster; kubeconfig in .lab/kubeconfig
	$(PY) -m lab up

cluster-down: ## stop the lab and remove everything it made
	$(PY) -m lab down

walkthrough: setup binaries ## the seed walkthrough on the lab (root): install, inject, three stat tables
	$(PY) -m lab.walkthrough $(ARGS)

krew: setup ## build dist/kubectl-mesh.tar.gz (zipapp + LICENSE) and dist/krew-manifest.yaml
	$(PY) scripts/build_krew.py

bench-proxy: setup ## proxy throughput, added latency and memory (JSON on the last line)
	$(PY) -m bench.bench_proxy $(ARGS)

bench-webhook: setup ## admissions per second and latency over TLS (JSON on the last line)
	$(PY) -m bench.bench_webhook $(ARGS)

bench-inject: setup ## kubectl mesh inject over a 50 MB manifest: MB/s and peak RSS (JSON on the last line)
	$(PY) -m bench.bench_inject $(ARGS)

bench-cli: setup binaries ## kubectl mesh stat vs kubectl get against the lab (JSON on the last line)
	$(PY) -m bench.bench_cli $(ARGS)

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
