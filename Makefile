# GrimBots: the two set-up commands are `make lab` and `make test` (README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
# Podman settings for these machines (runc, rlimits) without editing /etc.
export CONTAINERS_CONF := $(CURDIR)/containers/containers.conf
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export GRIMBOTS_BASE_IMAGE ?= localhost/grimbots-base:bookworm
# Container names, networks and Molecule state carry this id, so two checkouts on one
# machine never touch each other's containers.
export GRIMBOTS_RUN_ID ?= $(shell printf %s "$(CURDIR)" | sha1sum | cut -c1-8)

WHEELHOUSE := $(CURDIR)/build/wheelhouse

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

## ---- set-up -------------------------------------------------------------------
.PHONY: setup venv base-image constraints wheelhouse
setup: ## Install Debian packages, the base image and the venv; prove the podman network (idempotent)
	@scripts/setup-host.sh

# Only the venv: what the lint and the day-2 playbooks need.
venv:
	@scripts/setup-host.sh venv

base-image: ## Rebuild the local systemd base image
	@scripts/build-base-image.sh $(GRIMBOTS_BASE_IMAGE) --force

constraints: ## Re-pin every tool and app dependency into constraints.txt
	@tmp=$$(mktemp -d) && python3 -m venv $$tmp && \
	  $$tmp/bin/pip install -q -r requirements/dev.in ./app && \
	  { echo '# Exact versions for the controller venv and the app wheelhouse. Regenerate: make constraints'; \
	    $$tmp/bin/pip freeze --exclude-editable | grep -v '^grimbots=='; } > constraints.txt && \
	  rm -rf $$tmp && echo "constraints.txt re-pinned"

wheelhouse: setup ## Build the app and its pinned dependencies as wheels for the hosts
	@rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	@$(BIN)/pip wheel -q -c constraints.txt --wheel-dir $(WHEELHOUSE) ./app 2>&1 | grep -v 'is ignored' || true
	@# The hosts run Debian's Python 3.11.2; redis-py needs async-timeout below 3.11.3, a
	@# marker the controller's newer 3.11 skips, so fetch it explicitly.
	@$(BIN)/pip download -q --no-deps --only-binary=:all: -d $(WHEELHOUSE) 'async-timeout==5.0.1' 2>&1 | grep -v 'is ignored' || true
	@ls $(WHEELHOUSE)/grimbots-*.whl >/dev/null && echo "wheelhouse: $$(ls $(WHEELHOUSE) | wc -l) wheels in $(WHEELHOUSE)"

## ---- tests ----------------------------------------------------------------------
.PHONY: test lint test-app test-molecule test-fresh-root
test: setup ## Fresh-root check, lint, app tests and every Molecule scenario, with a summary
	@scripts/run-tests.sh

lint: venv ## ansible-lint (production profile), yamllint, ruff, import cycles
	@scripts/run-tests.sh lint

test-app: setup ## The app's tests against real Redis and PostgreSQL
	@scripts/run-tests.sh app

test-molecule: setup ## Every Molecule scenario (or SCENARIO=name)
	@scripts/run-tests.sh molecule $(SCENARIO)

test-fresh-root: setup ## The declared host packages, installed into a clean Debian root, provide every executable
	@scripts/run-tests.sh fresh-root

## ---- lab and day-2 ---------------------------------------------------------------
# Owned by the grimbots role's maintainers. The lab is the whole stack in systemd
# containers on this machine (inventories/lab); day-2 targets take any inventory.
INVENTORY ?= inventories/lab
LINES ?= 100
PLAYBOOK = $(BIN)/ansible-playbook -i $(INVENTORY)

.PHONY: lab lab-down status restart logs backup-drill
lab: wheelhouse ## Build the lab (containers + site.yml + a demo bot) and print what to open
	@$(BIN)/ansible-playbook -i inventories/lab playbooks/lab-up.yml

