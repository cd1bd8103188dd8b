# Two commands for a fresh machine with Python 3.11+:
#   make demo   runs examples/counter.py on the local system
#   make test   runs the gates (format, lint, types) and the whole test suite with coverage
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo pi bytecode bench soak fuzz test ec2 check lint format clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bigactor needs Python 3.11 or newer: run make PYTHON=python3.11 ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python examples/counter.py

pi: $(BIN)/.installed
	$(BIN)/python examples/pi.py 4

# Byte-compiled as a regular install is: an editable install compiles nothing, and with
# PYTHONDONTWRITEBYTECODE every fresh interpreter (a worker, the fork server's template) would
# compile bigactor's sources again (~70 ms of each cold start here).
bytecode: $(BIN)/.installed
	$(BIN)/python -m compileall -q bigactor benchmarks >/dev/null

bench: bytecode
	$(BIN)/python -m benchmarks

# Ten minutes of 64 machines, 2,000 callers and random kills (CI runs one minute of it).
soak: $(BIN)/.installed
	$(BIN)/python -m tests.soak --seconds 600

# A million inputs into each fuzz target (frames, websocket, upgrade, handshake, codec): ~15 min.
fuzz: $(BIN)/.installed
	$(BIN)/python -m tests.fuzz --inputs 1000000

lint: $(BIN)/.installed
	$(BIN)/ruff format --check bigactor tests examples benchmarks
	$(BIN)/ruff check bigactor tests examples benchmarks
	$(BIN)/mypy

# Coverage runs pytest itself (not pytest-cov) so that the pytest plugin's import and every
# worker subprocess are measured too.
# Code this suite cannot measure where it runs: the EC2 system's driver side runs under `make ec2`
# (which measures it), a remote worker's handoff and output capture run on an instance (from the
# bundle's copy) or in a remote-style worker the driver ends by SIGKILL. Their tests run here too.
ELSEWHERE := bigactor/systems/ec2/_system.py,bigactor/systems/_remote/_worker.py,bigactor/supervisor/_capture.py

test: lint bytecode
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest $(PYTEST_ARGS)
	$(BIN)/coverage combine -q
	$(BIN)/coverage report --omit="$(ELSEWHERE)"

# The EC2 suite: a fake cloud (moto's EC2 API, instances as Linux namespaces) inside a network
# namespace with no route out. Needs root; skips otherwise (fails instead with EC2TEST_STRICT=1).
ec2: $(BIN)/.installed
	rm -f .coverage .coverage.*
	EC2TEST_COVERAGE=1 EC2TEST_PYTHON=$(BIN)/python tests/ec2/run $(PYTEST_ARGS)
	@if ls .coverage.* >/dev/null 2>&1; then \
	    $(BIN)/coverage combine -q && \
	    $(BIN)/coverage report --include=bigactor/systems/ec2/_system.py --fail-under=80; \
	fi

format: $(BIN)/.installed
	$(BIN)/ruff format bigactor tests examples benchmarks
	$(BIN)/ruff check --fix bigactor tests examples benchmarks

clean:
	rm -rf $(VENV) .coverage .coverage.* .pytest_cache .mypy_cache .ruff_cache
