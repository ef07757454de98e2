# The ablations and baselines (make ablate / experiments/ablate.py): make demo's model, data, passkey mix and
# learning rate, trained for 900 iterations instead of 2200, so 23 arms x 3 seeds fit in about 70 minutes on
# 2 CPU cores (results/ablate_timing.json). Exploratory runs at this budget (not kept): rope and fope retrieve the passkey at L_train
# (1.00 and 0.90) after 450 iterations of passkey documents. `python experiments/ablate.py --scale=demo` runs the
# same arms at the demo's own 2200 iterations instead, reusing make demo's runs (about 2.5 hours).
import os

exec(open(os.path.join(os.path.dirname(__file__), "demo.py")).read())
out_dir = "out/ablate"
wandb_run_name = "ablate"
max_iters = 900
warmup_iters = 50
eval_interval = 450
passkey_warmup = 450