lab-down: venv ## Remove the lab's containers and network (the secrets in .lab/ stay)
	@$(BIN)/ansible-playbook -i inventories/lab playbooks/lab-down.yml

status: venv ## Every unit on every host plus /health, one table [INVENTORY=inventories/lab]
	@$(PLAYBOOK) playbooks/status.yml

restart: venv ## Restart the app and the worker fleet, host by host [INVENTORY=...]
	@$(PLAYBOOK) playbooks/restart.yml

backup-drill: venv ## Restore the latest backup into a scratch cluster, compare it with the source, report the RTO [INVENTORY=...]
	@$(PLAYBOOK) playbooks/backup-drill.yml

logs: venv ## Journal of one host's stack units: make logs HOST=grimbots-lab-app1 [LINES=100]
	@test -n "$(HOST)" || { echo "usage: make logs HOST=<inventory host> [LINES=100] [INVENTORY=...]" >&2; exit 2; }
	@$(PLAYBOOK) playbooks/logs.yml --limit '$(HOST)' -e lines=$(LINES)

## ---- load tests (issue 6) ---------------------------------------------------------
# Against the lab by default: the front door and the PSP stand-in as published on
# 127.0.0.1, the bots `make lab` seeded (.lab/bots.json). Reports in reports/loadtest/
# (reports/loadtest-chaos/ for make chaos); reports/last-run names the last run's folder.
LOADTEST_HOST ?= http://127.0.0.1:8000
LOADTEST_PSP ?= http://127.0.0.1:8082
LOADTEST_BOTS ?= .lab/bots.json
LOADTEST_REPORTS ?= reports/loadtest
LOADTEST_ARGS ?=
LOADTEST = $(BIN)/python loadtest/run.py --host $(LOADTEST_HOST) --psp $(LOADTEST_PSP) \
	--bots $(LOADTEST_BOTS) --inventory $(INVENTORY) --reports $(LOADTEST_REPORTS)

.PHONY: loadtest chaos audit loadtest-databases
loadtest: setup ## Staged load test (10-200 users, 1,000 req/s, retries), gates, then the audit
	@test -s $(LOADTEST_BOTS) || { echo "no $(LOADTEST_BOTS): run make lab first" >&2; exit 2; }
	@$(LOADTEST) $(LOADTEST_ARGS)

chaos: setup ## 1,000 req/s with workers SIGKILLed, gunicorn restarted, an app host stopped and a Redis failover mid-stage, retries, the audit
	@test -s $(LOADTEST_BOTS) || { echo "no $(LOADTEST_BOTS): run make lab first" >&2; exit 2; }
	@$(LOADTEST) --chaos --chaos-stop-app-host --chaos-redis-failover --ramp --reports $(LOADTEST_REPORTS)-chaos $(LOADTEST_ARGS)

loadtest-databases: wheelhouse ## SQLite against PostgreSQL on the same hosts: phase 1, the stages, phase 2, the stages again
	@loadtest/databases.sh

# The run to audit: AUDIT_REPORTS=reports/loadtest-chaos, or by default the last run.
AUDIT_REPORTS ?= $(shell cat reports/last-run 2>/dev/null)

audit: venv ## Audit the last load test or chaos run (or AUDIT_REPORTS=DIR): 0 lost, 0 duplicated?
	@test -s "$(AUDIT_REPORTS)/sent.jsonl" || { echo "no load test run to audit$(if $(AUDIT_REPORTS), in $(AUDIT_REPORTS)): run make loadtest or make chaos first" >&2; exit 2; }
	@echo "audit: $(AUDIT_REPORTS) ($$(cat $(AUDIT_REPORTS)/run.txt 2>/dev/null || echo 'run not described'))"
	@$(PLAYBOOK) playbooks/loadtest-audit.yml -e loadtest_sent=$(abspath $(AUDIT_REPORTS))/sent.jsonl \
	  -e "loadtest_run=$(AUDIT_REPORTS): $$(cat $(AUDIT_REPORTS)/run.txt 2>/dev/null)"
