# Skython: `make run` starts it on this machine, `make test` runs every suite.
# Heavy builds live outside the repository so clean clones reuse them.
SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/skython
export CARGO_TARGET_DIR ?= $(CACHE)/target
VENV ?= $(CACHE)/venv
VENV_FULL ?= $(CACHE)/venv-full
VENV_BENCH ?= $(CACHE)/venv-bench
VENV_MONGO ?= $(CACHE)/venv-mongo
VENV_OPENAPI ?= $(CACHE)/venv-openapi
VENV_HELM ?= $(CACHE)/venv-helm
MONGO_PORT ?= 27099
ADDR ?= 127.0.0.1:8080
DATA_DIR ?= .skython
SKYTHON_RELEASE := $(CARGO_TARGET_DIR)/release/skython
SKYTHON_DEBUG := $(CARGO_TARGET_DIR)/debug/skython

.PHONY: run test build sandbox venv venv-full venv-mongo venv-openapi venv-helm mongo-start mongo-stop generate lint unit python-unit e2e clean cluster-up cluster-down \
	bench bench-quick bench-state bench-ab bench-tools bench-check bench-cluster web browser web-test images

## run: build what is missing, then start Skython at http://$(ADDR) (data in $(DATA_DIR))
run: venv sandbox web
	cargo build --release -p skython-cli
	$(SKYTHON_RELEASE) up --addr $(ADDR) --data-dir $(DATA_DIR) --python $(VENV)/bin/python

## test: formatting, lints, unit tests, integration and end-to-end tests over real processes,
## the MongoDB backend against a MongoDB-wire server (SecantusDB, started by scripts/mongo.sh and
## stopped afterwards), and the operator against a real one-node Kubernetes (started by
## e2e/cluster/up.sh and stopped afterwards; KEEP_CLUSTER=1 leaves it running for the next run)
test: venv venv-full venv-mongo venv-openapi venv-helm sandbox lint python-unit bench-check web-test
	cargo build -p skython-cli
	@mkdir -p $(CACHE)
	$(MAKE) cluster-up
	set -o pipefail; rc=1; : > $(CACHE)/test.log; \
	  if $(MONGO) start; then \
	    SKYTHON_BIN=$(SKYTHON_DEBUG) SKYTHON_PYTHON=$(VENV)/bin/python \
	    SKYTHON_PYTHON_FULL=$(VENV_FULL)/bin/python SKYTHON_OPENAPI_PYTHON=$(VENV_OPENAPI)/bin/python \
	    SKYTHON_HELM_PYTHON=$(VENV_HELM)/bin/python SKYTHON_KUBECONFIG=$(KUBECONFIG_E2E) \
	    SKYTHON_MONGODB_URL='$(MONGODB_URL_E2E)' SKYTHON_SECANTUSD=$(VENV_MONGO)/bin/secantusd-py \
	    cargo test --workspace --no-fail-fast 2>&1 | tee $(CACHE)/test.log; \
	    rc=$$?; \
	  fi; \
	  $(MONGO) stop; [ -n "$(KEEP_CLUSTER)" ] || bash e2e/cluster/down.sh; \
	  awk '/^# pass / {wp = $$3} /^# fail / {wf = $$3} END {printf "browser: %d passed, %d failed; ", wp, wf}' $(CACHE)/web-test.log; \
	  awk '/^test result:/ {p += $$4; f += $$6} END {printf "%d passed, %d failed\n", p, f}' $(CACHE)/test.log; \
	  exit $$rc

MONGO := VENV_MONGO=$(VENV_MONGO) MONGO_PORT=$(MONGO_PORT) CACHE=$(CACHE) scripts/mongo.sh
MONGODB_URL_E2E := mongodb://127.0.0.1:$(MONGO_PORT)/?directConnection=true
# Runs the rest of the recipe line with the MongoDB test server up and SKYTHON_MONGODB_URL set,
# and stops the server afterwards whatever the line's outcome.
WITH_MONGO = $(MONGO) start && trap '$(MONGO) stop' EXIT && SKYTHON_MONGODB_URL='$(MONGODB_URL_E2E)'

## mongo-start: the MongoDB-wire test server on $(MONGO_PORT), fresh storage (for running tests by
##   hand: SKYTHON_MONGODB_URL=$(MONGODB_URL_E2E)); mongo-stop: stop it
mongo-start: venv-mongo
	@$(MONGO) start

mongo-stop:
	@$(MONGO) stop

KUBECONFIG_E2E := $(CACHE)/cluster/admin.kubeconfig

## cluster-up: a real one-node Kubernetes with the images built from this tree's binary (images/README.md;
##   SKYTHON_CLUSTER_FULL=1 adds runner-full, 2+ GB)
cluster-up:
	cargo build -p skython-cli
	SKYTHON_BIN=$(SKYTHON_DEBUG) bash e2e/cluster/up.sh

