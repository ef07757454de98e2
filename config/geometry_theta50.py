# Where production FoPE and the paper's differ in how many pairs rotate (make geometry / experiments/geometry.py):
# config/ablate.py (head_dim 32, L_train 64) with theta 50. The floor clamp keeps D = 10 of 16 frequencies, more
# than head_dim/4 = 8: the paper's code fills d_out = 8 pairs (its step identity, step 2, reaches 5 of the kept
# frequencies), production one pair per kept frequency (d_out = 10), as at the official L_train 1024 configs
# (head_dim 64: D = 18 > 16).
import os

exec(open(os.path.join(os.path.dirname(__file__), "ablate.py")).read())
out_dir = "out/geometry_theta50"
wandb_run_name = "geometry_theta50"
rope_theta = 50.0
