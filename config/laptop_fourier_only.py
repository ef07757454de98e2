# FoPE's Fourier series alone (the paper's Fig. 6a "w/o CF"): no frequency is clamped, and every dimension
# pair is a series over all head_dim/2 RoPE frequencies (xavier gain fope_sigma plus the identity).
# python train.py config/laptop_fourier_only.py   (the laptop defaults: shakespeare/char in train.py, 4x4x128 and block 128 in GPTConfig)
out_dir = "out/laptop_fourier_only"
wandb_run_name = "laptop_fourier_only"
pos_emb = "fope"
fope_clamp = False
