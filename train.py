"""
Train a small GPT with a chosen position embedding (FoPE by default), the nanoGPT way.

    python train.py                                         # laptop default: FoPE, shakespeare/char, minutes on a CPU
    python train.py config/laptop_rope.py --max_iters=2000  # a config file, then --key=value overrides
    python train.py config/laptop_rope.py --init_from=resume --max_iters=4000 --lr_decay_iters=4000
    python train.py config/laptop_fope.py --init_from=out/laptop_fope --block_size=256 --out_dir=out/fope_256
    torchrun --standalone --nproc_per_node=8 train.py config/owt_fope.py

The config is the globals below, the model's included; config files and --key=value override them
(configurator.py). Data are token shards in data/<dataset>/ (data/shards.py). The checkpoint
out_dir/ckpt.pt is written atomically and holds everything needed to resume exactly and to decode
samples; Ctrl-C or SIGTERM ends a run with a status line, its last checkpoint whole (exit 130, 143 for
SIGTERM: guard.py). After Karpathy's nanoGPT train.py (github.com/karpathy/nanoGPT).
"""

import guard  # noqa: I001  first, before torch loads

if __name__ == "__main__":
    guard.quiet_while_loading()  # a Ctrl-C (or SIGTERM) while torch loads ends `python train.py` quietly

import contextlib
import dataclasses
import hashlib
import inspect
import math
import os
import random
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import (BEST, best_pair, check_model_args, checkpoint_file, checkpoint_status, existing_run,
                        load_checkpoint, load_parent, load_parent_weights, run_sources, save_checkpoint)
from configurator import accelerator_peak_flops, autocast_context, configure, resolve_device, resolve_dtype
from data.shards import ShardError, TokenShards
from model import GPT, GPTConfig, is_rotary

# -----------------------------------------------------------------------------
# default config values: a small FoPE model on char-level Shakespeare, minutes on a laptop CPU

