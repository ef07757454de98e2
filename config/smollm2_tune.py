# Continue training SmolLM2-135M (pretrained.py) on Shakespeare in its own tokens. Prepare the shards first:
#   python data/shakespeare/prepare.py --pretrained=smollm2-135m
#   python train.py config/smollm2_tune.py                      # keeps its RoPE (theta 1e5)
#   python train.py config/smollm2_tune.py --pos_emb=fope --fope_fourier=False --out_dir=out/smollm2_clamp
# The model's shape comes from the file; block_size, pos_emb, rope_scaling, fope_* and dropout from here.
init_from = "smollm2-135m"
dataset = "shakespeare/smollm2-135m"
out_dir = "out/smollm2_tune"
wandb_run_name = "smollm2_tune"
pos_emb = "rope"  # the model's own; fope turns it into FoPE (fresh coefficients), as make extend's rope->fope
block_size = 1024
batch_size = 4
gradient_accumulation_steps = 4
max_iters = 200
eval_interval = 50
eval_iters = 5
learning_rate = 3e-5  # fine-tuning: far below pretraining's
min_lr = 3e-6
warmup_iters = 20
weight_decay = 0.0
