# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help .venv demo test test-clocks lint bench clean system-deps assets constraints

# Chart.js for the dashboard, from the npm registry (assets/package-lock.json), copied
# next to the page; generated, not committed
CHART := pipeline/web/static/vendor/chart.umd.min.js

# Debian packages the test suite drives for real: kcat (interop), chromium (dashboard tests)
SYSTEM_BINS := /usr/bin/kcat /usr/bin/chromium
SUDO := $(shell test "$$(id -u)" = 0 || echo sudo)

help: ## list the targets
	@grep -E '^[a-z.-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

.venv: $(STAMP) ## create the virtualenv and install tokenmeter with its dev extras

# constraints.txt pins every package to the versions the suite last passed with, so a fresh
# clone installs what CI tested (a new upstream release changed how clickhouse-connect cuts
# decimals); `make constraints` re-resolves the newest allowed and rewrites it
CONSTRAINTS ?= constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	@touch $(STAMP)

constraints: ## re-resolve the newest versions pyproject.toml allows into constraints.txt (then run make test)
	rm -rf $(VENV)
	$(MAKE) .venv CONSTRAINTS=
	$(PY) -m pip freeze --exclude-editable > constraints.txt
	@touch $(STAMP)

assets: $(CHART) ## fetch Chart.js from the npm registry for the dashboard

$(CHART): assets/package-lock.json
	cd assets && npm ci --no-audit --no-fund --silent
	mkdir -p $(dir $(CHART))
	cp assets/node_modules/chart.js/dist/chart.umd.min.js $(CHART)
	cp assets/node_modules/chart.js/LICENSE.md $(dir $(CHART))chart.js.LICENSE.md

demo: $(STAMP) $(CHART) ## install, then run the whole stack with simulated traffic
	$(VENV)/bin/tokenmeter up --demo

system-deps: ## apt-install kcat and chromium when missing (interop and browser tests)
	@for b in $(SYSTEM_BINS); do test -x $$b || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: kcat chromium"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $(SUDO) apt-get install -y -qq --no-install-recommends kcat chromium >/dev/null; \
	fi

# both cores, a test module per process at a time (its broker, chDB and worker fixtures
# stay in one process); XDIST= runs the suite in one process
XDIST ?= -n 2 --dist loadfile

test: $(STAMP) system-deps $(CHART) ## install, then run the suite (and the date-sensitive tests at pinned clocks)
	$(PY) -m pytest -q --durations=15 $(XDIST) $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-clocks

# the date-sensitive tests again at a month's first minutes, a year's last, and DST changes
test-clocks: $(STAMP) ## run the date-sensitive tests at each instant of tests.helpers.CLOCKS
	@for t in $$($(PY) -c 'from tests.helpers import CLOCKS; print(*CLOCKS)'); do \
	  echo "clock pinned at $$t"; \
	  TOKENMETER_TEST_NOW=$$t $(PY) -m pytest -q -m clock $(XDIST) $(PYTEST_ARGS) || exit 1; \
	done
	@for t in $$($(PY) -c 'from tests.helpers import CLOCKS; print(*CLOCKS[:2])'); do \
	  echo "clock pinned at $$t (worker tests)"; \
	  TOKENMETER_TEST_NOW=$$t $(PY) -m pytest -q -m clock_worker $(XDIST) $(PYTEST_ARGS) || exit 1; \
	done

lint: $(STAMP) ## ruff and mypy --strict
	$(VENV)/bin/ruff check pipeline tests examples
	$(VENV)/bin/mypy

bench: $(STAMP) ## tokenmeter bench (ratios against baselines run in the same process)
	$(VENV)/bin/tokenmeter bench

clean: ## remove the virtualenv, node_modules, vendored assets and caches
	rm -rf $(VENV) assets/node_modules pipeline/web/static/vendor .tokenmeter .pytest_cache .mypy_cache .ruff_cache
