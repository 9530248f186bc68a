PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck clean bench fuzz

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
# A virtualenv of its own, made with the distribution's python3 when that is 3.11 or later
# and can make one (ensurepip: Debian's python3-venv): an operator's server runs on it, and
# how an interpreter was built (profile-guided and link-time optimised or not) moves every
# figure by a fifth or more.
BENCH_PYTHON ?= $(shell /usr/bin/python3 -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo /usr/bin/python3 || echo $(PYTHON))
BENCH_VENV := .venv-bench

$(BENCH_VENV)/bin/postoffice: pyproject.toml
	$(BENCH_PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e .
	touch $@

bench: $(BENCH_VENV)/bin/postoffice
	$(BENCH_VENV)/bin/python -m bench.run $(BENCH_ARGS)

# Whole POP3 sessions against the protocol core (tests/fuzz), for a long time: coverage-
# guided with atheris when it installs (FUZZ_SECONDS; corpus and crash-* inputs in
# var/fuzz/), else FUZZ_EXAMPLES Hypothesis examples. A short run is part of `make test`.
FUZZ_SECONDS ?= 600
FUZZ_EXAMPLES ?= 20000
fuzz: $(BIN)/postoffice
	-$(BIN)/pip install --quiet atheris
	mkdir -p var/fuzz/corpus
	if $(BIN)/python -c 'import atheris' 2>/dev/null; then \
		$(BIN)/python -m tests.fuzz.atheris_main -max_total_time=$(FUZZ_SECONDS) \
			-print_final_stats=1 -artifact_prefix=var/fuzz/ var/fuzz/corpus; \
	else \
		POSTOFFICE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q tests/fuzz \
			--hypothesis-show-statistics; \
	fi

clean:
	rm -rf $(VENV) $(BENCH_VENV) .mypy_cache .pytest_cache .ruff_cache
