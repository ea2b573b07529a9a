# BurnStation: `make run` runs the station (simulated robots when none is attached), `make test` tests it
# (`make test-fast`: only the tests that start no station process).
# Both set up everything first: Debian tools (dcmtk, orthanc, xorriso, chromium, dicom3tools) and a venv.

PYTHON ?= python3
VENV   ?= .venv
DATA   ?= $(CURDIR)/var
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS   := dcmtk orthanc xorriso chromium dicom3tools python3-venv iproute2 fonts-dejavu-core fonts-droid-fallback zbar-tools \
          faketime gcc
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast lint deps venv bench faults soak clean image image-check image-lock image-deps image-clean mkosi fuzz

# The appliance image (image/): mkosi 24.3 from bookworm-backports, fetched through a private apt
# sources list into .cache/mkosi (the machine's own apt sources and state stay untouched), unpacked
# and run as `python3 -m mkosi`. Build caches and outputs stay in .cache/mkosi and build/image.
IMAGE_DEBS    := systemd-container kmod bubblewrap debian-archive-keyring dosfstools mtools cpio fdisk \
                 dcmtk util-linux openssl procps iproute2
MKOSI_VERSION := 24.3-1~bpo12+1
DEBIAN_MIRROR ?= http://deb.debian.org/debian
MKOSI_CACHE   := $(CURDIR)/.cache/mkosi
MKOSI_STAMP   := $(MKOSI_CACHE)/mkosi-$(MKOSI_VERSION).stamp
MKOSI_APT     := -o Dir::Etc::sourcelist=$(MKOSI_CACHE)/apt/sources.list -o Dir::Etc::sourceparts=- \
                 -o Dir::State::Lists=$(MKOSI_CACHE)/apt/lists -o Dir::Cache=$(MKOSI_CACHE)/apt/cache \
                 -o Dir::State::status=/dev/null -o APT::Sandbox::User=root
MKOSI         := PYTHONPATH=$(MKOSI_CACHE)/root/usr/lib/python3/dist-packages python3 -m mkosi
MKOSI_ARGS    := -C image --cache-dir $(MKOSI_CACHE)/incremental \
                 --package-cache-dir $(MKOSI_CACHE)/packages --incremental
HOST_CA       ?= /etc/ssl/certs/ca-certificates.crt
# disk images need systemd-repart >= 254 (bookworm has 252) and bootctl: 254 from bookworm-backports,
# unpacked beside mkosi and found first through mkosi's ExtraSearchPaths (wrappers set the library path)
REPART_DIR    := $(MKOSI_CACHE)/repart254
REPART_STAMP  := $(REPART_DIR)/.stamp

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
	$(VENV)/bin/pip install -q -e '.[test]'
	# after the station: upgrading a venv where the station still owned the burnstation-sim script removes it
	$(VENV)/bin/pip install -q -e ./hardware-sim
	touch $(STAMP)

venv: $(STAMP)

run: deps venv
	@[ -f "$(DATA)/settings.json" ] || $(VENV)/bin/burnstation init --data "$(DATA)"
	$(VENV)/bin/burnstation run --data "$(DATA)" --simulate

lint: venv
	$(VENV)/bin/ruff check .

# every test: all but the `serial` ones in TEST_WORKERS processes (pytest-xdist; a module whose
# tests share a fixture stays on one worker, the longest work goes out first by tests/durations.json,
# see tests/conftest.py), then the `serial` ones (wall-clock bounds on a station) alone; both parts
# always run. TEST_WORKERS=0: the first part in this one process. `test-fast` only the tests that
# start no station process (the tier is decided in tests/tiers.py: the `station` marker).
TEST_WORKERS ?= 4
test: deps venv lint
	$(VENV)/bin/python -m pytest -q -m "not serial" -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS); first=$$?; \
	$(VENV)/bin/python -m pytest -q -m serial $(PYTEST_ARGS); second=$$?; \
	[ $$second = 5 ] && second=0; exit $$(( first || second ))

# in FAST_WORKERS processes (pytest-xdist; a module's tests stay together, so its module fixtures
# are built once); FAST_WORKERS=0 runs them in this one process. Four on two cores: many of these
# tests wait on a simulator or a socket rather than compute (idle 2-core machine: 81 s with 2, 56 s with 4)
FAST_WORKERS ?= 4
test-fast: deps venv lint
	$(VENV)/bin/python -m pytest -q -m "not station" -n $(FAST_WORKERS) --dist loadscope $(PYTEST_ARGS)

# the fuzzers (tests/fuzz/): atheris on the in-process parsers, Hypothesis clients against a live
# station, FUZZ_SECONDS per target; writes docs/reliability/fuzz.md (failing inputs: tests/fuzz/crashes/)
FUZZ_SECONDS ?= 300
FUZZ_STAMP   := $(VENV)/.fuzz-installed