# I/O
out_dir = "out/laptop_fope"
eval_interval = 100  # iterations between val evaluations (a checkpoint may follow each)
eval_iters = 10  # val batches per evaluation: the same batches every time (fixed seed)
log_interval = 10
always_save_checkpoint = True  # save ckpt.pt at every evaluation, not only when val loss improves (best.pt keeps the best)
overwrite = False  # True: a new run (not a resume) may replace the run already in out_dir (moved aside to
# <out_dir>.replaced, removed once the new run has saved its first checkpoint, put back if it ends before)
new_val_batches = False  # True: a resume may change seed, batch_size or eval_iters, i.e. the val batches: its val
# losses (and best.pt's choice) are then measured on other batches than before; False: such a resume is refused
init_from = "scratch"  # "scratch", "resume" (from out_dir/ckpt.pt, exactly), or another run's out_dir or ckpt.pt:
# its weights start the model this config describes (new block_size, pos_emb, rope_scaling), with a fresh
# optimizer and schedule (context extension by continued training: make extend); or a pretrained source
# (pretrained.py, config/smollm2_tune.py): its model, with this config's block_size, pos_emb, rope_scaling, fope_*
fourier_expand = "fresh"  # init_from a run: new FoPE coefficient entries "fresh" (official len_extra_fourier_expand) or "zero"
# wandb logging (wandb is imported only when this is on)
wandb_log = False
wandb_project = "nanofope"
wandb_run_name = "laptop_fope"
# data
dataset = "shakespeare/char"  # the shards in data/shakespeare/char
gradient_accumulation_steps = 1  # micro-batches per optimizer step, summed over all DDP processes
batch_size = 32  # sequences per micro-batch
seed = 1337
passkey_frac = 0.0  # fraction of training rows that start with a passkey document (passkey.py)
passkey_warmup = 0  # first iterations on passkey documents only: the copy circuit forms there, not in a mix
# model (model.py's GPTConfig, whose defaults these are; a test keeps them equal). A position embedding's
# own knobs are keys too, declared with it (FoPE's here: the project's centre): --key=value takes them all
n_layer = 4
n_head = 4
n_embd = 128
n_kv_head = None  # key/value heads (GQA); None: n_head
block_size = 128  # the training length L_train
dropout = 0.0
bias = False
pos_emb = "fope"  # nope learned sinusoidal rope rope-a fope alibi kerple fire t5 (model.POS_EMBS)
qk_norm = False  # q and k to zero mean, unit variance per head, before the rotation
norm = "layernorm"  # layernorm | rmsnorm
mlp = "gelu"  # gelu | swiglu
mlp_hidden = None  # None: 4 n_embd (gelu), 8/3 n_embd rounded up to 64 (swiglu)
norm_eps = 1e-5
tie_embeddings = True
vocab_multiple = 1  # embedding rows padded to a multiple (64: nanoGPT's 50304)
rope_theta = 10000.0
rope_scaling = None  # e.g. --rope_scaling="{'rope_type': 'yarn', 'factor': 8.0}" (rope_scaling.py)
rotary_backend = "auto"  # auto | eager | c | compile
fope_sigma = 0.3  # FoPE (fope.py): the coefficients' xavier gain; 0: the step identity alone
fope_dim = None  # Fourier terms per dimension; None: head_dim
fope_clamp = True  # zero the frequencies whose period exceeds block_size
fope_fourier = True  # False: no Fourier series (with fope_clamp: the clamp-only arm)
fope_learnable = False
fope_zero_pad = "official"  # official | identity
fope_d_out = "quarter"  # quarter (the paper's code) | kept (production)
fope_kv_heads = False  # coefficients per key/value head (production)
fope_share_layers = False  # one FoPE module for all layers (production)
fope_taper = "hard"  # the clamp-only arm's cut: hard | hann
# AdamW, with a linear warmup then a cosine decay of the learning rate to min_lr at lr_decay_iters
learning_rate = 1e-3
max_iters = 800
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # clip the global gradient norm to this; 0 disables
decay_lr = True
warmup_iters = 100
lr_decay_iters = None  # None: max_iters. Set it to extend a run: N iters + resume to 2N == 2N iters
min_lr = 1e-4
# system
device = "auto"  # auto (cuda, mps, then cpu) | cpu | cuda | cuda:1 | mps
dtype = "auto"  # auto: bfloat16 autocast on CUDA (float16 if unsupported), float32 elsewhere
compile = False  # torch.compile the model
require_gpu = False  # True (the owt configs): refuse to start without a CUDA GPU; --require_gpu=False forces the CPU
peak_flops = None  # the accelerator's peak FLOP/s for the MFU in the log; None: configurator.GPU_PEAK_FLOPS by name
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str, dict,
                                                                                          type(None)))]
MODEL_FIELDS = [f for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"]
# every config key and its default: the globals above, then the knobs other embeddings declare (GPTConfig's)
DEFAULTS = {**{k: globals()[k] for k in config_keys}, **{f.name: f.default for f in MODEL_FIELDS if f.name not in
                                                        config_keys}}
OPTIONAL_TYPES = {"lr_decay_iters": int, "peak_flops": float,  # the type of each key whose default is None
                  **{f.name: f.type for f in MODEL_FIELDS if f.default is None}}
FINGERPRINT_ITERS = 3  # the checkpoint's fingerprint: the first iterations' losses (experiments/runner.py)
# -----------------------------------------------------------------------------

# What each training setting must be, checked before anything runs: a bad value is one line, not a
# ZeroDivisionError or a silently odd run later. The model's fields are checked by GPTConfig.
LIMITS = {
    **dict.fromkeys(["eval_interval", "eval_iters", "log_interval", "gradient_accumulation_steps", "batch_size"],
                    (">= 1", lambda v: v >= 1)),
    "max_iters": (">= 1 (0 trains nothing and saves no checkpoint)", lambda v: v >= 1),
    **dict.fromkeys(["seed", "passkey_warmup", "weight_decay", "warmup_iters", "min_lr"],
                    (">= 0", lambda v: v >= 0)),
    **dict.fromkeys(["beta1", "beta2"], ("in [0, 1)", lambda v: 0 <= v < 1)),
    "passkey_frac": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "learning_rate": ("> 0", lambda v: v > 0),
    "grad_clip": (">= 0 (0: off)", lambda v: v >= 0),
    "lr_decay_iters": ("None or >= 1", lambda v: v is None or v >= 1),
}

# DDP resends no buffers (rotary tables, masks) at each forward: every process computes the same. torch 2.13 renamed
# the option (broadcast_buffers now warns: FutureWarning); an older torch knows only the old name.
DDP_OPTIONS = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})


