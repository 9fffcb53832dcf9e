# Two commands do everything on a fresh machine with only the package registry:
#   make book   set up .venv, execute the chapters that changed, build the HTML into _build/html
#   make test   set up .venv, lint and type-check, run the test suite and every chapter (nbmake), build the HTML with -W,
#               then open every page in headless Chromium (tests/browser; screenshots in _build/screenshots)
# Pick a profile with SPLITLIB_PROFILE=<name> (default cpu); each profile has its own outputs.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PROFILE ?= $(or $(SPLITLIB_PROFILE),cpu)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
# Seconds per chapter cell, from the profile (cell_timeout): paper-scale cells run far longer than cpu ones.
NB_TIMEOUT = $$($(PY) -m splitlib.build timeout)
# torch first, pinned by constraints.txt: anything that resolves torch itself pulls GBs of CUDA wheels.
TORCH := $(shell grep -E '^torch==' constraints.txt)
NO_DEPS := $(shell python3 -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['tool']['splitlib']['no-deps']))")
NBMAKE := -p no:cacheprovider --nbmake --nbmake-timeout=$(NB_TIMEOUT) --overwrite
HTML := _build/$(if $(filter cpu,$(PROFILE)),html,html-$(PROFILE))

export PATH := $(abspath $(VENV))/bin:$(PATH)
export SPLITLIB_PROFILE := $(PROFILE)
# The reference copies of the public data sets, where a checkout has them beside it (CI does).
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(origin SPLITLIB_DATA), undefined)
ifneq ($(wildcard $(SHARED_DATA)),)
export SPLITLIB_DATA := $(SHARED_DATA)
endif
endif
export PYTHONHASHSEED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: book test setup clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt "$(TORCH)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[book]"
	$(PY) -m pip install --quiet --no-deps $(NO_DEPS)
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

book: setup
	stale="$$($(PY) -m splitlib.build prepare)"; \
	if [ -n "$$stale" ]; then $(PY) -m pytest $(NBMAKE) $$stale; else echo "all chapters up to date"; fi
	$(PY) -m splitlib.build record
	$(PY) -m splitlib.build html

test: setup
	$(PY) -m ruff check splitlib tests
	$(PY) -m mypy splitlib
	$(PY) -m splitlib.build prepare --force > /dev/null
	$(PY) -m pytest tests _notebooks/$(PROFILE) $(NBMAKE) --ignore=tests/browser
	$(PY) -m splitlib.build record
	$(PY) -m splitlib.build html
	$(PY) -m pytest tests/browser -p no:cacheprovider --site $(HTML)

clean:
	rm -rf _build _notebooks
