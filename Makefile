# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv in the repository root on first use and install the project
# (editable) with its test extra; later runs skip the install while .venv is current.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ridgeline-installed

.PHONY: all demo test bench clean

all: $(STAMP)

$(STAMP): pyproject.toml setup.cfg
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ridgeline demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	@for b in bench/*_bench.py bench/agent_footprint.py; do \
		test -f $$b || continue; echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis ridgeline-data build *.egg-info
