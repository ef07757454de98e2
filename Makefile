# nanoFoPE: `make test` and `make demo` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test setup

setup: $(STAMP)

# (re)install when requirements.txt changes; torch is pinned there (never unpinned: several GB)
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q tests
