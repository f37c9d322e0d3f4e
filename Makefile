# Two commands do all set-up on a fresh machine:
#   make book   venv + synthetic demo data + run every notebook (papermill) + build the book
#   make test   venv + pytest
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= demo
SEED ?= 20251105
RUN_DIR ?= runs/$(PROFILE)
DEMO_DIR ?= data/demo
MANIFEST ?= data_manifest/demo.yaml
PRETRAIN_CT ?= 60
PYTEST_ARGS ?=
# Python may cache the bytecode of what it imports (in the venv and beside our sources; git ignores
# __pycache__): with PYTHONDONTWRITEBYTECODE set, every notebook kernel compiles torch, MONAI and
# pandas afresh, which made `make test` on a fresh clone 1.4 times slower (measured: 422 s against 306 s).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: book test lab venv demo-data run clean-runs mutate external

# requirements.txt is the one place where versions are pinned; torch (its CPU build) goes first.
# --no-compile: Python compiles the few modules it imports on first use instead of every file of
# every package at install time (a fresh venv in under a minute instead of about two).
$(BIN)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile "$$(grep -E '^torch==' requirements.txt)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile --no-deps --no-build-isolation -e .
	touch $@

venv: $(BIN)/.installed

$(DEMO_DIR)/cohort.csv: | $(BIN)/.installed
	$(BIN)/prrt demo-data --out $(DEMO_DIR) --seed $(SEED) --pretrain-ct $(PRETRAIN_CT)

demo-data: $(DEMO_DIR)/cohort.csv

# `prrt run` builds the book with the results and swaps both in together (a failed run keeps the old ones)
run: venv demo-data
	$(BIN)/prrt run --manifest $(MANIFEST) --profile $(PROFILE) --run-dir $(RUN_DIR) --seed $(SEED) --no-book

book: venv demo-data
	$(BIN)/prrt run --manifest $(MANIFEST) --profile $(PROFILE) --run-dir $(RUN_DIR) --seed $(SEED)

# External validation on a synthetic second site (another seed, a coarser PET: 10 mm instead of 7 mm FWHM):
# the models of chapters 02-04 fitted on all of the demo cohort predict it once (chapter 06)
SITE_B_DIR ?= data/demo-site-b
$(SITE_B_DIR)/cohort.csv: | $(BIN)/.installed
	$(BIN)/prrt demo-data --out $(SITE_B_DIR) --seed $$(( $(SEED) + 1 )) --n-patients 80 --pet-fwhm 10 --name synthetic-site-b

external: venv demo-data $(SITE_B_DIR)/cohort.csv
	$(BIN)/prrt run --manifest $(MANIFEST) --validate-on $(SITE_B_DIR)/manifest.yaml --profile $(PROFILE) \
		--run-dir runs/$(PROFILE)-external --seed $(SEED)

# One pytest worker per core (pytest-xdist), one test file per worker at a time: the tests that read the
# smoke run (tests/e2e/test_runner.py) then share one worker, which makes that run once; files start in the
# order tests/conftest.py gives (longest first), not by their number of tests. (`--dist loadgroup` would
# place single tests, but pytest-xdist 3.8 cannot rename test IDs under pytest 9, so its groups are ignored.)
test: venv
	$(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# Mutation testing of the code behind the published numbers (slow: about an hour on 2 cores; see CONTRIBUTING.md)
$(BIN)/.installed-dev: requirements-dev.txt $(BIN)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -r requirements-dev.txt
	touch $@

mutate: $(BIN)/.installed-dev
	$(BIN)/python tools/mutate.py

lab: venv demo-data
	$(BIN)/jupyter lab notebooks/

clean-runs:
	rm -rf runs/
