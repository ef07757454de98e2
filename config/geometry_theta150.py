# The parts ablation at the paper's kept fraction, by the base (make geometry / experiments/geometry.py):
# config/ablate.py (head_dim 32, L_train 64) with theta 150 instead of 1e4. The floor clamp then keeps
# D = 8 of 16 frequencies (periods 6.3 to 56 tokens), so D = head_dim/4 = d_out and FoPE rotates half the
# pairs, as in the paper's 60M model (head_dim 64, L_train 512: 16 of 32). Any theta in (104, 201] keeps 8.
import os

exec(open(os.path.join(os.path.dirname(__file__), "ablate.py")).read())
out_dir = "out/geometry_theta150"
wandb_run_name = "geometry_theta150"
rope_theta = 150.0
