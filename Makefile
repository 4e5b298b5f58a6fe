# Every target bootstraps its own virtual environment from the lock file.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv run test lint format bench bench-full bench-tools soak clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==0.13.9
	$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.lock
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

## run: the service for trying it out (web + worker, SQLite, Redis on localhost)
run: venv
	$(VENV)/bin/notifier dev

## test: the whole suite, on PostgreSQL and on SQLite (needs PostgreSQL and Redis on localhost)
test: venv
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## bench: every benchmark against its baseline, quick sizes (needs PostgreSQL, Redis, Postfix's
## smtp-sink/smtp-source and wrk; installed from Debian's packages when missing and root)
bench: venv bench-tools
	$(PY) -m bench --quick

bench-full: venv bench-tools
	$(PY) -m bench

## soak: web + 2 workers on a private PostgreSQL cluster and redis-server under mixed traffic,
## with a Redis restart, a PostgreSQL restart and a worker SIGKILL (20 minutes; CI: SOAK_MINUTES=2;
## SOAK_ARGS=--hostile adds the hardening tests' inputs at volume). Needs PostgreSQL's server
## binaries and redis-server, not a running server: it starts its own.
SOAK_MINUTES ?= 20
SOAK_ARGS ?=
soak: venv
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

bench-tools:
	@command -v smtp-sink >/dev/null && command -v wrk >/dev/null || \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix wrk >/dev/null)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache notifier.db*
