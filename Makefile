# Warren: `make run` sets up and runs the whole system; `make test` sets up and runs every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
# PostgreSQL for the second run of the database tests (trust auth on these machines).
PG_URL ?= postgres://postgres@127.0.0.1:5432/test

.PHONY: setup system venv images run test test-fast test-slow lint bench

setup: system venv

system:
	bash scripts/install-system-deps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# Build (or reuse from the cache, keyed by the recipe) the VM images the daemon boots: the tiny
# test image and the image of the RabbitMQ version new orders get (docs/images.md). The 3.10 image
# (`image build rabbitmq-3.10`) is built only where someone still sells it.
images: setup
	$(PY) -m vmbackend image build tiny
	$(PY) -m vmbackend image build rabbitmq-4.0 --distro debian
	$(PY) -m vmbackend image snapshot rabbitmq-4.0

# The whole system on one machine: SQLite, the local RabbitMQ, web, relay, event worker, one host daemon.
run: setup
	$(PY) -m warren run

# Fast tier: no VM boots at all (unit, database, broker and browser tests). Run it after every change.
test-fast: setup
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PYTEST) -m "not slow and not vm" -q

# Everything CI runs: the lint checks, the fast tier and the tiny-image VM tests on SQLite, the
# database tests again on PostgreSQL, then the slow tier (real RabbitMQ VMs).
test: lint images
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PYTEST) -m "not slow" -q
	DATABASE_URL=$(PG_URL) $(PYTEST) -m "not slow and not vm and not browser" -q tests/store tests/orders tests/accounts
	$(PYTEST) -m slow -q

# Formatting, lint rules and types (settings in pyproject.toml); fails fast, before any test.
lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: images
	$(PY) bench/webhooks.py
	$(PY) bench/boot.py
	$(PY) bench/daemon.py
	$(PY) bench/provisioning.py
	$(PY) bench/metrics_host.py
	$(PY) bench/console.py
