# csm-deploy. `make demo` and `make test` are the two set-up commands; both build what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VASTAI_VENV := .venv-vastai
PY := $(VENV)/bin/python
DEPLOY := $(VENV)/bin/deploy
GPU ?= 4090
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: setup system-packages test lint demo provision bench image clean help gpu-check fetch-gpu-wheels

help:
	@echo "make demo        run provision -> autotune -> serve -> generate -> teardown -> cost on this machine (CPU)"
	@echo "make test        lint + the whole test suite"
	@echo "make setup       build .venv (project + pinned runtime) and .venv-vastai (the vastai CLI alone)"
	@echo "make provision GPU=4090   rent a vast.ai GPU and serve CSM-1B on it"
	@echo "make bench       run the benchmarks in bench/ (numbers + JSON in bench/results/)"
	@echo "make gpu-check   the whole GPU check in one command, within 10 minutes (checks, benchmark, autotune) -> \$$OUT"
	@echo "make fetch-gpu-wheels   the pinned cp312 wheels gpu-check installs on a machine with no internet (.whl/)"

# Stamps make setup idempotent: a venv is rebuilt only when its pins change.
$(VENV)/.stamp: requirements/runtime.txt requirements/control.txt requirements/dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) -r requirements/runtime.txt -r requirements/control.txt -r requirements/dev.txt 2> >(grep -v "is ignored: it is neither" >&2)
	$(PY) -m pip install $(PIP_QUIET) --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

$(VASTAI_VENV)/.stamp: requirements/vastai.txt
	test -x $(VASTAI_VENV)/bin/python || $(PYTHON) -m venv $(VASTAI_VENV)
	$(VASTAI_VENV)/bin/pip install $(PIP_QUIET) -r requirements/vastai.txt 2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

setup: $(VENV)/.stamp $(VASTAI_VENV)/.stamp

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint docker/Dockerfile

# The Debian packages the suite needs (sshd, haproxy, iproute2, chromium, ...): installed when root, else one line.
system-packages:
	bash scripts/system_packages.sh

test: setup system-packages lint
	$(VENV)/bin/pytest -q -n 3 --durations=15

demo: setup
	bash scripts/demo.sh

provision: setup
	$(DEPLOY) provision --gpu $(GPU)

bench: setup
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

# Runs on a GPU machine as it is (its own python3 and torch; the wheels of .whl/ fill in the rest, and without them it
# stops at once): no setup here. Its parts' limits: scripts/gpu_check_budget.py. Its CPU dry run (GPU_CHECK_DRY_RUN=1)
# is part of `make test` (tests/integration/test_gpu_check.py).
gpu-check:
	bash scripts/gpu_check.sh

fetch-gpu-wheels: setup
	bash scripts/fetch_gpu_wheels.sh

image:
	docker build -f docker/Dockerfile -t csm-runtime:dev .

clean:
	rm -rf $(VENV) $(VASTAI_VENV) build dist *.egg-info .pytest_cache .ruff_cache