$(FUZZ_STAMP): $(STAMP)
	$(VENV)/bin/pip install -q -e '.[test,fuzz]'
	$(VENV)/bin/pip install -q -e ./hardware-sim
	touch $(FUZZ_STAMP)

fuzz: deps venv $(FUZZ_STAMP)
	$(VENV)/bin/python tests/fuzz/run.py --seconds $(FUZZ_SECONDS)

bench: deps venv
	$(VENV)/bin/python bench/store_bench.py

# reliability (tests/reliability/, reports in docs/reliability/): each kind of fault at seeded random
# moments under a mixed workload (`make faults FAULT_SEED=7 FAULT_REPEAT=3 FAULT_SECONDS=60
# FAULT_KINDS=kill:dicom,clock`), and the soak (SOAK_SECONDS, default 10 minutes; SOAK_DISC_GAP). The disk faults
# mount small tmpfs folders when run as root.
FAULT_SEED    ?= 16
FAULT_REPEAT  ?= 2
FAULT_SECONDS ?= 40
SOAK_SECONDS  ?= 600
faults: deps venv
	$(VENV)/bin/python tests/reliability/faults.py --seed $(FAULT_SEED) --repeat $(FAULT_REPEAT) \
	  --seconds $(FAULT_SECONDS) $(if $(FAULT_KINDS),--kinds $(FAULT_KINDS))

soak: deps venv
	$(VENV)/bin/python tests/reliability/soak.py --seconds $(SOAK_SECONDS)

clean:
	rm -rf $(VENV) var

image-deps:
	@$(MAKE) --no-print-directory deps DEBS="$(IMAGE_DEBS)"

$(MKOSI_STAMP):
	mkdir -p $(MKOSI_CACHE)/apt/lists/partial $(MKOSI_CACHE)/apt/cache/archives/partial $(MKOSI_CACHE)/debs
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(DEBIAN_MIRROR) bookworm-backports main" \
	  > $(MKOSI_CACHE)/apt/sources.list
	apt-get $(MKOSI_APT) update -qq
	rm -rf $(MKOSI_CACHE)/root $(MKOSI_CACHE)/debs/mkosi_*.deb
	cd $(MKOSI_CACHE)/debs && apt-get $(MKOSI_APT) download -qq 'mkosi=$(MKOSI_VERSION)'
	dpkg -x $(MKOSI_CACHE)/debs/mkosi_*.deb $(MKOSI_CACHE)/root
	$(MKOSI) --version
	touch $@

mkosi: image-deps $(MKOSI_STAMP)

$(REPART_STAMP): $(MKOSI_STAMP)
	rm -rf $(REPART_DIR) && mkdir -p $(REPART_DIR)/debs
	cd $(REPART_DIR)/debs && apt-get $(MKOSI_APT) download -qq systemd/bookworm-backports \
	  libsystemd-shared/bookworm-backports systemd-boot/bookworm-backports
	for d in $(REPART_DIR)/debs/*.deb; do dpkg -x $$d $(REPART_DIR)/root; done
	for bin in bin/systemd-repart usr/bin/bootctl; do tool=$$(basename $$bin); \
	  printf '%s\n' '#!/bin/sh' "# $$tool 254 from bookworm-backports, with its own libsystemd-shared" \
	    'd=$$(dirname "$$(readlink -f "$$0")")/root' \
	    "LD_LIBRARY_PATH=\$$d/usr/lib/x86_64-linux-gnu/systemd exec \"\$$d/$$bin\" \"\$$@\"" \
	    > $(REPART_DIR)/$$tool && chmod 755 $(REPART_DIR)/$$tool && $(REPART_DIR)/$$tool --version || exit 1; \
	done
	touch $@

# the host's CA bundle, for pip inside the build (the checkout is mounted there, never copied in)
build/image/host-ca.pem: $(HOST_CA)
	install -D -m 0644 $< $@

# image/requirements.lock from the dev venv's versions (run after changing pyproject.toml's deps)
image-lock: venv
	$(PYTHON) image/lock.py --venv $(VENV)

# the bootable disk image for a real box: build/image/disk/burnstation_0.1.0.raw
image: mkosi $(REPART_STAMP) build/image/host-ca.pem
	$(MKOSI) $(MKOSI_ARGS) --output-dir $(CURDIR)/build/image/disk --extra-search-path=$(REPART_DIR) \
	  $(MKOSI_EXTRA) --force build

# build the directory tree, boot it in systemd-nspawn, talk DICOM to it from outside (image/check.sh)
image-check: mkosi build/image/host-ca.pem
	$(MKOSI) $(MKOSI_ARGS) --output-dir $(CURDIR)/build/image/tree --format=directory --force build
	MKOSI_TREE=$(CURDIR)/build/image/tree/burnstation_0.1.0 image/check.sh

image-clean:
	rm -rf build/image .cache/mkosi
