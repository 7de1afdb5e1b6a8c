# haios: `make demo` and `make test` each set up what they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-stamp
STAMP := $(VENV)/.installed-stamp
LINTED := haios tests benchmarks

.PHONY: demo test soak lint typecheck unit docs venv clean

# haios and what it needs at run time: all the demo installs
$(RUNTIME): pyproject.toml setup.py haios/wal/_scan.c
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "haios needs Python 3.11 or newer (PYTHON=$(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable .
	touch $@

# the test extras on top (pytest, linters, type stubs, the benchmarks' baselines)
$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet --editable '.[test]'
	touch $@

venv: $(STAMP)

demo: $(RUNTIME)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

# the Debian packages first: the install builds haios's C loop with the compiler they bring
test:
	bash tests/system-deps.sh
	$(MAKE) --no-print-directory venv lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: $(STAMP)
	$(BIN)/mypy --strict haios

# One pytest worker per CPU this process may run on (taskset counts) and one more — many tests wait
# on subprocesses, sshd and timeouts — each test file on one worker, handed out in the suite's order
# (the lab's long tests first, so that they run beside the rest rather than after it).
WORKERS := $(shell echo $$(( $$(nproc) + 1 )))
unit: $(STAMP)
	$(BIN)/pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder --durations=30

# The long rehearsals at full size (the suite runs a sample of each): 300 local and 50 SSH trials,
# 1,000 SIGKILLed WAL and control-file writers, every fixture-reading file an hour older.
soak: $(STAMP)
	bash tests/system-deps.sh
	HAIOS_TRIALS=300 HAIOS_SSH_TRIALS=50 HAIOS_CRASH_TRIALS=1000 HAIOS_SOAK=1 $(BIN)/pytest --durations=10 -m slow \
		tests/sim/test_trials.py tests/transport/test_ssh.py tests/wal/test_crash.py tests/test_controlfile.py \
		tests/test_harness.py

docs: $(STAMP)
	$(BIN)/python -m haios.cli._docs > docs/cli.md

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
