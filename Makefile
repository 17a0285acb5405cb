# The two commands the README promises, on a fresh Debian 12 machine:
#   make run    set everything up, then run the default suite on the default target
#   make test   set everything up, then lint and run the tests (unit + end-to-end)
#   make test-full   the same, with the tests that need cold 6.12 builds
# Both are idempotent: a second run reuses everything already installed/built.

VENV    ?= .venv
PYTHON  ?= python3
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OUTPUT  ?= out/main
TARGET  ?= mainline-7.3
PROFILES ?= smmuv3-nested virtio-iommu

.PHONY: setup host venv run test test-full unit lint bench clean

setup: host venv

host:
	$(SUDO) bash ci/setup-host.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,avocado]'
	touch $@

run: setup
	$(VENV)/bin/pkvm-harness run --target $(TARGET) $(foreach p,$(PROFILES),--profile $(p)) --output $(OUTPUT)

lint: venv
	$(VENV)/bin/ruff check harness tests bench
	$(VENV)/bin/mypy

# `make test` (ci/test.sh) starts the cold mainline-7.3 build first, runs
# lint and the unit tests beside it, then the end-to-end tests two at a
# time. It leaves out the tests marked `cold`: each needs a kernel
# configuration of its own (stable-6.12 and its no-JUMP_LABEL variant, a
# cold build of 15-30 min each here), which would put a new machine's run
# over its 45-minute budget, and those marked `full` (an end-to-end run of
# what a unit test proves on scripted input). `make test-full` runs them too.
test: setup
	bash ci/test.sh

test-full: setup
	bash ci/test.sh --full

unit: venv
	$(VENV)/bin/pytest -m "not e2e"

bench: setup
	$(VENV)/bin/python bench/bench.py

clean:
	rm -rf out .pytest_cache .mypy_cache
