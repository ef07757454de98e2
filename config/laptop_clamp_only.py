# FoPE's floor clamp alone (the paper's Fig. 6a "w/o FS"): RoPE whose frequencies below 2 pi / block_size
# are set to zero, so those dimension pairs pass through unrotated; no Fourier series.
# python train.py config/laptop_clamp_only.py   (the laptop defaults: shakespeare/char in train.py, 4x4x128 and block 128 in GPTConfig)
out_dir = "out/laptop_clamp_only"
wandb_run_name = "laptop_clamp_only"
pos_emb = "fope"
fope_fourier = False
