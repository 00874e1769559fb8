# One entry point. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
# Example third-party plugins (docs/plugins.md): installed as users would, not editable
EXAMPLE_PLUGINS = examples/plugins/eternia-backup-sqlitestore examples/plugins/eternia-backup-callable

.PHONY: setup demo demo-s3 test test-fast bench bench-incremental clean

$(STAMP): pyproject.toml plugins/eternia-backup-postgres/pyproject.toml plugins/eternia-backup-redis/pyproject.toml plugins/eternia-backup-mysql/pyproject.toml $(EXAMPLE_PLUGINS:%=%/pyproject.toml) \
        $(wildcard $(EXAMPLE_PLUGINS:%=%/*/*.py))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[s3,encryption,test]' -e plugins/eternia-backup-postgres -e plugins/eternia-backup-redis -e plugins/eternia-backup-mysql
	$(PY) -m pip install --quiet $(addprefix ./,$(EXAMPLE_PLUGINS))
	touch $(STAMP)

setup: $(STAMP)

## demo: back up the example app, list, verify, restore into a temp dir, compare
demo: $(STAMP)
	$(PY) examples/demo.py

## demo-s3: the same against a local SeaweedFS S3 server (no AWS account needed)
demo-s3: $(STAMP)
	$(PY) examples/demo_s3.py

# The test runs keep Python's bytecode caches (__pycache__, ignored by git and left
# out of the sdist) even where the environment sets PYTHONDONTWRITEBYTECODE: without
# them every worker re-compiles the project and re-rewrites every test module, and
# every CLI subprocess re-compiles eternia_backup, on every run.
TEST_ENV = PYTHONDONTWRITEBYTECODE=

## test: the whole test suite (starts its own SeaweedFS S3 server on loopback)
test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -n 2

## test-fast: the suite without the slow tests (crash, S3 fault, scheduler timing, S3 scale, wheel install,
## the database plugins against their real servers)
## Three workers on two cores: much of the fast suite waits on CLI processes and servers (74-78 s against 91 s with two).
test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -n 3 -m "not slow"

## bench: eternia-backup against tar+zstd, restic, borg, rclone (benchmarks/README.md; about 10 min at the defaults)
## BENCH_ARGS="--size 128M --tiny 20000 --repeat 1 --list-backups 100" for a quick look
bench: $(STAMP)
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

## bench-incremental: no-change and small-change backups vs restic, a chain restore, a 1,000,000-entry index
## (benchmarks/README.md); BENCH_ARGS="--size 128M --tiny 50000 --chain 5" for a quick look
bench-incremental: $(STAMP)
	$(PY) benchmarks/incremental.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
