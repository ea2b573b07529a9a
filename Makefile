# BurnStation: `make run` runs the station (simulated robots when none is attached), `make test` tests it.
# Both set up everything first: Debian tools (dcmtk, orthanc, xorriso, chromium, dicom3tools) and a venv.

PYTHON ?= python3
VENV   ?= .venv
DATA   ?= $(CURDIR)/var
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS   := dcmtk orthanc xorriso chromium dicom3tools python3-venv iproute2 fonts-dejavu-core fonts-droid-fallback zbar-tools
STAMP  := $(VENV)/.installed

.PHONY: run test lint deps venv bench clean

deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: deps venv
	@[ -f "$(DATA)/settings.json" ] || $(VENV)/bin/burnstation init --data "$(DATA)"
	$(VENV)/bin/burnstation run --data "$(DATA)" --simulate

lint: venv
	$(VENV)/bin/ruff check .

test: deps venv lint
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bench: deps venv
	$(VENV)/bin/python bench/store_bench.py

clean:
	rm -rf $(VENV) var
