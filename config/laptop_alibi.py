# ALiBi (Press et al. 2022): linear attention biases instead of rotations.
# python train.py config/laptop_alibi.py   (the laptop defaults of train.py: shakespeare/char, 4x4x128, block 128)
out_dir = "out/laptop_alibi"
wandb_run_name = "laptop_alibi"
pos_emb = "alibi"
