# Set-up and the two everyday jobs. Everything installs into ./.venv from PyPI.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo lint test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Editable install: generates the gRPC stubs and compiles the Cython kernels. "strict" mode lays the package
# out as links under build/, so mypy and import-linter resolve every room; run it again after adding a module.
install: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=strict

demo: install
	$(BIN)/iotstream demo

# Lint, the import contract between rooms (pyproject [tool.importlinter]) and types of the product packages.
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# Benchmark tools (ghz, grpcurl, Python extras) let the benchmarks' smoke tests run too; if they cannot be
# installed (no Go, proxy away), those tests report themselves skipped and the rest still runs. The browser
# (Debian's chromium) is required: the console's test runs in it.
test: lint
	timeout 900 bench/setup --browser
	timeout 900 bench/setup || echo "WARNING: bench/setup failed: the benchmark smoke tests will be skipped" >&2
	bash tests/run

clean:
	rm -rf $(VENV) build *.egg-info iotstream-data ext/*.so ext/*.c proto/iotstream/v1/*_pb2*.py* proto/iotstream/v1/__init__.py
