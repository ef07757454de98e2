# The parts ablation at the paper's kept fraction, by the length (make geometry / experiments/geometry.py):
# config/ablate.py (head_dim 32, theta 1e4) at the paper's own L_train 512. The floor clamp keeps D = 8 of 16
# frequencies, periods 6.3 to 353 tokens (the paper's 60M model: 6.3 to 471), so D = head_dim/4 = d_out and
# FoPE rotates half the pairs. The same tokens per step as config/ablate.py (4 x 512 = 32 x 64), so a step
# sees 8 times fewer sequences (and passkey documents).
import os

exec(open(os.path.join(os.path.dirname(__file__), "ablate.py")).read())
out_dir = "out/geometry_L512"
wandb_run_name = "geometry_L512"
block_size = 512
batch_size = 4
