# brokerfleet: `make deploy` and `make test` are all a newcomer needs (README).
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# podman on these hosts needs runc and explicit ulimits (molecule/containers.conf).
export CONTAINERS_CONF := $(CURDIR)/molecule/containers.conf
export ANSIBLE_FORCE_COLOR := false
export PY_COLORS := 0

SCENARIOS := default faults activemq cluster

.PHONY: deploy status test lint unit molecule test-hosts bench clean

# Your own hosts: make deploy INVENTORY=inventories/yours ARGS=--ask-vault-pass (ARGS takes any
# ansible-playbook option: --check --diff, --limit, -e).
INVENTORY ?= inventories/local/hosts.yml
ARGS ?=

## deploy: the broker and the demo fleet on this machine (inventories/local), or INVENTORY's
deploy: $(VENV)/.installed
	ansible-playbook -i $(INVENTORY) site.yml $(ARGS)

## status: per queue ready, unacked, consumers, rates, time to drain; per host load, workers
status: $(VENV)/.installed
	ansible-playbook -i $(INVENTORY) playbooks/status.yml $(ARGS)

## test: lint, unit tests, then every molecule scenario on podman test hosts. The test-host
## image builds meanwhile (it mostly waits on the Debian mirror).
test: $(VENV)/.installed
	$(MAKE) --jobs=3 --output-sync=target test-hosts lint unit
	$(MAKE) molecule

lint: $(VENV)/.installed
	yamllint --strict .
	ruff check .
	ruff format --check .
	ansible-lint --offline

unit: $(VENV)/.installed
	pytest -n auto

molecule: $(VENV)/.installed test-hosts
	set -e; for scenario in $(SCENARIOS); do molecule test --scenario-name $$scenario; done

## test-hosts: podman, and the locally built image the test hosts run
test-hosts:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null \
	  || { apt-get update -qq || true; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap; }
	bash molecule/test-host/build.sh

$(VENV)/.installed: pyproject.toml
	@python3 -m venv --help >/dev/null 2>&1 \
	  || { apt-get update -qq || true; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

## bench: drain efficiency, priorities, converge times and sizing on fresh test hosts, with
## their targets (bench/run.py, README "Performance"): bench/results/<date>.json and .png
bench: $(VENV)/.installed test-hosts
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'
	python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
