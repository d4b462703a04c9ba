# Fresh machine: `make demo` runs the demo, `make test` runs every check CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export BANKING77_DIR ?= $(abspath data/banking77)

.PHONY: venv system-deps lint typecheck test test-fast demo train train-tiny bench clean

system-deps:
	@command -v dovecot >/dev/null 2>&1 || { \
	  echo "installing Debian's dovecot-imapd (tests run a real Dovecot on 127.0.0.1)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dovecot-imapd >/dev/null; }
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus for promtool (tests check the alert rules)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  echo "installing systemd for systemd-analyze (tests verify the unit files)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null; }
	@command -v docker-compose >/dev/null 2>&1 || { \
	  echo "installing Debian's docker-compose (tests validate deploy/compose.yaml; no engine needed)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; }
	@command -v pg_dump >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql (tests start their own server in a temporary directory)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }
	@# The Debian packages enable system services we never use; the tests start their own.
	@-service dovecot stop >/dev/null 2>&1 || true
	@-service postgresql stop >/dev/null 2>&1 || true
	@-service prometheus stop >/dev/null 2>&1 || true

$(BIN)/cleaninbox: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,dev,postgresql]'
	@touch $@

venv: $(BIN)/cleaninbox

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

test: system-deps venv lint typecheck
	$(BIN)/pytest -q --durations=25

# The quick loop: lint, types, unit tests and the in-process triage core (tests/core) on
# SQLite; no Dovecot, no PostgreSQL, no training run (tests marked dovecot, postgres, slow
# or trains are left to `make test`).
test-fast: venv lint typecheck
	$(BIN)/pytest -q -m "not dovecot and not postgres and not slow and not trains"

demo: venv
	$(BIN)/cleaninbox demo

train: venv
	$(BIN)/cleaninbox train --config configs/train.yaml

train-tiny: venv
	$(BIN)/cleaninbox train --config configs/train-tiny.yaml

bench: venv
	$(BIN)/python benchmarks/classifier_speed.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
