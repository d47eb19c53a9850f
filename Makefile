# The README's two commands: `make demo` and `make test`. Both set everything up from a fresh
# clone (a .venv with the package and its dependencies); nothing else is needed but Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.samri_ml-installed
DEMO_DATA ?= example_data
DEMO_OUT ?= demo_out
DEMO_WORK ?= .demo_work
DEMO_ARGS ?=
PYTEST_ARGS ?=
# test files run on this many workers at once (pytest-xdist; one file's tests stay on one
# worker, so a module's shared registration runs once): 0 runs them one after another
TEST_WORKERS ?= 2

.PHONY: install demo test lint dist clean

# an older Python stopped the set-up with an AssertionError traceback that did not say which
# Python it had found; a missing one with "-c: command not found". setuptools: `make dist`
# builds with it (Python 3.12's venv has none)
$(STAMP): setup.cfg pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: no python3.11 or python3 on PATH; hint: install" \
		"Python 3.11, or give it: make $(MAKECMDGOALS) PYTHON=/path/to/python3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else "make: " \
		"PYTHON=$(PYTHON) is Python %d.%d; samri_ml needs 3.11 or newer; hint: make" \
		" $(MAKECMDGOALS) PYTHON=/path/to/python3.11" % sys.version_info[:2])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel 'setuptools>=64'
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# the paths quoted: DEMO_OUT="~/Lab Data/demo" made `make clean` remove ~/Lab and ./Data/demo.
# The ANTs steps cannot take a template or work dir with a space in its path: a clone in
# ~/Lab Projects/ stopped on samri_ml-register's hint to give -w, which make does not take
demo: install
	@for p in "$(DEMO_DATA)" "$(DEMO_WORK)"; do case "$$p" in /*) ;; *) p="$$(pwd)/$$p";; esac; \
		case "$$p" in *[[:space:]]*) echo "make: $$p has a space in its path, which the ANTs" \
			"steps cannot take; hint: make demo DEMO_DATA=/path/without/spaces/example_data" \
			"DEMO_WORK=/path/without/spaces/demo_work" >&2; exit 1;; esac; done
	"$(BIN)/samri_ml-example" "$(DEMO_DATA)"
	"$(BIN)/samri_ml-register" "$(DEMO_DATA)" "$(DEMO_OUT)" participant --fast \
		--template "$(DEMO_DATA)/template/tpl-Phantom_T2w.nii.gz" \
		--template-mask "$(DEMO_DATA)/template/tpl-Phantom_desc-brain_mask.nii.gz" \
		-w "$(DEMO_WORK)" --write-graph colored --nprocs 2 $(DEMO_ARGS)
	@echo "Derivatives: $(DEMO_OUT)/  reports: $(DEMO_OUT)/index.html  graph: $(DEMO_OUT)/figures/"

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check samri_ml tests benchmarks examples

# a release's sdist and wheel, in dist/, built from a `git archive` of HEAD: a wheel built in
# the checkout (`pip wheel .`) shipped whatever an earlier build had left in build/lib (a
# module removed since) and any untracked file under samri_ml/data (a scratch model)
SDIST := import os, setuptools.build_meta as m; os.chdir(".dist_src"); m.build_sdist("../dist")
dist: install
	@git rev-parse --verify -q HEAD >/dev/null || { echo "make: dist builds the committed" \
		"tree (git archive HEAD); hint: run it in a git checkout with a commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=no)" || echo "make: note: uncommitted" \
		"changes are not in the archives (they are built from HEAD)" >&2
	rm -rf dist .dist_src
	mkdir -p dist .dist_src
	git archive HEAD | tar -x -C .dist_src
	"$(BIN)/python" -c '$(SDIST)' >/dev/null
	"$(BIN)/python" -m pip wheel --quiet --no-deps --no-build-isolation -w dist dist/*.tar.gz
	rm -rf .dist_src
	@ls dist

clean:
	rm -rf "$(VENV)" "$(DEMO_OUT)" "$(DEMO_DATA)" "$(DEMO_WORK)" .pytest_cache .dist_src
