# FoPE (Hua et al. 2025): Fourier coefficients over the clamped RoPE frequencies (train.py's default).
# python train.py config/laptop_fope.py   (the laptop defaults: shakespeare/char in train.py, 4x4x128 and block 128 in GPTConfig)
out_dir = "out/laptop_fope"
wandb_run_name = "laptop_fope"
pos_emb = "fope"
