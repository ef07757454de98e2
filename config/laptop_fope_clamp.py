# FoPE's floor clamp alone: sigma 0 leaves RoPE's identity mixing, only the low frequencies are zeroed.
# python train.py config/laptop_fope_clamp.py   (the laptop defaults of train.py: shakespeare/char, 4x4x128, block 128)
out_dir = "out/laptop_fope_clamp"
wandb_run_name = "laptop_fope_clamp"
pos_emb = "fope"
fope_sigma = 0.0
