# RoPE (Su et al. 2021): the baseline FoPE is measured against.
# python train.py config/laptop_rope.py   (the laptop defaults: shakespeare/char in train.py, 4x4x128 and block 128 in GPTConfig)
out_dir = "out/laptop_rope"
wandb_run_name = "laptop_rope"
pos_emb = "rope"
