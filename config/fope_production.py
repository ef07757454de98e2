# FoPE as production runs it: the knobs where it differs from the paper's code (Hua et al., olmo/model.py,
# FourierEmbedding), each from its source. On top of a model config:
#     python train.py config/laptop_fope.py config/fope_production.py
# - XTuner (InternLM/xtuner, xtuner/v1/module/rope/rope.py, FourierEmbedding), which trains Intern-S1-Pro:
#   coefficients (num_key_value_heads, D, D), so every kept frequency has a pair of its own (d_out = D, no
#   head_dim/4 cap) and there is one set per key/value head (fope_sep_head=True); xavier-normal with gain
#   fope_init_factor plus the identity, fope_init_factor = 0.5 in Intern-S1-Pro's config (the paper's 60M
#   model: sigma 0.3); one module per model, so every layer uses the same coefficients; the position-free
#   pairs padded with cos = sin = 1, as the paper's code.
# - vLLM (vllm/model_executor/layers/rotary_embedding/fope.py, FourierRotaryEmbedding) serves such checkpoints
#   with the same tables, one set per key/value head; vLLM 0.33.0 pads sin with 1, as XTuner (tests/test_geometry.py
#   holds its output on a fixed input). The fix proposed for vllm#55204 (pull request #55243) pads sin with 0
#   (fope_zero_pad = "identity"): experiments/geometry.py's padding arm, and its trained-vs-served measurement.
# Not carried over: XTuner draws the coefficients from a generator seeded 123 whatever the run's seed (here
# the run's seed draws them, so seeds vary the draw); it clamps at max_position_embeddings, the serving length
# (262144 for Intern-S1-Pro), where the paper and nanoFoPE clamp at the training length block_size; and it keeps
# w > 2 pi / L where nanoFoPE keeps w >= 2 pi / L (they differ only for a frequency exactly on the boundary).
out_dir = "out/fope_production"  # a model of its own: its own out_dir
wandb_run_name = "fope_production"
pos_emb = "fope"
fope_sigma = 0.5
fope_d_out = "kept"
fope_kv_heads = True
fope_share_layers = True
