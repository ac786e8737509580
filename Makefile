# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: .venv demo test test-clocks lint typecheck bench clean system-deps assets

# Chart.js for the dashboard, from the npm registry (dashboard/package-lock.json), copied
# next to the page; generated, not committed
CHART := pipeline/web/static/vendor/chart.umd.min.js

# Debian packages the test suite drives for real: kcat (interop), chromium (dashboard tests)
SYSTEM_BINS := /usr/bin/kcat /usr/bin/chromium
SUDO := $(shell test "$$(id -u)" = 0 || echo sudo)

.venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

assets: $(CHART)

$(CHART): dashboard/package-lock.json
	cd dashboard && npm ci --no-audit --no-fund --silent
	mkdir -p $(dir $(CHART))
	cp dashboard/node_modules/chart.js/dist/chart.umd.min.js $(CHART)
	cp dashboard/node_modules/chart.js/LICENSE.md $(dir $(CHART))chart.js.LICENSE.md

demo: $(STAMP) $(CHART)
	$(VENV)/bin/tokenmeter up --demo

system-deps:
	@for b in $(SYSTEM_BINS); do test -x $$b || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: kcat chromium"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $(SUDO) apt-get install -y -qq --no-install-recommends kcat chromium >/dev/null; \
	fi

test: $(STAMP) system-deps $(CHART)
	$(PY) -m pytest -q $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-clocks

# the date-sensitive tests again at a month's first minutes, a year's last, and DST changes
test-clocks: $(STAMP)
	@for t in $$($(PY) -c 'from tests.helpers import CLOCKS; print(*CLOCKS)'); do \
	  echo "clock pinned at $$t"; \
	  TOKENMETER_TEST_NOW=$$t $(PY) -m pytest -q -m clock $(PYTEST_ARGS) || exit 1; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline tests bench examples
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/tokenmeter bench

clean:
	rm -rf $(VENV) dashboard/node_modules pipeline/web/static/vendor .tokenmeter .pytest_cache .mypy_cache .ruff_cache
