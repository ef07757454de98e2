# nanoFoPE: `make test` and `make demo` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test setup demo ext bench

setup: $(STAMP)

# (re)install when requirements.txt changes; torch is pinned there (never unpinned: several GB)
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q tests

# the laptop reproduction of the length curves (~25 min on 2 cores); QUICK=1: a few-minute smoke run
demo: $(STAMP)
	$(PY) demo.py $(if $(QUICK),--quick)

# the C rotation kernel (also built on first use); prints the compiler's error if it cannot build
ext: $(STAMP)
	$(PY) -m fope_ext

# rotation kernels vs eager, torch.compile and a plain copy; training step times -> bench.json
bench: $(STAMP)
	$(PY) bench.py $(if $(QUICK),--quick)
