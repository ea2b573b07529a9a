# BurnStation: `make run` runs the station (simulated robots when none is attached), `make test` tests it
# (`make test-fast`: only the tests that start no station process).
# Both set up everything first: Debian tools (dcmtk, orthanc, xorriso, chromium, dicom3tools) and a venv.

PYTHON ?= python3
VENV   ?= .venv
DATA   ?= $(CURDIR)/var
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS   := dcmtk orthanc xorriso chromium dicom3tools python3-venv iproute2 fonts-dejavu-core fonts-droid-fallback zbar-tools
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast lint deps venv bench clean

deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# the station and, for `make run` and the tests, the robot simulator (its own distribution, which the
# appliance image does not install)
$(STAMP): pyproject.toml hardware-sim/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]' -e ./hardware-sim
	touch $(STAMP)

venv: $(STAMP)

run: deps venv
	@[ -f "$(DATA)/settings.json" ] || $(VENV)/bin/burnstation init --data "$(DATA)"
	$(VENV)/bin/burnstation run --data "$(DATA)" --simulate

lint: venv
	$(VENV)/bin/ruff check .

# every test; `test-fast` only those that start no station process (the tier is decided in
# tests/conftest.py: see the `station` marker in pyproject.toml)
test: deps venv lint
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-fast: deps venv lint
	$(VENV)/bin/python -m pytest -q -m "not station" $(PYTEST_ARGS)

bench: deps venv
	$(VENV)/bin/python bench/store_bench.py

clean:
	rm -rf $(VENV) var
