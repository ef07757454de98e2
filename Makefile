# nanoFoPE: `make test` and `make demo` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test setup demo ext bench lens extend ablate

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

# the lens on the demo's checkpoints (make demo first): q/k means, attention vs distance, spectrum,
# Fig. 8 -> results/lens/ (QUICK=1: the quick demo's checkpoints -> results/quick/lens/)
LENS_DIR = $(if $(QUICK),out/demo_quick,out/demo)
LENS_CKPTS = $(patsubst %/ckpt.pt,%,$(wildcard $(LENS_DIR)/*/ckpt.pt))
# rows named as the demo names its variants: out/demo/<variant>_s<seed>
comma := ,
empty :=
space := $(empty) $(empty)
LENS_VARIANTS = $(sort $(foreach c,$(LENS_CKPTS),$(firstword $(subst _s, ,$(notdir $(c))))))
LENS_LABELS = $(foreach v,$(LENS_VARIANTS),--label=$(v)=$(subst $(space),$(comma),$(filter $(LENS_DIR)/$(v)_s%,$(LENS_CKPTS))))
lens: $(STAMP)
	@test -n "$(LENS_CKPTS)" || { echo "no checkpoints in $(LENS_DIR): run make demo$(if $(QUICK), QUICK=1) first"; exit 1; }
	$(PY) lens.py --ckpt $(LENS_CKPTS) $(LENS_LABELS) --out $(if $(QUICK),results/quick/lens,results/lens)

# context extension by continued training (the paper's Fig. 4), from make demo's runs (~15 min after it)
extend: $(STAMP)
	$(PY) extend.py $(if $(QUICK),--quick)

# the paper's ablations and baselines, 23 arms x 3 seeds (~70 min on 2 cores); QUICK=1: a few-minute smoke run
ablate: $(STAMP)
	$(PY) ablate.py $(if $(QUICK),--quick)
