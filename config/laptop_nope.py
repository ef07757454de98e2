# NoPE: no position information beyond the causal mask (Kazemnejad et al. 2023).
# python train.py config/laptop_nope.py   (the laptop defaults of train.py: shakespeare/char, 4x4x128, block 128)
out_dir = "out/laptop_nope"
wandb_run_name = "laptop_nope"
pos_emb = "nope"
