# GPT-2's learned absolute positions: cannot be evaluated past block_size.
# python train.py config/laptop_learned.py   (the laptop defaults: shakespeare/char in train.py, 4x4x128 and block 128 in GPTConfig)
out_dir = "out/laptop_learned"
wandb_run_name = "laptop_learned"
pos_emb = "learned"
