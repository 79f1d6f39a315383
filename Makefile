# The two set-up commands of the README, and what they are built from.
#   make demo   installs what it needs, brings the local cluster up, runs examples/jobs.ini
#   make test   everything CI runs
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: install cluster-up cluster-down demo test lint build benchmark measure fuzz mutation clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

NODE_STAMP := node_modules/.installed-stamp
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

# Graphviz's dot draws `stepcluster graph`'s pictures (Debian's package).
GRAPHVIZ := /usr/bin/dot
$(GRAPHVIZ):
	command -v apt-get >/dev/null || { echo "install Graphviz (its dot command) for stepcluster graph" >&2; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends graphviz >/dev/null

install: $(STAMP) $(NODE_STAMP) $(GRAPHVIZ)

# OpenSSH on 127.0.0.1:2222, Slurm and Grid Engine (installs them with apt on first use).
cluster-up:
	scripts/local-cluster.sh up

cluster-down:
	scripts/local-cluster.sh down

demo: install cluster-up
	$(BIN)/stepcluster run-local examples/jobs.ini --cluster-name demo

# sam validate/build need a region and credentials to be set, not to be valid.
lint: install
	AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing PATH=$(CURDIR)/$(BIN):$$PATH \
	  $(BIN)/sam validate --lint

build: install
	AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing PATH=$(CURDIR)/$(BIN):$$PATH \
	  $(BIN)/sam build

# Two phases of two pytest processes each (scripts/run-tests.sh says why): the CPU-bound tests
# beside the fault tests, which stop the rig's daemons; then the other end-to-end runs.
test: install cluster-up
	scripts/run-tests.sh

# build first: its packages case measures what `sam build` ships.
benchmark: install cluster-up build
	$(BIN)/python scripts/benchmark.py

# Time, CPU and peak memory of each function's work (template.yaml's MemorySize/Timeout quote
# them): imports, and pcluster.lib's create/describe/delete under moto (Node.js). Add
# MEASURE_ARGS=--results to also stream results from the local cluster (needs cluster-up).
measure: install
	$(BIN)/python scripts/measure_functions.py $(MEASURE_ARGS)

# The property tests with 100,000 generated cases each (CI runs a few hundred).
fuzz: install
	HYPOTHESIS_PROFILE=fuzz STEPCLUSTER_FUZZ_EXAMPLES=100000 $(BIN)/pytest -q -p no:cacheprovider tests/unit/test_config_properties.py tests/unit/test_preprocess_safety.py

# Mutation testing of the core modules with their unit and functional tests (minutes per
# module; not in CI). MODULES="stepcluster/staging.py" for one.
mutation:
	scripts/mutation.sh $(MODULES)

clean:
	rm -rf .aws-sam functions/plan
