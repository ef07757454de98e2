# FoPE (Hua et al. 2025): Fourier coefficients over the clamped RoPE frequencies (train.py's default).
# python train.py config/laptop_fope.py   (the laptop defaults of train.py: shakespeare/char, 4x4x128, block 128)
out_dir = "out/laptop_fope"
wandb_run_name = "laptop_fope"
pos_emb = "fope"
