# Fresh machine: `make demo` runs the demo, `make test` runs every check CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export BANKING77_DIR ?= $(abspath data/banking77)

.PHONY: venv lock system-deps lint typecheck test test-fast demo train train-tiny bench clean \
	image base-image wheelhouse

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
	@command -v podman >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1 && command -v slirp4netns >/dev/null 2>&1 \
	  && test -x /usr/lib/cni/dnsname || { \
	  echo "installing podman, runc, slirp4netns and mmdebstrap (tests build and run the images)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    podman runc conmon containernetworking-plugins golang-github-containernetworking-plugin-dnsname \
	    slirp4netns uidmap fuse-overlayfs mmdebstrap >/dev/null; }
	@command -v pg_dump >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql (tests start their own server in a temporary directory)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }
	@# The Debian packages enable system services we never use; the tests start their own.
	@-service dovecot stop >/dev/null 2>&1 || true
	@-service postgresql stop >/dev/null 2>&1 || true
	@-service prometheus stop >/dev/null 2>&1 || true

# The environment is the lock's (requirements/dev.txt: pyproject.toml's train, dev and
# postgresql extras resolved by pip-compile), then CleanInbox itself without resolving.
# torch is pinned to its CPU build (2.13.0+cpu): where no local wheel or index has it,
# add PyTorch's CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
$(BIN)/cleaninbox: pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

venv: $(BIN)/cleaninbox

lint: venv
	$(BIN)/python scripts/check_lock.py
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Re-resolve the locks after changing pyproject.toml's dependencies (pins that still fit
# are kept; `make lock LOCK_UPGRADE=--upgrade` takes the newest of everything).
LOCK := $(BIN)/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url \
	--no-emit-find-links --no-emit-trusted-host -c requirements/constraints.txt $(LOCK_UPGRADE)
lock: venv
	$(BIN)/pip install -q pip-tools
	$(LOCK) --extra train --extra dev --extra postgresql -o requirements/dev.txt pyproject.toml
	$(LOCK) --extra postgresql -o requirements/daemon.txt pyproject.toml
	$(LOCK) --extra train --extra postgresql -o requirements/train.txt pyproject.toml
	$(BIN)/python scripts/check_lock.py

typecheck: venv
	$(BIN)/mypy

# Two workers by default: the suite mostly waits on Dovecot, PostgreSQL and daemon
# processes (measured in the CHANGELOG); TEST_WORKERS=0 runs it in one process. Modules
# go out in collection order, which tests/conftest.py starts with the image builds.
TEST_WORKERS ?= 2
test: system-deps venv lint typecheck
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=25

# The quick loop: lint, types, unit tests and the in-process triage core (tests/core) on
# SQLite; no Dovecot, no PostgreSQL, no training run, no container (tests marked dovecot,
# postgres, slow, trains or containers are left to `make test`).
test-fast: venv lint typecheck
	$(BIN)/pytest -q -m "not dovecot and not postgres and not slow and not trains and not containers"

demo: venv
	$(BIN)/cleaninbox demo

train: venv
	$(BIN)/cleaninbox train --config configs/train.yaml

train-tiny: venv
	$(BIN)/cleaninbox train --config configs/train-tiny.yaml

bench: venv
	$(BIN)/python benchmarks/classifier_speed.py

# Container images (scripts/images.sh: IMAGE_ENGINE, IMAGE_BASE, IMAGE_TAG, IMAGE_OFFLINE).
# Where no registry can be reached: `make base-image wheelhouse` then
# `make image IMAGE_BASE=localhost/cleaninbox-base:bookworm IMAGE_OFFLINE=1`.
image:
	scripts/images.sh build

base-image:
	scripts/images.sh base

# The locked wheels of both images, for builds with no package index (IMAGE_OFFLINE=1).
wheelhouse: venv
	$(BIN)/pip wheel -q --wheel-dir requirements/wheelhouse -r requirements/daemon.txt
	$(BIN)/pip wheel -q --wheel-dir requirements/wheelhouse -r requirements/train.txt
	$(BIN)/pip wheel -q --wheel-dir requirements/wheelhouse \
	  $$(grep -E '^(setuptools|wheel)==' requirements/dev.txt)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
