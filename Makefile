# Two commands for a fresh machine with Python 3.11+:
#   make demo   runs examples/counter.py on the local system
#   make test   runs the gates (format, lint, types) and the whole test suite with coverage
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo pi bench soak fuzz test check lint format clean

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

bench: $(BIN)/.installed
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
test: lint
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest $(PYTEST_ARGS)
	$(BIN)/coverage combine -q
	$(BIN)/coverage report

format: $(BIN)/.installed
	$(BIN)/ruff format bigactor tests examples benchmarks
	$(BIN)/ruff check --fix bigactor tests examples benchmarks

clean:
	rm -rf $(VENV) .coverage .coverage.* .pytest_cache .mypy_cache .ruff_cache
