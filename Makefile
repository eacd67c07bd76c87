# Berth developer commands. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The machine keeps the CPU build of torch 2.13.0 here; elsewhere pip uses the index.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: install demo test lint format clean bench

install: $(STAMP)

# torch==2.13.0 is the CPU build the machine provides; the extras pin it.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(FIND_LINKS) -e ".[dev,onnx,torch]"
	touch $(STAMP)

demo: install
	$(BIN)/berth demo

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check berth tests benchmarks
	$(BIN)/ruff format --check berth tests benchmarks
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix berth tests benchmarks
	$(BIN)/ruff format berth tests benchmarks

bench: install
	bash benchmarks/wrk_demo.sh

clean:
	rm -rf $(VENV) .berth .pytest_cache .mypy_cache .ruff_cache
