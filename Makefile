# Two commands for a newcomer: `make run` and `make test` (see README).
# Every install comes from requirements.lock (exact versions with hashes); `make lock` refreshes it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
STAMP := $(VENV)/.installed

.PHONY: run test install lock lock-upgrade lock-check lint bench smoke clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "Python 3.11 is required (found " + sys.version.split()[0] + "): set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the lock changes. --no-deps: the lock already lists every package, each with its hashes.
$(STAMP): $(LOCK) | $(PY)
	$(PY) .ci/lock.py check
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) .ci/lock.py prune
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

# Re-resolve after a change to pyproject.toml or constraints.txt, keeping today's pins where they still fit.
lock: install
	$(PY) .ci/lock.py compile

# Take the newest versions that the inputs allow.
lock-upgrade: install
	$(PY) .ci/lock.py compile --upgrade

# Fails when pyproject.toml or constraints.txt changed without `make lock`, or a pin lost its hashes.
lock-check: install
	$(PY) .ci/lock.py check

run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	DEBUG=true DEMO_OFFLINE_MODELS=true $(PY) manage.py runall

test: install lock-check
	$(PY) -m pytest $(PYTEST_ARGS)

# Production-shaped run on loopback: gunicorn (DEBUG off), Celery workers per queue, PostgreSQL, Redis,
# an S3 server and the fake Stripe; walks upload -> curation -> publish -> purchase -> download over HTTP.
smoke: install
	MARKETPLACE_SMOKE=1 $(PY) -m pytest -p no:cacheprovider tests/smoke -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# A checkout of diffusers: bench/train.py runs its training scripts as the baseline.
DIFFUSERS ?= var/diffusers

bench: install
	$(PY) bench/ingest.py
	$(PY) bench/dedup.py
	$(PY) bench/embed.py
	$(PY) bench/export.py
	@test -d "$(DIFFUSERS)/examples/dreambooth" || { echo "bench/train.py compares with diffusers' own training scripts: git clone --depth 1 https://github.com/huggingface/diffusers $(DIFFUSERS)"; exit 1; }
	$(PY) bench/train.py --diffusers "$(DIFFUSERS)"

clean:
	rm -rf var/ .pytest_cache
