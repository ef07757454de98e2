# RoPE on OpenWebText, one GPU: the baseline of config/owt_fope.py, identical but for pos_emb
# (that file gives the recipe and its tokens/iter, token and compute budget).
#   python data/openwebtext/prepare.py && python train.py config/owt_rope.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "owt_fope.py")).read())
out_dir = "out/owt_rope"
wandb_run_name = "owt_rope"
pos_emb = "rope"