## images: the registry images (images/README.md) with Docker: skython, runner and runner-full,
##   tagged $(IMAGE_REPO)/NAME:$(IMAGE_TAG) (push them yourself)
IMAGE_REPO ?= skython
IMAGE_TAG ?= dev
images:
	@docker info >/dev/null 2>&1 || { echo "make images needs a running Docker engine (docker info failed);" \
	  "the test cluster builds its images without one: make cluster-up" >&2; exit 1; }
	DOCKER_BUILDKIT=1 docker build -f images/skython/Dockerfile -t $(IMAGE_REPO)/skython:$(IMAGE_TAG) .
	DOCKER_BUILDKIT=1 docker build -f images/runner/Dockerfile -t $(IMAGE_REPO)/runner:$(IMAGE_TAG) .
	DOCKER_BUILDKIT=1 docker build -f images/runner/Dockerfile --build-arg RUNTIME=full \
	  -t $(IMAGE_REPO)/runner-full:$(IMAGE_TAG) .

## cluster-down: stop it (the built binaries and images stay cached)
cluster-down:
	bash e2e/cluster/down.sh

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	@command -v shellcheck >/dev/null || (apt-get update -qq && apt-get install -y -qq shellcheck) >/dev/null
	shellcheck -x -P SCRIPTDIR e2e/cluster/*.sh scripts/*.sh images/*.sh .ci/run

## python-unit: the runtime's Python unit tests (runner/python/tests) with the runtime's Python
python-unit: venv
	PYTHONPATH=runner/python PYTHONDONTWRITEBYTECODE=1 \
	  $(VENV)/bin/python -m unittest discover -s runner/python/tests

## sandbox: bubblewrap, which confines every function (installed with apt when missing)
sandbox:
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null; } || \
	  { echo "bubblewrap sandboxes every function: install it (sudo apt-get install bubblewrap)" >&2; exit 1; }

## web: the web app's npm packages (pinned in web/package-lock.json; `npm ci` again when the lock
##   changes) and its build into web/dist
web: web/node_modules/.ci-stamp
	cd web && npm run build

web/node_modules/.ci-stamp: web/package-lock.json
	@command -v npm >/dev/null || { echo "building the web app needs Node.js and npm (sudo apt-get install nodejs npm)" >&2; exit 1; }
	cd web && npm ci
	@touch $@

## browser: Debian's Chromium, which the web tests drive (installed with apt when missing)
browser:
	@[ -x /usr/bin/chromium ] || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null; } || \
	  { echo "the web tests drive Debian's Chromium: install it (sudo apt-get install chromium)" >&2; exit 1; }

## web-test: the browser tests (web/tests): headless Chromium against a real `skython up`
web-test: web browser venv sandbox
	cargo build -p skython-cli
	@mkdir -p $(CACHE)
	set -o pipefail; cd web && SKYTHON_BIN=$(abspath $(SKYTHON_DEBUG)) SKYTHON_PYTHON=$(abspath $(VENV))/bin/python \
	  npm test 2>&1 | tee $(CACHE)/web-test.log

## venv: the standard Python runtime (numpy, pandas, scipy, requests, bs4), pinned in runtime/
venv:
	@scripts/venv.sh runtime/requirements.txt $(VENV)

## venv-full: the full runtime (adds tensorflow and keras); start with
##   skython up --python-full $(VENV_FULL)/bin/python
venv-full:
	@scripts/venv.sh runtime/requirements-full.txt $(VENV_FULL)

## venv-mongo: SecantusDB, the MongoDB-wire server the MongoDB backend's tests run against,
##   pinned in e2e/mongo/requirements.txt
venv-mongo:
	@scripts/venv.sh e2e/mongo/requirements.txt $(VENV_MONGO)

## venv-openapi: openapi-spec-validator, which the e2e tests run on the functions' OpenAPI
##   documents, pinned in e2e/openapi/requirements.txt
venv-openapi:
	@scripts/venv.sh e2e/openapi/requirements.txt $(VENV_OPENAPI)

## venv-helm: helm-python-sdk (Helm v4 as a library; Debian has no helm binary), which
##   scripts/helm.py drives the chart with, pinned in e2e/helm/requirements.txt
venv-helm:
	@scripts/venv.sh e2e/helm/requirements.txt $(VENV_HELM)

## generate: rewrite the generated artifacts (docs/openapi.json, the CRD in helm/) from the code
generate:
	SKYTHON_WRITE_GENERATED=1 cargo test -p skython-gateway committed_openapi_is_current
	SKYTHON_WRITE_GENERATED=1 cargo test -p skython-crds committed_crd_is_current

build:
	cargo build --release -p skython-cli -p http-floor

## bench: Skython against FastAPI/uvicorn, Flask/gunicorn, an in-process loop and a do-nothing
##   HTTP responder (minutes); writes bench/results/latest.md and latest.png; the state scenario
##   on both stores (SQLite, and MongoDB: the SecantusDB test server, started for it); then the
##   cluster benchmarks when the test cluster is up (skipped, saying why, when it is not)
bench: venv venv-mongo sandbox bench-tools build
	$(WITH_MONGO) $(VENV_BENCH)/bin/python bench/bench.py --skython $(SKYTHON_RELEASE) \
	  --http-floor $(CARGO_TARGET_DIR)/release/http-floor \
	  --runtime-python $(VENV)/bin/python --bench-python $(VENV_BENCH)/bin/python
	$(MAKE) bench-cluster CLUSTER_BENCH_FLAGS=--if-cluster

## bench-cluster: `skython gateway` and runner pods on the test cluster (`make cluster-up` first;
##   about 8 minutes): time to first answer from zero with 10 and 200 functions deployed, the
##   gateway's overhead per warm call, a burst's replica-seconds against the ideal; writes
##   bench/results/cluster.md (CLUSTER_BENCH_FLAGS=--quick: fewer repetitions, about 3 minutes);
##   runner pods get the release build (`make cluster-up` puts the debug build back)
bench-cluster: build
	@# Runner pods run the release build too (when the cluster is up: the image is refreshed).
	@if kubectl --kubeconfig $(KUBECONFIG_E2E) get --raw /readyz >/dev/null 2>&1; then \
	  SKYTHON_BIN=$(SKYTHON_RELEASE) bash e2e/cluster/up.sh >/dev/null; fi
	python3 bench/cluster_bench.py --skython $(SKYTHON_RELEASE) --python $(VENV)/bin/python \
	  --kubeconfig $(KUBECONFIG_E2E) $(CLUSTER_BENCH_FLAGS)

## bench-quick: warm `add` at concurrency 64 against FastAPI and Flask only (under a minute)
bench-quick: venv sandbox bench-tools build
	$(VENV_BENCH)/bin/python bench/bench.py --quick --rounds 3 --seconds 3 \
	  --skython $(SKYTHON_RELEASE) --runtime-python $(VENV)/bin/python --bench-python $(VENV_BENCH)/bin/python

## bench-state: the state scenario only (about a minute): a counter's `load` + `store` calls/s at
##   concurrency 16 against the 15,000 target, beside the stateless `add` on the same server; also
##   on MongoDB (as in `make bench`)
bench-state: venv venv-mongo sandbox bench-tools build
	$(WITH_MONGO) $(VENV_BENCH)/bin/python bench/bench.py --state --rounds 3 --seconds 3 \
	  --skython $(SKYTHON_RELEASE) --runtime-python $(VENV)/bin/python --bench-python $(VENV_BENCH)/bin/python

## bench-ab: this tree's build against an earlier one, BASE (a git rev; default 9f560f6, the last
##   before issue 14's per-worker isolation), alternating in one run: warm `add`, worker starts,
##   memory per idle function, each with the ratio new/old; writes bench/results/ab.md. The
##   baseline is exported and built once under $(AB_DIR) (AB_ROUNDS rounds, default 5)
BASE ?= 9f560f6
AB_DIR ?= $(CACHE)/ab
AB_ROUNDS ?= 5
bench-ab: venv sandbox bench-tools build
	baseline=$$(scripts/ab-baseline.sh $(BASE) $(AB_DIR)) && \
	$(VENV_BENCH)/bin/python bench/bench.py --baseline "$$baseline" \
	  --baseline-label "$$(git rev-parse --short $(BASE))" --rounds $(AB_ROUNDS) \
	  --skython $(SKYTHON_RELEASE) --runtime-python $(VENV)/bin/python

# The harness's unit tests and a one-round smoke run (figures are not checked: not a CI gate)
bench-check: bench-tools
	cargo build -p skython-cli -p http-floor
	cd bench && HTTP_FLOOR=$(CARGO_TARGET_DIR)/debug/http-floor $(VENV_BENCH)/bin/python -m unittest -q test_bench test_cluster_bench
	$(VENV_BENCH)/bin/python bench/bench.py --quick --rounds 1 --seconds 1 --skython $(SKYTHON_DEBUG) \
	  --runtime-python $(VENV)/bin/python --bench-python $(VENV_BENCH)/bin/python

# wrk from Debian, the contenders and matplotlib from PyPI (pinned in bench/requirements.txt)
bench-tools:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null; } || \
	  { echo "the benchmarks need wrk: sudo apt-get install wrk" >&2; exit 1; }
	@scripts/venv.sh bench/requirements.txt $(VENV_BENCH)

clean:
	rm -rf $(DATA_DIR)
