# FoPE on OpenWebText, one GPU: a GPT-2-small-like model (12 layers, 12 heads, 768 wide, 124M parameters)
# trained on 512-token sequences, the training length of the paper's 60M runs (Hua et al. 2025).
#   python data/openwebtext/prepare.py && python train.py config/owt_fope.py
#   torchrun --standalone --nproc_per_node=8 train.py config/owt_fope.py   (same tokens/iter, 8x faster)
# tokens/iter = batch_size * block_size * gradient_accumulation_steps = 16 * 512 * 64 = 524,288 (GPT-2's 0.5M)
# tokens in total = max_iters * tokens/iter = 10,000 * 524,288 = 5.24B (about 0.6 epochs of OpenWebText's 9B)
# compute = 6 * 124M params * 5.24B tokens = 3.9e18 FLOP: roughly 9 h on one A100 at 40% of its 312 TFLOP/s
# The paper's OLMo models use RMSNorm and SwiGLU: add --norm=rmsnorm --mlp=swiglu to match them.
out_dir = "out/owt_fope"
wandb_log = False
wandb_project = "nanofope"
wandb_run_name = "owt_fope"
pos_emb = "fope"

dataset = "openwebtext/gpt2"
vocab_multiple = 64  # 50257 -> 50304 rows, as nanoGPT (padded ids: -inf logits)
n_layer = 12
n_head = 12
n_embd = 768
block_size = 512
batch_size = 16
gradient_accumulation_steps = 64
dropout = 0.0

learning_rate = 6e-4
min_lr = 6e-5
max_iters = 10_000
warmup_iters = 500
beta2 = 0.95
weight_decay = 0.1
grad_clip = 1.0

eval_interval = 500
eval_iters = 100  # 100 x 16 x 512 = 0.8M val tokens per evaluation, a fraction of one iteration's cost
log_interval = 10
dtype = "bfloat16"
compile = True
require_gpu = True  # a GPT-2-small run: refuse the CPU (--require_gpu=False forces it)
