# The README's two commands: `make demo` and `make test`. Both set everything up from a fresh
# clone (a .venv with the package and its dependencies); nothing else is needed but Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.samri_ml-installed
DEMO_DATA ?= example_data
DEMO_OUT ?= demo_out
DEMO_ARGS ?=
PYTEST_ARGS ?=
# test files run on this many workers at once (pytest-xdist; one file's tests stay on one
# worker, so a module's shared registration runs once): 0 runs them one after another
TEST_WORKERS ?= 2

.PHONY: install demo test lint clean

# an older Python stopped the set-up with an AssertionError traceback that did not say which
# Python it had found; a missing one with "-c: command not found"
$(STAMP): setup.cfg pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: no python3.11 or python3 on PATH; hint: install" \
		"Python 3.11, or give it: make $(MAKECMDGOALS) PYTHON=/path/to/python3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else "make: " \
		"PYTHON=$(PYTHON) is Python %d.%d; samri_ml needs 3.11 or newer; hint: make" \
		" $(MAKECMDGOALS) PYTHON=/path/to/python3.11" % sys.version_info[:2])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# the paths quoted: DEMO_OUT="~/Lab Data/demo" made `make clean` remove ~/Lab and ./Data/demo
demo: install
	"$(BIN)/samri_ml-example" "$(DEMO_DATA)"
	"$(BIN)/samri_ml-register" "$(DEMO_DATA)" "$(DEMO_OUT)" participant --fast \
		--template "$(DEMO_DATA)/template/tpl-Phantom_T2w.nii.gz" \
		--template-mask "$(DEMO_DATA)/template/tpl-Phantom_desc-brain_mask.nii.gz" \
		-w .demo_work --write-graph colored --nprocs 2 $(DEMO_ARGS)
	@echo "Derivatives: $(DEMO_OUT)/  reports: $(DEMO_OUT)/sub-*.html  graph: $(DEMO_OUT)/figures/"

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check samri_ml tests benchmarks examples

clean:
	rm -rf "$(VENV)" "$(DEMO_OUT)" "$(DEMO_DATA)" .demo_work .pytest_cache
