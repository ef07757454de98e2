# Context extension by continued training (make extend / experiments/extend.py): the paper's Fig. 4 at laptop scale.
# Every arm starts from a length-64 run of make demo (init_from=out/demo/<rope|fope>_s<seed>) and trains on
# at length 128 (the paper: 512 -> 1024) with the demo's model, data and passkey mix; experiments/extend.py sets
# init_from, pos_emb and rope_scaling per arm. The paper trains ~1B tokens on; here 1000 iterations of
# 16 x 128 tokens (the demo's tokens per iteration), evaluated at 500 and 1000 (YaRN overfits with more
# steps, so the paper reports its best checkpoint).
import os

exec(open(os.path.join(os.path.dirname(__file__), "demo.py")).read())
out_dir = "out/extend"
wandb_run_name = "extend"
block_size = 128
batch_size = 16
max_iters = 1000
lr_decay_iters = 1000  # the 500-iteration checkpoint is the same run stopped halfway (experiments/extend.py resumes it)
learning_rate = 5e-4  # continued training: half the demo's peak
warmup_iters = 50
min_lr = 5e-5
eval_interval = 250
passkey_warmup = 0  # the parents retrieve already; half the rows keep starting with a passkey document
