# SafeHub developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## Create .venv and install SafeHub with its dev tools

.PHONY: demo
demo: $(STAMP) ## Run the hub on embedded defaults through the demo scenario
	$(BIN)/safehub demo

.PHONY: up
up: $(STAMP) ## Run the hub (embedded broker unless KAFKA_BOOTSTRAP_SERVERS is set)
	$(BIN)/safehub up

.PHONY: lint
lint: $(STAMP) ## ruff, mypy, import contracts, schema and proto checks
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy safehub services connectors vendors simulators tools
	$(BIN)/lint-imports
	$(BIN)/safehub schemas check --against $${SAFEHUB_CONTRACTS_BASE:-main}
	PATH=$(abspath $(BIN)):$$PATH tools/check_protos.sh
	$(BIN)/python tools/gen_names.py --check

CHROMIUM ?= /usr/bin/chromium

# The reviewer-view test drives Debian's headless Chromium (Playwright may not download a
# browser here). Installed from Debian's packages when missing and we may (root or sudo).
.PHONY: chromium
chromium: ## Make sure Debian's headless Chromium is installed (browser tests)
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y --no-install-recommends chromium; }; }
	@$(CHROMIUM) --version

.PHONY: test
test: lint chromium ## Lint, then run the whole test suite against real parts (both cores, by file)
	$(BIN)/pytest -q -n auto --dist loadfile

.PHONY: test-fast
test-fast: $(STAMP) ## The tests that need no broker and no PostgreSQL (under a minute, both cores)
	$(BIN)/pytest -q -n auto --dist loadfile -m "not kafka and not postgres"

.PHONY: deadcode
deadcode: $(STAMP) ## Report code nothing calls (framework hooks are named as ignored)
	$(BIN)/vulture safehub services connectors vendors simulators tools tests bench \
	  --min-confidence 60 --exclude safehub/gen --ignore-decorators '@*.command' \
	  --ignore-names 'downgrade,_*,handle_*,pytest_*,process_*,auth_flow,[A-Z]*,caption,spinner,exc_text,stack_info,isolation_level'

.PHONY: protos
protos: $(STAMP) ## Regenerate gRPC code into safehub/gen
	$(BIN)/python tools/gen_protos.py

.PHONY: names
names: $(STAMP) ## Regenerate safehub/contracts/names.py (event types, data classes) from schemas/
	$(BIN)/python tools/gen_names.py

.PHONY: bench
bench: $(STAMP) ## Run the benchmarks (JSON on stdout)
	$(BIN)/python bench/bus.py --json
	$(BIN)/python bench/emergency.py --json
	$(BIN)/python bench/notify.py --json
	$(BIN)/python bench/timeline.py --json
	$(BIN)/python bench/roster.py --json
	$(BIN)/python bench/tips.py --json

.PHONY: clean
clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
