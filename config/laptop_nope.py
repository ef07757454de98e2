# NoPE: no position information beyond the causal mask (Kazemnejad et al. 2023).
# python train.py config/laptop_nope.py   (the laptop defaults: shakespeare/char in train.py, 4x4x128 and block 128 in GPTConfig)
out_dir = "out/laptop_nope"
wandb_run_name = "laptop_nope"
pos_emb = "nope"
