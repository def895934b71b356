PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-cluster check bench clean

# the tests that must hold on a Redis Cluster as on one Redis: CI runs them again on a 3-master cluster
CLUSTER_TESTS := tests/integration/test_redis_cluster.py tests/integration/test_tracker.py \
	tests/integration/test_edge.py tests/integration/test_races.py tests/integration/test_event_races.py \
	tests/integration/test_core_integrity.py tests/integration/test_stories.py tests/integration/test_crash.py \
	tests/integration/test_worker_groups.py tests/integration/test_rate_limits.py

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/stitcher serve

test: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-cluster: $(STAMP)
	TEST_REDIS_CLUSTER=1 $(BIN)/pytest -q $(CLUSTER_TESTS) $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff check tracker stitcher tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