def main(argv):
    """Train; returns the training loss of every iteration run (tests compare them)."""
    cfg = check_config(SimpleNamespace(**configure(DEFAULTS, argv, OPTIONAL_TYPES)))
    if cfg.wandb_log:
        try:
            import wandb  # noqa: F401  (here, not after the first eval_interval)
        except ImportError:
            raise SystemExit("wandb_log=True needs wandb: pip install wandb, or drop --wandb_log")
    ddp = "RANK" in os.environ  # launched by torchrun
    rank, local_rank, world_size = [int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")] if ddp else (0, 0, 1)
    device = resolve_device(cfg.device, local_rank if ddp else None)
    if cfg.require_gpu and not device.startswith("cuda"):
        raise SystemExit(f"this config needs a CUDA GPU and found none (device {device}, torch {torch.__version__}); "
                         "--require_gpu=False trains on the CPU anyway")
    if ddp:
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    try:  # Ctrl-C or SIGTERM: a line on what the run leaves, exit 130 or 143
        with guard.on_interrupt(ckpt_path, say=rank == 0), contextlib.ExitStack() as held:
            return train(cfg, rank, world_size, device, ckpt_path, held)  # held: out_dir, to the run's end
    finally:
        if ddp:
            dist.destroy_process_group()


def train(cfg, rank, world_size, device, ckpt_path, held):
    """The set-up above, step by step, then nanoGPT's loop: evaluate and checkpoint every eval_interval, then one
    optimizer step over gradient_accumulation_steps micro-batches, split over the processes."""
    master, device_type = rank == 0, device.split(":")[0]
    if cfg.gradient_accumulation_steps % world_size:
        raise SystemExit(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be a multiple "
                         f"of the {world_size} processes")
    accum_steps = cfg.gradient_accumulation_steps // world_size  # micro-batches of this process per step
    dtype = resolve_dtype(cfg.dtype, device, cfg.rotary_backend if is_rotary(cfg.pos_emb) else None)
    ctx, scaler = autocast_context(device, dtype), torch.amp.GradScaler(device_type, enabled=dtype == "float16")
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    train_data, val_data, passkey_docs = load_data(cfg)
    start = init_source(cfg, ckpt_path, train_data.meta, train_data.vocab_size, master)
    raw_model = build_model(cfg, start, device)
    claim = None  # rank 0's hold on out_dir, after every check that may refuse the config: a refused run leaves nothing
    if master:
        claim = held.enter_context(guard.claim_out_dir(cfg.out_dir, cfg.init_from != "resume", cfg.overwrite))
    if world_size > 1:
        torch.manual_seed(cfg.seed + 1 + rank)  # every process built the same model; now its own dropout masks
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    data_rng = np.random.default_rng(cfg.seed)  # the same on every process: the global batch stream
    iter_num, best_val_loss, best_saved = resume_state(start, cfg, raw_model, optimizer, scaler, data_rng, device, rank,
                                                       world_size)  # best_saved: the val loss of best.pt's weights
    model, eval_model = wrap_model(raw_model, cfg, device, world_size)
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    peak = (accelerator_peak_flops(device, cfg.peak_flops) or 0) * world_size  # tokens_per_iter: every process's
    flops_per_iter = raw_model.flops_per_token() * tokens_per_iter
    if master:
        print(f"{cfg.pos_emb}: {raw_model.get_num_params() / 1e6:.2f}M parameters, {tokens_per_iter:,} tokens/iter "
              f"({world_size} processes x {accum_steps} micro-batches x {cfg.batch_size} x {cfg.block_size}), "
              f"{device} {dtype}, {train_data.num_tokens:,} train tokens")
        if cfg.wandb_log:
            import wandb
            wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=vars(cfg))

    losses, start_iter, t_start, running_mfu, val_loss0 = [], iter_num, time.time(), None, None
    while True:
        # evaluate, and checkpoint the state after iter_num iterations
        if iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters:
            val_loss = estimate_val_loss(eval_model, val_data, cfg, ctx, device, rank, world_size)
            val_loss0 = val_loss if iter_num == 0 else val_loss0
            improved = val_loss < best_val_loss
            saving = (iter_num > start_iter and math.isfinite(val_loss)
                      and (improved or cfg.always_save_checkpoint or iter_num == cfg.max_iters))
            best = saving and val_loss < best_saved
            best_saved = val_loss if best else best_saved
            best_val_loss = min(best_val_loss, val_loss) if saving else best_val_loss  # of saved weights only
            if master:
                if saving:  # said after the rename, never of a checkpoint that could not be written
                    save_checkpoint({
                        "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(), "model_args": start.model_args, "config": vars(cfg),
                        "sources": start.sources, "parent": start.lineage, "iter_num": iter_num, "val_loss": val_loss,
                        "best_val_loss": best_val_loss, "rng": rng_states(data_rng, device_type),
                        "meta": train_data.meta, "past_configs": start.past_configs,
                        "fingerprint": start.fingerprint or run_fingerprint(cfg, losses, val_loss0)}, ckpt_path, best=best)
                    claim.saved()  # with --overwrite: the run this one replaces goes now, not before
                print(f"iter {iter_num}: val loss {val_loss:.4f}, {time.time() - t_start:.1f} s"
                      f"{', saved ' + ckpt_path if saving else ''}{' and ' + BEST if best else ''}")
                if cfg.wandb_log:
                    wandb.log({"iter": iter_num, "val/loss": val_loss})
        if iter_num >= cfg.max_iters:
            break

        # one optimizer step over gradient_accumulation_steps micro-batches, split over the processes
        t0 = time.time()
        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seeds = micro_batch_seeds(data_rng, cfg.gradient_accumulation_steps)
        loss_sum = torch.zeros((), device=device)
        for micro, s in enumerate(seeds[rank * accum_steps:(rank + 1) * accum_steps]):
            batch_rng = np.random.default_rng(s)
            x, y = train_data.get_batch(cfg.batch_size, cfg.block_size, batch_rng)
            if passkey_docs is not None:
                passkey_docs.mix_into(x, y, 1.0 if iter_num < cfg.passkey_warmup else cfg.passkey_frac, batch_rng)
            x, y = [(t.pin_memory() if device_type == "cuda" else t).to(device, non_blocking=True) for t in (x, y)]
            sync = world_size == 1 or micro == accum_steps - 1  # DDP averages gradients on the last one only
            with contextlib.nullcontext() if sync else model.no_sync():
                with ctx:
                    _, loss = model(x, y)
                    loss = loss / accum_steps
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if world_size > 1:
            dist.all_reduce(loss_sum)
        lossf = loss_sum.item() / world_size
        dt = time.time() - t0
        if not math.isfinite(lossf):
            raise SystemExit(f"iter {iter_num}: loss is {lossf}, training stopped (try a lower --learning_rate); "
                             f"{checkpoint_status(ckpt_path)}")
        losses.append(lossf)
        if master and iter_num % cfg.log_interval == 0:
            if peak and iter_num - start_iter >= 5:  # the first iterations compile; then smoothed, as nanoGPT
                mfu_now = flops_per_iter / dt / peak
                running_mfu = mfu_now if running_mfu is None else 0.9 * running_mfu + 0.1 * mfu_now
            mfu = f", mfu {running_mfu:.1%}" if running_mfu is not None else ""
            print(f"iter {iter_num}: loss {lossf:.4f}, {dt * 1000:.0f} ms, {tokens_per_iter / dt / 1000:.0f}k tok/s{mfu}")
            if cfg.wandb_log:
                wandb.log({"iter": iter_num, "train/loss": lossf, "lr": lr})
        iter_num += 1
    return losses


