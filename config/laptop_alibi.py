# ALiBi (Press et al. 2022): linear attention biases instead of rotations.
# python train.py config/laptop_alibi.py   (the laptop defaults: shakespeare/char in train.py, 4x4x128 and block 128 in GPTConfig)
out_dir = "out/laptop_alibi"
wandb_run_name = "laptop_alibi"
pos_emb = "alibi"
