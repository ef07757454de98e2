# GPT-2's learned absolute positions: cannot be evaluated past block_size.
# python train.py config/laptop_learned.py   (the laptop defaults of train.py: shakespeare/char, 4x4x128, block 128)
out_dir = "out/laptop_learned"
wandb_run_name = "laptop_learned"
pos_emb = "learned"
