PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck clean bench

$(BIN)/postoffice: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/postoffice
	$(BIN)/postoffice serve

test: $(BIN)/postoffice
	$(BIN)/ruff check postoffice tests
	$(BIN)/ruff format --check postoffice tests
	$(BIN)/mypy
	$(BIN)/pytest -q

# Side-by-side with Dovecot (needs root; see bench/README.md). Never part of `make test`.
# BENCH_ARGS=--quick for a smaller corpus, e.g. make bench BENCH_ARGS=--quick
bench: $(BIN)/postoffice
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
