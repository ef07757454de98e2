"""train.py's loop is nanoGPT's loop: a tiny run through train.main gives, bit for bit, the losses, the val
loss and the weights of a plain loop written out below (same seed, same batches in the same order, AdamW,
warmup then cosine, gradient accumulation, clipping, dropout). A refactor of train.py that changes what it
computes, or the order in which it draws random numbers, fails here."""

import math
import re

import numpy as np
import torch

import train
from data.shards import TokenShards
from model import GPT, GPTConfig
from tinydata import write_random_chars

CHARS = "abcdefghijklmnop"
SEED, BATCH, BLOCK, ACCUM, MAX_ITERS, EVAL_ITERS = 1337, 4, 16, 2, 12, 3
LR, MIN_LR, WARMUP, DECAY_ITERS, BETAS, WEIGHT_DECAY, CLIP = 1e-2, 1e-3, 3, 10, (0.9, 0.99), 0.1, 0.05
MODEL = dict(n_layer=1, n_head=2, n_embd=32, block_size=BLOCK, dropout=0.1, pos_emb="fope", rotary_backend="eager")


def lr_at(it):
    """Linear warmup from LR / (WARMUP + 1), then a cosine from LR to MIN_LR at DECAY_ITERS."""
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it >= DECAY_ITERS:
        return MIN_LR
    return MIN_LR + 0.5 * (1 + math.cos(math.pi * (it - WARMUP) / (DECAY_ITERS - WARMUP))) * (LR - MIN_LR)


def plain_loop(data_dir):
    """nanoGPT's loop, written out: -> (training loss per iteration, final val loss, model, optimizer).
    The batch stream is train.py's: each step draws one seed per micro-batch from a generator seeded with
    SEED, and micro-batch i is drawn with its own generator seeded with seeds[i]."""
    train_data, val_data = TokenShards(data_dir, "train"), TokenShards(data_dir, "val")
    torch.manual_seed(SEED)
    model = GPT(GPTConfig(**MODEL, vocab_size=len(CHARS)))
    optimizer = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, "cpu")
    data_rng = np.random.default_rng(SEED)
    losses = []
    for it in range(MAX_ITERS):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it)
        loss_sum = torch.zeros(())
        for s in data_rng.integers(2**63, size=ACCUM):
            x, y = train_data.get_batch(BATCH, BLOCK, np.random.default_rng(s))
            _, loss = model(x, y)
            loss = loss / ACCUM
            loss.backward()
            loss_sum += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss_sum.item())
    model.eval()  # the val loss: the same EVAL_ITERS batches every evaluation
    total = torch.zeros(())
    with torch.no_grad():
        for s in np.random.default_rng(SEED + 1).integers(2**63, size=EVAL_ITERS):
            x, y = val_data.get_batch(BATCH, BLOCK, np.random.default_rng(s))
            total += model(x, y)[1].float()
    return losses, total.item() / EVAL_ITERS, model, optimizer


def test_train_py_gives_the_losses_and_weights_of_a_plain_nanogpt_loop_bit_for_bit(tmp_path, capsys):
    data_dir = write_random_chars(tmp_path / "data", CHARS, 8000, 2000)
    settings = dict(dataset=data_dir, out_dir=tmp_path / "out", seed=SEED, batch_size=BATCH, max_iters=MAX_ITERS,
                    gradient_accumulation_steps=ACCUM, eval_interval=5, eval_iters=EVAL_ITERS, log_interval=2,
                    learning_rate=LR, min_lr=MIN_LR, warmup_iters=WARMUP, lr_decay_iters=DECAY_ITERS,
                    beta1=BETAS[0], beta2=BETAS[1], weight_decay=WEIGHT_DECAY, grad_clip=CLIP, device="cpu",
                    dtype="float32", **MODEL)
    losses = train.main([f"--{k}={v}" for k, v in settings.items()])
    log = capsys.readouterr().out
    expected, val_loss, model, optimizer = plain_loop(data_dir)

    assert losses == expected  # floats, compared exactly
    assert len(set(losses)) == MAX_ITERS  # a run that trains, not a constant
    checkpoint = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    assert checkpoint["iter_num"] == MAX_ITERS and checkpoint["val_loss"] == val_loss
    for name, value in model.state_dict().items():
        assert torch.equal(checkpoint["model"][name], value), name
    for saved, ours in zip(checkpoint["optimizer"]["state"].values(), optimizer.state_dict()["state"].values()):
        assert all(torch.equal(saved[k], ours[k]) for k in ("exp_avg", "exp_avg_sq"))
    # nanoGPT's log: a val line at every eval_interval and at the end, a loss line at every log_interval
    lines = re.findall(r"^iter (\d+): (val loss|loss) ([\d.]+)", log, re.M)
    assert [(int(i), kind) for i, kind, _ in lines] == [
        (0, "val loss"), (0, "loss"), (2, "loss"), (4, "loss"), (5, "val loss"), (6, "loss"), (8, "loss"),
        (10, "val loss"), (10, "loss"), (12, "val loss")]
    assert [float(v) for i, kind, v in lines if kind == "loss"] == [round(expected[int(i)], 4)
                                                                     for i, kind, _ in lines if kind == "loss"]
