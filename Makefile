# Every target that needs Python packages builds .venv itself from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest stress demo bench schemas schemas-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check sdk tests examples benchmarks
	$(BIN)/ruff format --check sdk tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy --strict sdk

# pytest's worker processes (pytest-xdist): the tests mostly wait, on sockets and on the
# processes they start, so one more than the CPUs (3 on a 2-CPU machine: as fast as 4 there,
# with less contention), at most 8; PYTEST_WORKERS=0 runs the tests in pytest's own process.
# compileall first: the processes the tests start then read compiled modules, also where
# PYTHONDONTWRITEBYTECODE keeps them from writing any
PYTEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$((n + 1 > 8 ? 8 : n + 1)))

pytest: $(STAMP)
	$(BIN)/python -m compileall -q sdk examples tests >/dev/null
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS)

test: lint typecheck pytest

# The long reliability runs: fuzz with many more examples, and the tests marked
# `stress` (deselected from `make test`).
stress: $(STAMP)
	HYPOTHESIS_PROFILE=stress $(BIN)/python -m pytest -q -m "stress or fuzz"

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# the interface documents (OpenRPC and varlink IDL) of the example daemons (tests/test_interface_documents.py checks they are current)
schemas: $(STAMP)
	$(BIN)/python -m unixrpc schema examples/rpc_daemon.py:server -o schemas/rpc_daemon.openrpc.json
	$(BIN)/python -m unixrpc schema examples/privsep_daemon.py:server -o schemas/privsep_daemon.openrpc.json
	$(BIN)/python -m unixrpc schema --varlink examples/rpc_daemon.py:server -o schemas/rpc_daemon.varlink
	$(BIN)/python -m unixrpc schema --varlink examples/privsep_daemon.py:server -o schemas/privsep_daemon.varlink

# exit 1, saying what changed, when a document in schemas/ is stale (writes nothing)
schemas-check: $(STAMP)
	$(BIN)/python -m unixrpc schema examples/rpc_daemon.py:server -o schemas/rpc_daemon.openrpc.json --check
	$(BIN)/python -m unixrpc schema examples/privsep_daemon.py:server -o schemas/privsep_daemon.openrpc.json --check
	$(BIN)/python -m unixrpc schema --varlink examples/rpc_daemon.py:server -o schemas/rpc_daemon.varlink --check
	$(BIN)/python -m unixrpc schema --varlink examples/privsep_daemon.py:server -o schemas/privsep_daemon.varlink --check

# bench_callgrind.py: instructions per call of each server engine under valgrind (skipped without
# valgrind), the figure to compare code changes by on a noisy machine
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_raw.py
	$(BIN)/python benchmarks/bench_rpc.py
	$(BIN)/python benchmarks/bench_fds.py
	$(BIN)/python benchmarks/bench_large.py
	$(BIN)/python benchmarks/bench_callgrind.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