def model_config(cfg, vocab_size=1):
    """The GPTConfig the config asks for (a one-line exit for a bad field); vocab_size: the dataset's."""
    try:
        return GPTConfig(**{f.name: getattr(cfg, f.name) for f in MODEL_FIELDS}, vocab_size=vocab_size)
    except ValueError as e:
        raise SystemExit(str(e))


def check_config(cfg):
    """One-line exit for a value out of range (LIMITS) or not finite; returns cfg."""
    for key, value in vars(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise SystemExit(f"{key} must be a finite number, got {value}")
        if key in LIMITS and not LIMITS[key][1](value):
            raise SystemExit(f"{key} must be {LIMITS[key][0]}, got {value!r}")
    if not pretrained_source(cfg.init_from):  # a pretrained model's fields are checked with its own shape
        model_config(cfg)  # the model's fields, checked by GPTConfig
    if not cfg.init_from:
        raise SystemExit("init_from is empty: use scratch, resume, or another run's out_dir")
    if cfg.fourier_expand not in ("fresh", "zero"):
        raise SystemExit(f"fourier_expand must be 'fresh' or 'zero', got {cfg.fourier_expand!r}")
    if not cfg.out_dir:
        raise SystemExit("out_dir is empty: name the directory for the checkpoint")
    if starts_from_its_out_dir(cfg):
        raise SystemExit(f"init_from={cfg.init_from} is in out_dir {cfg.out_dir}: a run cannot start from the run it "
                         "would replace; pick another --out_dir (or --init_from=resume to continue it)")
    if cfg.decay_lr and cfg.min_lr > cfg.learning_rate:
        raise SystemExit(f"min_lr {cfg.min_lr} is above learning_rate {cfg.learning_rate}: the schedule decays from "
                         "learning_rate to min_lr, so lower --min_lr (or pass --decay_lr=False)")
    return cfg


def starts_from_its_out_dir(cfg):
    """Whether init_from is a run (its out_dir or a checkpoint file) in out_dir itself: the new run would start
    from the one it replaces (resume is how to continue a run)."""
    if cfg.init_from in ("scratch", "resume") or pretrained_source(cfg.init_from) or not os.path.isdir(cfg.out_dir):
        return False
    folder = os.path.dirname(checkpoint_file(cfg.init_from)) or "."
    return os.path.isdir(folder) and os.path.samefile(folder, cfg.out_dir)


def get_lr(it, cfg):
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it >= decay_iters:
        return cfg.min_lr
    progress = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def schedule_sha256(cfg):
    """sha256 of the learning rate at every iteration of the run (get_lr is pure: cheap)."""
    return hashlib.sha256(",".join(float(get_lr(it, cfg)).hex() for it in range(cfg.max_iters)).encode()).hexdigest()


def run_fingerprint(cfg, losses, val_loss0):
    """What a new run computes, for experiments/runner.py to tell whether today's code computes the same: the training
    losses of its first FINGERPRINT_ITERS iterations and its iter-0 val loss, as the run computed them, and the
    hash of its whole lr schedule. A resumed run keeps the fingerprint of its start."""
    return {"iters": FINGERPRINT_ITERS, "losses": losses[:FINGERPRINT_ITERS], "val_loss0": val_loss0,
            "lr_sha256": schedule_sha256(cfg)}


def pretrained_source(init_from):
    """Whether init_from names a pretrained model rather than a run (pretrained.py is loaded only to tell)."""
    if init_from in ("scratch", "resume") or os.path.isfile(checkpoint_file(init_from)):
        return False
    from pretrained import is_pretrained
    return is_pretrained(init_from)


def rng_states(data_rng, device_type):
    """Every random state a resume restores: the batch stream's, Python's and torch's."""
    return {"numpy": data_rng.bit_generator.state, "python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None}


def micro_batch_seeds(rng, n):
    """Every process draws the same n seeds per step (the global stream); micro-batch i of the step is
    drawn with seeds[i], so any split of the micro-batches over processes sees the same data."""
    return rng.integers(2**63, size=n)


@torch.no_grad()
def estimate_val_loss(model, val_data, cfg, ctx, device, rank, world_size):
    """Mean loss over the same eval_iters val batches every time, split over the DDP processes."""
    model.eval()
    seeds = micro_batch_seeds(np.random.default_rng(cfg.seed + 1), cfg.eval_iters)
    total = torch.zeros((), device=device)
    for s in seeds[rank::world_size]:
        x, y = val_data.get_batch(cfg.batch_size, cfg.block_size, np.random.default_rng(s))
        with ctx:
            _, loss = model(x.to(device), y.to(device))
        total += loss.float()
    if world_size > 1:
        dist.all_reduce(total)
    model.train()
    return total.item() / cfg.eval_iters


def load_data(cfg):
    """-> (train shards, val shards, passkey documents or None), checked now, not as an error at the first batch."""
    data_dir = os.path.join("data", cfg.dataset)
    try:
        train_data, val_data = TokenShards(data_dir, "train"), TokenShards(data_dir, "val")
    except ShardError as e:
        raise SystemExit(str(e))
    for data in (train_data, val_data):
        longest = max(h.num_tokens for h in data.headers)
        if longest <= cfg.block_size:
            raise SystemExit(f"no {data.split} shard of {data_dir} has block_size + 1 = {cfg.block_size + 1} tokens "
                             f"(longest: {longest}): use a smaller block_size")
    if not (cfg.passkey_frac or cfg.passkey_warmup):
        return train_data, val_data, None
    from data.tokenizer import get_tokenizer  # here: only runs with passkey documents spell them
    from passkey import PasskeyDocs
    try:
        passkey_docs = PasskeyDocs(get_tokenizer(train_data.meta))
    except ValueError as e:  # a char vocabulary without the passkey's characters
        raise SystemExit(f"{data_dir} cannot spell passkey documents ({e}): set passkey_frac=0 and passkey_warmup=0")
    if passkey_docs.min_length > cfg.block_size + 1:
        raise SystemExit(f"passkey documents need block_size >= {passkey_docs.min_length - 1}: raise block_size or set passkey_frac=0")
    return train_data, val_data, passkey_docs


def init_source(cfg, ckpt_path, meta, vocab_size, master):
    """What init_from starts from: gptconf, model_args, the pretrained model, the parent's or the resumed checkpoint
    (or None), lineage (the weights it started from), sources (the code versions that trained it, earliest first),
    fingerprint (a resumed run's: kept; None for a new run, whose first iterations make it)."""
    pretrained_model = parent = checkpoint = lineage = None
    past_configs = []  # a resume's: the config of each earlier stretch of the run
    if pretrained_source(cfg.init_from):  # the file's model with the config's pretrained.overridable() keys
        from pretrained import pretrained_overrides, training_start
        pretrained_model, lineage = training_start(cfg.init_from, meta, pretrained_overrides(cfg), cfg.seed)
    gptconf = pretrained_model.config if pretrained_model is not None else model_config(cfg, vocab_size)
    model_args, sources, fingerprint = dataclasses.asdict(gptconf), run_sources(), None
    if cfg.init_from not in ("scratch", "resume") and pretrained_model is None:
        parent, lineage = load_parent(cfg.init_from, meta)
    if cfg.init_from == "resume":
        checkpoint = load_checkpoint(ckpt_path, missing=missing_resume(cfg.out_dir), require=("optimizer", "rng"))
        check_val_settings(checkpoint, ckpt_path, cfg, master)
        past_configs = checkpoint.get("past_configs", [])
        if checkpoint["config"] != vars(cfg):  # the resume changed a setting: the earlier one is kept
            past_configs = [*past_configs, {"until_iter": checkpoint["iter_num"], "config": checkpoint["config"]}]
        if (checkpoint.get("parent") or {}).get("pretrained"):  # its shape is the pretrained file's, not the config's
            from pretrained import pretrained_overrides
            model_args = {**checkpoint["model_args"], **pretrained_overrides(SimpleNamespace(**model_args))}
        check_model_args(checkpoint, ckpt_path, model_args, may_differ=("dropout", "rotary_backend"))  # not the weights
        gptconf, lineage = GPTConfig.from_dict(model_args), checkpoint.get("parent")
        if checkpoint["iter_num"] >= cfg.max_iters:
            raise SystemExit(f"{ckpt_path} is already at iter {checkpoint['iter_num']} >= max_iters={cfg.max_iters}: "
                             "nothing to train; raise --max_iters (and --lr_decay_iters, to stretch the schedule) "
                             "to continue it")
        sources, fingerprint = run_sources(checkpoint, say=master), checkpoint.get("fingerprint")
    return SimpleNamespace(gptconf=gptconf, model_args=model_args, pretrained_model=pretrained_model, parent=parent,
                           checkpoint=checkpoint, lineage=lineage, sources=sources, past_configs=past_configs,
                           fingerprint=fingerprint)


def missing_resume(out_dir):
    """What a resume that finds no ckpt.pt in out_dir should do: with best.pt alone there, how to resume from it
    (a new run would be refused over it); with a run that --overwrite moved aside, how to get it back."""
    best, aside = os.path.join(out_dir, BEST), guard.aside_dir(out_dir)
    if os.path.isfile(best):
        return (f"{out_dir} holds only {existing_run(out_dir)}: to resume from it, cp {best} "
                f"{os.path.join(out_dir, 'ckpt.pt')} and run this again; or drop --init_from=resume and pass "
                "--overwrite=True to replace it with a new run")
    if os.path.isdir(aside):
        return (f"{aside} holds the run that --overwrite moved aside (the run meant to replace it was killed before "
                f"its first save): move its files back into {out_dir} to resume it")
    return "drop --init_from=resume or pick its --out_dir"


VAL_SETTINGS = ("seed", "batch_size", "eval_iters")  # what the val batches are (estimate_val_loss)


def check_val_settings(checkpoint, path, cfg, say=True):
    """A resume keeps the settings its val loss is measured with (VAL_SETTINGS), so that its later val losses and
    best.pt's choice compare the same batches: a one-line exit otherwise, unless new_val_batches, which it then
    says on stderr (if say)."""
    saved = checkpoint["config"]
    diff = [k for k in VAL_SETTINGS if k in saved and saved[k] != getattr(cfg, k)]
    if not diff:
        return
    then, now = (", ".join(f"{k}={v[k]}" for k in diff) for v in (saved, vars(cfg)))
    if not cfg.new_val_batches:
        raise SystemExit(f"{path} measured its val loss with {then}, this resume asks {now}: its val losses and "
                         f"best.pt's choice would compare other val batches; pass "
                         f"{' '.join(f'--{k}={saved[k]}' for k in diff)} to keep them, or --new_val_batches=True "
                         "if you mean it")
    if say:
        print(f"resuming with {now} (was {then}; new_val_batches=True): val losses from iter {checkpoint['iter_num']} "
              "on are measured on other val batches than before, best.pt's included", file=sys.stderr)


def build_model(cfg, start, device):
    """The model to train, on device: the pretrained one, or built from the seed (then given the parent's weights,
    which are freed). Every process builds the same, frozen FoPE coefficients included (a test checks it)."""
    parent, start.parent = start.parent, None
    torch.manual_seed(cfg.seed)
    try:
        model = start.pretrained_model if start.pretrained_model is not None else GPT(start.gptconf)
        if parent is not None:
            load_parent_weights(model, parent["model"], parent["model_args"], cfg.fourier_expand)
    except ValueError as e:  # what the config asks that the position module or the parent cannot give
        raise SystemExit(f"init_from={cfg.init_from}: {e}" if parent is not None else str(e))
    return model.to(device)


def resume_state(start, cfg, model, optimizer, scaler, data_rng, device, rank, world_size):
    """Load the resumed checkpoint's weights, optimizer, loss scale (float16's: an exact resume) and RNG states, and
    free it; -> (iter_num, best_val_loss, the val loss of the weights in best.pt): 0, inf, inf for a new run. Where
    a kill left ckpt.pt's record and best.pt apart, rank 0 makes them one again and says so (best_pair)."""
    checkpoint, start.checkpoint = start.checkpoint, None
    if checkpoint is None:
        return 0, float("inf"), float("inf")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint["rng"]
    data_rng.bit_generator.state = rng["numpy"]
    random.setstate(rng["python"])
    if world_size == 1:
        torch.set_rng_state(rng["torch"])
        if device.startswith("cuda") and rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"])
    else:  # only rank 0's state was saved: give every process a fresh dropout stream
        torch.manual_seed(cfg.seed + rank + world_size * checkpoint["iter_num"])
    best_val_loss, best_saved, note = best_pair(checkpoint, os.path.join(cfg.out_dir, "ckpt.pt"), repair=rank == 0)
    if note and rank == 0:
        print(note, file=sys.stderr)
    return checkpoint["iter_num"], best_val_loss, best_saved


def wrap_model(model, cfg, device, world_size):
    """-> (the model to train: compiled if asked, in DDP over several processes; the model to evaluate)."""
    model = torch.compile(model) if cfg.compile else model
    device_ids = [int(device.split(":")[1])] if device.startswith("cuda") else None
    return (DDP(model, device_ids=device_ids, **DDP_OPTIONS) if world_size > 1 else model), model




if __name__ == "__main__":
    guard.run_script(main)
