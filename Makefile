# The two set-up commands of the README, and what they are built from.
#   make demo   installs what it needs, brings the local cluster up, runs examples/jobs.ini
#   make test   everything CI runs
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: install cluster-up cluster-down demo test lint build benchmark measure clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

NODE_STAMP := node_modules/.installed-stamp
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

install: $(STAMP) $(NODE_STAMP)

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

test: install cluster-up
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -ra

benchmark: install cluster-up
	$(BIN)/python scripts/benchmark.py

# Time, CPU and peak memory of each function's work (template.yaml's MemorySize/Timeout quote
# them): imports, and pcluster.lib's create/describe/delete under moto (Node.js). Add
# MEASURE_ARGS=--results to also stream results from the local cluster (needs cluster-up).
measure: install
	$(BIN)/python scripts/measure_functions.py $(MEASURE_ARGS)

clean:
	rm -rf .aws-sam functions/plan
