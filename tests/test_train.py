"""train.py, sample.py, configurator.py and config/: resuming, DDP, checkpoints, and their one-line errors.

Tiny models on a tiny generated dataset (data.shards.write_shard); scripts run in a subprocess only
where that is the honest test (torchrun, SIGINT, the exit of a missing dataset).
"""

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import sample
import train
from configurator import configure
from checkpoint import CheckpointError, file_sha256
from data.shards import TokenShards, write_shard
from model import GPT, POS_EMBS, GPTConfig

ROOT = Path(__file__).resolve().parent.parent
CHARS = "abcdefghijklmnop"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A 16-token 'language' (a repeating alphabet with 10% noise), two train shards and one val shard."""
    data_dir = tmp_path_factory.mktemp("data") / "tiny"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    tokens = np.tile(np.arange(len(CHARS)), 3000)
    tokens = np.where(rng.random(tokens.size) < 0.1, rng.integers(0, len(CHARS), tokens.size), tokens)
    write_shard(data_dir / "train_000000.bin", tokens[:30000], len(CHARS))
    write_shard(data_dir / "train_000001.bin", tokens[30000:42000], len(CHARS))
    write_shard(data_dir / "val_000000.bin", tokens[42000:], len(CHARS))
    (data_dir / "meta.json").write_text(json.dumps({"tokenizer": "char", "vocab_size": len(CHARS), "chars": CHARS}))
    return data_dir


def tiny_args(data_dir, out_dir, **overrides):
    """A model of a few thousand parameters; the dataset as an absolute path (os.path.join keeps it)."""
    args = dict(dataset=data_dir, out_dir=out_dir, n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4,
                eval_interval=4, eval_iters=2, log_interval=1, warmup_iters=2, rotary_backend="eager")
    args.update(overrides)
    return [f"--{k}={v}" for k, v in args.items()]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def run_script(args, cwd, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          **kwargs)


def assert_one_line(message):
    assert message and "\n" not in message.strip() and "Traceback" not in message, message


# -----------------------------------------------------------------------------
# resuming and distributed training reproduce the uninterrupted single-process run


def test_resume_continues_exactly_as_an_uninterrupted_run(tiny_data, tmp_path):
    # dropout on: the torch RNG state must travel through the checkpoint too
    common = dict(dropout=0.1, lr_decay_iters=10)
    full = train.main(tiny_args(tiny_data, tmp_path / "full", max_iters=10, **common))
    first = train.main(tiny_args(tiny_data, tmp_path / "split", max_iters=5, **common))
    assert load(tmp_path / "split" / "ckpt.pt")["iter_num"] == 5
    second = train.main(tiny_args(tiny_data, tmp_path / "split", max_iters=10, init_from="resume", **common))
    assert len(first) == len(second) == 5
    np.testing.assert_allclose(first + second, full, rtol=1e-6)
    a, b = load(tmp_path / "full" / "ckpt.pt"), load(tmp_path / "split" / "ckpt.pt")
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value)
    assert a["iter_num"] == b["iter_num"] == 10


# train.py under torchrun, with DDP wrapped to save the model each process built before DDP's first
# broadcast from rank 0 could make them agree
DDP_PROBE = """
import sys
import torch
import torch.distributed as dist
import guard
import train

real_ddp = train.DDP


def ddp_saving_the_model_as_built(module, **kwargs):
    torch.save(module.state_dict(), f"{sys.argv[1]}/built_by_rank{dist.get_rank()}.pt")
    return real_ddp(module, **kwargs)


train.DDP = ddp_saving_the_model_as_built
train.main(sys.argv[2:])
guard.end_now(0)  # as train.py's __main__ ends under torchrun: without finalizing the interpreter
"""


class TorchrunResult:
    """A finished torchrun launch and each rank's own stdout and stderr (torchrun --redirects)."""

    def __init__(self, returncode, launcher_stderr, log_dir, nproc):
        self.returncode, self.launcher_stderr = returncode, launcher_stderr
        self.stdout, self.stderr = {}, {}
        for rank in range(nproc):
            for stream, logs in (("stdout", self.stdout), ("stderr", self.stderr)):
                found = sorted(Path(log_dir).glob(f"*/attempt_*/{rank}/{stream}.log"))
                logs[rank] = found[-1].read_text() if found else f"(no {stream}.log under {log_dir})"

    def report(self):
        """What to read when a launch failed: every rank's stderr, then the launcher's summary."""
        parts = [f"torchrun exited {self.returncode}"]
        parts += [f"--- rank {rank} stderr ---\n{text[-3000:]}" for rank, text in self.stderr.items()]
        parts.append(f"--- launcher stderr ---\n{self.launcher_stderr[-1500:]}")
        return "\n".join(parts)


def torchrun(script, args, cwd, nproc=2, timeout=600):
    """Launch script on nproc local processes; each rank's output goes to its own files in cwd/logs."""
    log_dir = Path(cwd) / "logs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               f"--log-dir={log_dir}", "--redirects=3", str(script), *args]
    proc = subprocess.Popen(command, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, stderr = proc.communicate(timeout=timeout)  # a guard against a hang, far above a normal run
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun ends its ranks (each in its own session) on SIGTERM
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        stderr += f"\n(stopped after {timeout} s)"
    return TorchrunResult(proc.returncode, stderr, log_dir, nproc)


@pytest.fixture(scope="module")
def ddp_run(tiny_data, tmp_path_factory):
    """Two DDP processes, 2 micro-batches per step (one each), FoPE with frozen coefficients."""
    run_dir = tmp_path_factory.mktemp("ddp")
    probe = run_dir / "ddp_probe.py"
    probe.write_text(DDP_PROBE)
    args = tiny_args(tiny_data, run_dir / "out", gradient_accumulation_steps=2, max_iters=3, pos_emb="fope")
    result = torchrun(probe, [str(run_dir), *args], cwd=run_dir)
    result.dir = run_dir
    return result


def test_two_ddp_processes_match_one_process_accumulating_the_same_micro_batches(ddp_run, tiny_data, tmp_path):
    assert ddp_run.returncode == 0, ddp_run.report()
    single = train.main(tiny_args(tiny_data, tmp_path / "single", gradient_accumulation_steps=2, max_iters=3,
                                  pos_emb="fope"))
    logged = [float(v) for v in re.findall(r"^iter \d+: loss ([\d.]+),", ddp_run.stdout[0], re.M)]
    np.testing.assert_allclose(logged, single, atol=1e-4)  # the log prints 4 decimals
    ddp, one = load(ddp_run.dir / "out" / "ckpt.pt"), load(tmp_path / "single" / "ckpt.pt")
    assert ddp["iter_num"] == one["iter_num"] == 3
    for name, value in one["model"].items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-5, atol=1e-6)


def test_every_ddp_process_builds_the_same_model_frozen_fope_coefficients_included(ddp_run):
    assert ddp_run.returncode == 0, ddp_run.report()
    rank0, rank1 = (load(ddp_run.dir / f"built_by_rank{rank}.pt") for rank in (0, 1))
    assert rank0.keys() == rank1.keys()
    assert any(name.endswith("rotary.sin_coef") for name in rank0)  # frozen: a buffer, never trained
    differ = [name for name, value in rank0.items() if not torch.equal(value, rank1[name])]
    assert not differ, f"built differently on rank 0 and rank 1: {differ}"


def test_failed_ddp_launch_shows_each_rank_own_error(tmp_path):
    script = tmp_path / "fail_on_rank1.py"
    script.write_text("import os, sys\n"
                      "print(f'rank {os.environ[\"RANK\"]} here', file=sys.stderr)\n"
                      "if os.environ['RANK'] == '1':\n"
                      "    raise SystemExit('rank 1 gave up: its own message')\n")
    result = torchrun(script, [], cwd=tmp_path)
    assert result.returncode != 0
    report = result.report()
    assert "rank 0 here" in result.stderr[0] and "rank 1 here" in result.stderr[1]
    assert "rank 1 gave up: its own message" in result.stderr[1] and "rank 1 gave up" in report


@pytest.fixture
def single_process_group():
    """A gloo process group of one process: enough for DDP to wrap a model and run its buffer sync."""
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def buffers_ddp_broadcasts_per_forward(model, lengths):
    """For each length T, {name: bytes} of the tensors DDP sends from rank 0 at the start of a training
    forward of T tokens."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    ddp = DDP(model, **train.DDP_OPTIONS)
    sent = []
    ddp._distributed_broadcast_coalesced = lambda tensors, *args, **kwargs: sent.append(list(tensors))
    names = {}
    for T in lengths:
        idx = torch.zeros(2, T, dtype=torch.long)
        ddp(idx, idx)
        names.update({buffer.data_ptr(): name for name, buffer in model.named_buffers()})
    return [{names[t.data_ptr()]: t.numel() * t.element_size() for t in tensors} for tensors in sent]


@pytest.mark.parametrize("pos_emb", ["rope", "fope", "alibi", "sinusoidal"])
def test_ddp_resends_no_buffer_at_any_forward_since_every_process_computes_the_same(single_process_group, pos_emb):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=16, n_layer=2, n_head=2, n_embd=32, pos_emb=pos_emb,
                          rotary_backend="eager", vocab_multiple=64))
    assert any(True for _ in model.buffers())  # tables, slopes, the padded vocabulary's mask: buffers, kept local
    # the second forward runs past block_size: the rotary tables grow (x4); nothing is sent either time
    assert buffers_ddp_broadcasts_per_forward(model, (16, 64)) == []
    torch.manual_seed(0)  # another process builds its model from the same seed (train.py): the same buffers
    other = GPT(GPTConfig(**dataclasses.asdict(model.config)))
    for (name, a), (_, b) in zip(model.named_buffers(), other.named_buffers()):
        if a.shape == b.shape:  # (the first model's tables grew for the longer forward)
            assert torch.equal(a, b), name


# -----------------------------------------------------------------------------
# checkpoints survive interruptions


def test_interrupted_checkpoint_write_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    train.save_checkpoint({"iter_num": 1, "weight": torch.ones(1000)}, path)
    real_save = torch.save

    def save_half_then_fail(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(CheckpointError) as failed:  # one line, not the OSError's traceback
        train.save_checkpoint({"iter_num": 2, "weight": torch.zeros(1000)}, path)
    assert_one_line(str(failed.value))
    assert "could not write" in str(failed.value) and "previous checkpoint is kept" in str(failed.value)
    assert load(path)["iter_num"] == 1
    assert torch.equal(load(path)["weight"], torch.ones(1000))
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind


def test_ctrl_c_exits_cleanly_and_leaves_a_loadable_checkpoint(tiny_data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = tiny_args(tiny_data, tmp_path / "out", max_iters=100_000, eval_interval=3)
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "out" / "ckpt.pt"
    deadline = time.time() + 60
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)  # interrupt mid-training, possibly mid-write of the next checkpoint
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert_one_line(stderr)
    assert f"last checkpoint: {ckpt.relative_to(tmp_path)}" in stderr or f"last checkpoint: {ckpt}" in stderr
    assert load(ckpt)["iter_num"] % 3 == 0 and load(ckpt)["iter_num"] > 0


HANG_AFTER_INTERRUPT = """
import sys, time
import guard
guard.watch_interrupts(grace=2)
try:
    print("ready", flush=True)  # inside the try: the signal may come before the next line starts
    time.sleep(60)
except KeyboardInterrupt:
    while True:  # whatever hangs after the interrupt, holding the GIL: the watchdog must still end the process
        pass
"""


def test_a_run_that_hangs_after_ctrl_c_still_ends_within_the_grace_and_says_where(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HANG_AFTER_INTERRUPT], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)  # ends about 2 s after the interrupt, busy loop or not
    assert proc.returncode != 0
    assert "Timeout" in stderr and "File" in stderr  # faulthandler's dump: where each thread was


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    real_forward = train.GPT.forward
    steps = []

    def forward_that_diverges_at_iter_5(self, idx, targets=None, reduction="mean"):
        logits, loss = real_forward(self, idx, targets, reduction)
        if self.training:
            steps.append(1)
            if len(steps) > 5:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(train.GPT, "forward", forward_that_diverges_at_iter_5)
    with pytest.raises(SystemExit) as stop:
        train.main(tiny_args(tiny_data, tmp_path / "out", max_iters=20))
    message = str(stop.value.code)  # a string code: the interpreter prints it and exits with status 1
    assert_one_line(message)
    assert message.startswith("iter 5: loss is nan")
    checkpoint = load(tmp_path / "out" / "ckpt.pt")
    assert checkpoint["iter_num"] == 4
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())


# -----------------------------------------------------------------------------
# user mistakes get one line that says what to do


def test_missing_dataset_prints_the_prepare_command_and_exits_1(tmp_path):
    result = run_script([str(ROOT / "train.py"), "--dataset=shakespeare/char"], cwd=tmp_path)
    assert result.returncode == 1
    assert_one_line(result.stderr)
    assert "no data at data/shakespeare/char: run python" in result.stderr


def test_resuming_another_model_names_the_difference(tiny_data, tmp_path):
    train.main(tiny_args(tiny_data, tmp_path, max_iters=1, pos_emb="rope"))
    with pytest.raises(SystemExit) as stop:
        train.main(tiny_args(tiny_data, tmp_path, max_iters=2, pos_emb="fope", n_layer=2, init_from="resume"))
    message = str(stop.value.code)
    assert_one_line(message)
    assert "(n_layer=1, pos_emb=rope)" in message and "(n_layer=2, pos_emb=fope)" in message
    assert message.endswith("use a new out_dir or matching --n_layer=1 --pos_emb=rope")


def test_unknown_config_key_suggests_the_closest_names(tmp_path):
    with pytest.raises(SystemExit) as stop:
        configure(train.DEFAULTS, ["--lerning_rate=1e-3"])
    assert_one_line(str(stop.value.code))
    assert "unknown config key 'lerning_rate'" in str(stop.value.code) and "learning_rate" in str(stop.value.code)
    config_file = tmp_path / "typo.py"
    config_file.write_text("import math\nn_layers = 6\n")
    with pytest.raises(SystemExit) as stop:
        configure(train.DEFAULTS, [str(config_file)])
    assert "n_layers" in str(stop.value.code) and "n_layer" in str(stop.value.code)


@pytest.mark.parametrize("arg, expected", [("--batch_size=abc", "batch_size must be int"),
                                           ("--max_iters=1.5", "max_iters must be int"),
                                           ("--compile=maybe", "compile must be bool"),
                                           ("--pos_emb", "--key=value")])
def test_value_of_the_wrong_type_is_refused(arg, expected):
    with pytest.raises(SystemExit) as stop:
        configure(train.DEFAULTS, [arg])
    assert_one_line(str(stop.value.code))
    assert expected in str(stop.value.code)


def test_overrides_are_parsed_to_the_default_type(tmp_path):
    config_file = tmp_path / "run.py"
    config_file.write_text("pos_emb = 'rope'\nbatch_size = 8\n")
    config = configure(train.DEFAULTS, [str(config_file), "--batch_size=16", "--learning_rate=3", "--compile=true",
                                        "--rope_scaling={'type': 'ntk', 'factor': 4.0}", "--out_dir=out/1e3"])
    assert config["pos_emb"] == "rope" and config["batch_size"] == 16 and config["compile"] is True
    assert config["learning_rate"] == 3.0 and isinstance(config["learning_rate"], float)
    assert config["rope_scaling"] == {"type": "ntk", "factor": 4.0} and config["out_dir"] == "out/1e3"
    assert train.DEFAULTS["batch_size"] == 32  # the defaults themselves are untouched


# -----------------------------------------------------------------------------
# configs and sampling


def test_every_model_field_is_a_train_config_key():
    names = {f.name for f in dataclasses.fields(GPTConfig)} - {"vocab_size"}
    assert names <= set(train.DEFAULTS)


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.py")), ids=lambda p: p.name)
def test_config_file_applies_and_builds_a_valid_model(path):
    config = configure(train.DEFAULTS, [str(path)])
    GPTConfig(**{f.name: config[f.name] for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"})
    assert config["out_dir"] == f"out/{path.stem}" and config["wandb_run_name"] == path.stem
    stated = re.search(r"tokens/iter = .* = ([\d,]+)", path.read_text())  # the comment's arithmetic is right
    if stated:
        tokens = config["batch_size"] * config["block_size"] * config["gradient_accumulation_steps"]
        assert int(stated.group(1).replace(",", "")) == tokens




def test_sample_continues_the_prompt_with_the_checkpoint_tokenizer(tiny_data, tmp_path, capsys):
    train.main(tiny_args(tiny_data, tmp_path, max_iters=4, learning_rate=1e-2))
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("abcd")
    samples = sample.main([f"--out_dir={tmp_path}", f"--start=FILE:{prompt}", "--num_samples=2",
                           "--max_new_tokens=12", "--temperature=0.5"])
    assert len(samples) == 2
    for text in samples:
        assert text.startswith("abcd") and len(text) == 16 and set(text) <= set(CHARS)
    assert samples[0] in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        sample.main([f"--out_dir={tmp_path}", "--start=xyz"])
    assert "not in this dataset's char vocabulary" in str(stop.value.code)


def test_sample_without_a_checkpoint_says_how_to_train_one(tmp_path):
    with pytest.raises(SystemExit) as stop:
        sample.main([f"--out_dir={tmp_path / 'nothing'}"])
    assert_one_line(str(stop.value.code))
    assert "no checkpoint at" in str(stop.value.code) and "python train.py --out_dir=" in str(stop.value.code)


# -----------------------------------------------------------------------------
# the learning-rate schedule and a float16 resume


def test_get_lr_warms_up_linearly_then_decays_on_a_cosine_to_min_lr():
    cfg = SimpleNamespace(decay_lr=True, learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110,
                          max_iters=500)
    # warmup: lr * (it + 1) / (warmup + 1); then min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2
    expected = {0: 1 / 11, 4: 5 / 11, 9: 10 / 11, 10: 1.0, 35: 0.868198052, 60: 0.55, 85: 0.231801948,
                110: 0.1, 400: 0.1}
    assert {it: round(train.get_lr(it, cfg), 9) for it in expected} == {it: round(v, 9) for it, v in expected.items()}
    cfg.lr_decay_iters = None  # decays over max_iters instead: halfway between 10 and 500 at 255
    assert train.get_lr(255, cfg) == pytest.approx(0.55) and train.get_lr(500, cfg) == 0.1
    cfg.decay_lr = False
    assert {train.get_lr(it, cfg) for it in (0, 9, 60, 400)} == {1.0}


class OverflowAtFullScale(torch.autograd.Function):
    """The identity on the loss, whose gradient overflows (inf) while the loss scale is 2**16 or more: a
    model whose float16 gradients fit only below GradScaler's initial scale. Its backward receives the
    scale itself (d(scale * loss)/d loss)."""

    @staticmethod
    def forward(ctx, loss):
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf") if grad.abs().item() >= 2**16 else grad


def test_float16_resume_keeps_the_loss_scale_and_continues_exactly(tiny_data, tmp_path, monkeypatch):
    real_forward = train.GPT.forward

    def forward_overflowing_at_full_scale(self, idx, targets=None, reduction="mean"):
        logits, loss = real_forward(self, idx, targets, reduction)
        return logits, OverflowAtFullScale.apply(loss) if self.training else loss

    monkeypatch.setattr(train.GPT, "forward", forward_overflowing_at_full_scale)
    common = dict(dtype="float16", lr_decay_iters=10)  # on CPU, with tiny_args' eager rotation
    full = train.main(tiny_args(tiny_data, tmp_path / "full", max_iters=10, **common))
    first = train.main(tiny_args(tiny_data, tmp_path / "split", max_iters=5, **common))
    assert load(tmp_path / "split" / "ckpt.pt")["scaler"]["scale"] == 2.0**15  # iter 0 overflowed and backed off
    second = train.main(tiny_args(tiny_data, tmp_path / "split", max_iters=10, init_from="resume", **common))
    assert first + second == full  # a fresh scaler would skip iter 5 again
    a, b = load(tmp_path / "full" / "ckpt.pt"), load(tmp_path / "split" / "ckpt.pt")
    assert a["scaler"] == b["scaler"]
    for name, value in a["model"].items():
        assert torch.equal(b["model"][name], value), name


# -----------------------------------------------------------------------------
# every bad input: one line, a non-zero exit, and nothing made


def assert_refused(argv, message, out_dir):
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    assert_one_line(str(stop.value.code))
    assert str(stop.value.code) == message
    assert not os.path.exists(out_dir)


@pytest.mark.parametrize("override, message", [
    ("block_size=0", "block_size must be >= 1, got 0"),
    ("learning_rate=-1", "learning_rate must be > 0, got -1.0"),
    ("learning_rate=1e999", "learning_rate must be a finite number, got inf"),
    ("batch_size=0", "batch_size must be >= 1, got 0"),
    ("eval_iters=0", "eval_iters must be >= 1, got 0"),
    ("eval_interval=0", "eval_interval must be >= 1, got 0"),
    ("log_interval=0", "log_interval must be >= 1, got 0"),
    ("gradient_accumulation_steps=0", "gradient_accumulation_steps must be >= 1, got 0"),
    ("fope_sigma=-1", "fope_sigma (the xavier gain of FoPE's coefficients) must be >= 0, got -1.0"),
    ("fope_dim=3", "fope_dim (FoPE's basis: frequencies theta^(-2m/fope_dim)) must be an even number >= head_dim 16, "
                   "or None for head_dim; got 3"),
    ("dropout=1.0", "dropout must be in [0, 1), got 1.0"),
    ("beta2=1.5", "beta2 must be in [0, 1), got 1.5"),
    ("min_lr=-0.1", "min_lr must be >= 0, got -0.1"),
    ("seed=-3", "seed must be >= 0, got -3"),
    ("passkey_frac=2", "passkey_frac must be in [0, 1], got 2.0"),
    ("n_head=0", "n_head must be >= 1, got 0"),
    ("n_embd=30", "a rotary embedding rotates pairs of dimensions: head_dim (n_embd / n_head) must be even, got 15"),
    ("n_embd=33", "n_embd (33) must be divisible by n_head (2)"),
    ("rotary_backend=fast", "rotary_backend must be one of auto, eager, c, compile, got 'fast'"),
    ("pos_emb=xpos", f"pos_emb must be one of {', '.join(POS_EMBS)}, got 'xpos'"),  # the registry's names
    ("init_from=gpt2", "no checkpoint at gpt2: pass init_from=scratch, resume, or the out_dir of a finished run"),
    ("fourier_expand=random", "fourier_expand must be 'fresh' or 'zero', got 'random'"),
    ("lr_decay_iters=0", "lr_decay_iters must be None or >= 1, got 0"),
])
def test_config_value_out_of_range_is_one_line(tiny_data, tmp_path, override, message):
    key, value = override.split("=")
    assert_refused(tiny_args(tiny_data, tmp_path / "out", **{key: value}), message, tmp_path / "out")


@pytest.mark.parametrize("override, message", [
    ("fope_dim=abc", "--fope_dim=abc: fope_dim must be None or int, got str 'abc'"),
    ("rope_scaling=yarn", "--rope_scaling=yarn: rope_scaling must be None or dict, got str 'yarn'"),
    ("lr_decay_iters=2.5", "--lr_decay_iters=2.5: lr_decay_iters must be None or int, got float 2.5"),
    ("learning_rate=fast", "--learning_rate=fast: learning_rate must be float like its default 0.001, got str 'fast'"),
])
def test_config_value_of_the_wrong_type_is_one_line_even_where_the_default_is_none(tiny_data, tmp_path, override,
                                                                                   message):
    key, value = override.split("=")
    assert_refused(tiny_args(tiny_data, tmp_path / "out", **{key: value}), message, tmp_path / "out")


def test_bad_files_are_one_line(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    broken = tmp_path / "broken.py"
    broken.write_text("n_layer = 2\nbatch_size = 16 *\n")
    assert_refused([str(broken), *tiny_args(tiny_data, out)],
                   f"config file {broken}, line 2: SyntaxError: invalid syntax", out)
    failing = tmp_path / "failing.py"
    failing.write_text("n_layer = 2\nn_embd = n_layer * width\n")
    assert_refused([str(failing), *tiny_args(tiny_data, out)],
                   f"config file {failing}, line 2: NameError: name 'width' is not defined", out)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert_refused(tiny_args(tiny_data, a_file / "out"),
                   f"cannot make out_dir {a_file / 'out'} (Not a directory): pick another --out_dir", a_file / "out")
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    assert_refused(tiny_args(tiny_data, out, wandb_log=True),
                   "wandb_log=True needs wandb: pip install wandb, or drop --wandb_log", out)


def test_resuming_from_a_truncated_checkpoint_is_one_line_and_keeps_the_file(tiny_data, tmp_path):
    train.main(tiny_args(tiny_data, tmp_path, max_iters=4))
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    kept = ckpt.read_bytes()
    with pytest.raises(SystemExit) as stop:
        train.main(tiny_args(tiny_data, tmp_path, max_iters=8, init_from="resume"))
    assert str(stop.value.code).startswith(f"{ckpt} is not a readable checkpoint (PytorchStreamReader failed")
    assert_one_line(str(stop.value.code))
    assert ckpt.read_bytes() == kept


def test_data_too_short_for_block_size_or_unable_to_spell_passkeys_is_one_line(tiny_data, tmp_path):
    out = tmp_path / "out"
    assert_refused(tiny_args(tiny_data, out, block_size=7000),
                   f"no val shard of {tiny_data} has block_size + 1 = 7001 tokens (longest: 6000): use a smaller "
                   "block_size", out)
    assert_refused(tiny_args(tiny_data, out, passkey_frac=0.5),
                   f"{tiny_data} cannot spell passkey documents (character 'T' is not in this dataset's char "
                   "vocabulary): set passkey_frac=0 and passkey_warmup=0", out)


def test_devices_and_dtypes_this_machine_cannot_run_are_one_line(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    out = tmp_path / "out"
    assert_refused(tiny_args(tiny_data, out, device="cuda"),
                   f"device cuda: this torch ({torch.__version__}) sees no CUDA GPU; use --device=cpu (or auto)", out)
    assert_refused(tiny_args(tiny_data, out, device="gpu"), "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'",
                   out)
    assert_refused(tiny_args(tiny_data, out, dtype="float64"),
                   "dtype must be auto or one of float32, bfloat16, float16, got 'float64'", out)
    # the C kernel takes float32 and bfloat16: float16 on CPU is refused where the rotation would go through it
    assert_refused(tiny_args(tiny_data, out, dtype="float16", device="cpu", rotary_backend="auto"),
                   "dtype float16 on CPU: the C rotation kernel (rotary_backend=auto) takes float32 and bfloat16; "
                   "use --dtype=bfloat16 (CPU autocast's type) or float32", out)
    losses = train.main(tiny_args(tiny_data, out, dtype="bfloat16", device="cpu", rotary_backend="auto", max_iters=2))
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)  # what the message says to use works
    # a config that needs a GPU (the owt configs) refuses a machine without one, and says how to force it
    assert_refused(tiny_args(tiny_data, tmp_path / "gpu", require_gpu=True),
                   f"this config needs a CUDA GPU and found none (device cpu, torch {torch.__version__}); "
                   "--require_gpu=False trains on the CPU anyway", tmp_path / "gpu")


def test_the_log_line_gives_mfu_against_the_peak_it_is_told_from_the_fifth_iteration_on_smoothed(tiny_data, tmp_path,
                                                                                                  capsys):
    train.main(tiny_args(tiny_data, tmp_path / "out", max_iters=8, device="cpu", peak_flops=1e9))
    lines = {int(l.split(":")[0][5:]): l for l in capsys.readouterr().out.splitlines() if "ms," in l}
    assert all("mfu" not in lines[i] for i in range(5)), lines  # the first iterations include compiling
    mfu = [float(re.search(r", mfu (\d+\.\d)%$", lines[i])[1]) for i in range(5, 8)]
    times = [float(re.search(r", (\d+) ms", lines[i])[1]) for i in range(5, 8)]
    assert mfu[0] > 0 and len(times) == 3  # iteration 5's own, then 0.9 of the running value + 0.1 of each new one


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12), ("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12),
    ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12), ("NVIDIA A10G", 125e12), ("NVIDIA GeForce RTX 4090", None),
])
def test_the_mfu_peak_is_the_data_sheet_figure_of_the_exact_device_name(name, peak):
    from configurator import peak_flops_of
    assert peak_flops_of(name) == peak  # an L40S is not an L4, an H100 PCIe or NVL not the SXM part


@pytest.mark.parametrize("override, message", [
    ("max_new_tokens=-5", "max_new_tokens must be >= 1, got -5"),
    ("num_samples=0", "num_samples must be >= 1, got 0"),
    ("temperature=-1", "temperature must be >= 0 (0: greedy), got -1.0"),
    ("top_k=0", "top_k must be None or >= 1, got 0"),
    ("top_k=many", "--top_k=many: top_k must be None or int, got str 'many'"),
    ("device=cuda", "device cuda: this torch ({torch}) sees no CUDA GPU; use --device=cpu (or auto)"),
])
def test_sample_refuses_bad_settings_in_one_line(tiny_data, tmp_path_factory, monkeypatch, capsys, override, message):
    out_dir = tmp_path_factory.getbasetemp() / "sample_run"
    if not (out_dir / "ckpt.pt").exists():  # one run for every case
        train.main(tiny_args(tiny_data, out_dir, max_iters=1))
    capsys.readouterr()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        sample.main([f"--out_dir={out_dir}", "--start=abc", f"--{override}"])
    assert str(stop.value.code) == message.format(torch=torch.__version__)
    assert capsys.readouterr().out == ""  # nothing sampled, nothing printed


# -----------------------------------------------------------------------------
# starting a run from another run's weights (init_from=<run>: context extension by continued training)


def test_a_continued_run_with_nothing_changed_starts_at_the_parent_loss(tiny_data, tmp_path):
    train.main(tiny_args(tiny_data, tmp_path / "parent", max_iters=6, pos_emb="fope"))
    child = train.main(tiny_args(tiny_data, tmp_path / "child", max_iters=1, pos_emb="fope",
                                 init_from=str(tmp_path / "parent"), seed=7))
    # the child's first loss is the parent's weights on the child's first batch (seed 7)
    parent = load(tmp_path / "parent" / "ckpt.pt")
    model = GPT(GPTConfig(**parent["model_args"]))
    model.load_state_dict(parent["model"])
    seed = train.micro_batch_seeds(np.random.default_rng(7), 1)[0]
    x, y = TokenShards(str(tiny_data), "train").get_batch(4, 16, np.random.default_rng(seed))
    with torch.no_grad():
        _, loss = model(x, y)
    assert child[0] == pytest.approx(loss.item(), rel=1e-6)
    saved = load(tmp_path / "child" / "ckpt.pt")
    assert saved["parent"]["init_from"] == str(tmp_path / "parent") and saved["parent"]["iter_num"] == 6
    assert saved["parent"]["sha256"] == file_sha256(tmp_path / "parent")
    assert saved["optimizer"]["state"] and saved["iter_num"] == 1  # its own optimizer, its own schedule


def test_a_continued_run_may_change_length_and_position_embedding_and_resume_keeps_its_parent(tiny_data, tmp_path):
    train.main(tiny_args(tiny_data, tmp_path / "rope", max_iters=4, pos_emb="rope"))
    yarn = "{'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 16, 'attention_factor': 1.0}"
    losses = train.main(tiny_args(tiny_data, tmp_path / "fope32", max_iters=4, pos_emb="fope", block_size=32,
                                  rope_scaling=yarn, init_from=str(tmp_path / "rope")))
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    child = load(tmp_path / "fope32" / "ckpt.pt")
    rope = load(tmp_path / "rope" / "ckpt.pt")
    assert child["model_args"]["block_size"] == 32 and child["model_args"]["rope_scaling"]["rope_type"] == "yarn"
    assert child["parent"]["model_args"]["pos_emb"] == "rope"
    train.main(tiny_args(tiny_data, tmp_path / "fope32", max_iters=6, pos_emb="fope", block_size=32,
                         rope_scaling=yarn, init_from="resume"))
    assert load(tmp_path / "fope32" / "ckpt.pt")["parent"] == child["parent"]
    assert "transformer.h.0.attn.rotary.sin_coef" not in rope["model"]


def test_a_parent_that_cannot_be_carried_over_is_one_line(tiny_data, tmp_path):
    parent = tmp_path / "learned"
    train.main(tiny_args(tiny_data, parent, max_iters=2, pos_emb="learned"))
    for change, message in [(dict(pos_emb="learned", block_size=32), "learned positions cannot be carried to another "
                             "block_size or position embedding (parent: learned at 16); pick "
                             + ", ".join(n for n, s in POS_EMBS.items() if s.past_block_size)),  # the registry's
                            (dict(n_embd=64), "the parent run has another shape (n_embd 32 -> 64): only block_size, "
                             "the position embedding and rope_scaling may change when starting from it")]:
        assert_refused(tiny_args(tiny_data, tmp_path / "out", max_iters=2, init_from=str(parent), **change),
                       f"init_from={parent}: {message}", tmp_path / "out")


def test_train_py_s_model_globals_are_gptconfig_s_defaults_and_every_field_is_a_key():
    fields = {f.name: f.default for f in dataclasses.fields(train.GPTConfig) if f.name != "vocab_size"}
    declared = {k: v for k, v in vars(train).items() if k in fields}
    assert "fope_sigma" in declared and "n_layer" in declared and "rope_scaling" in declared
    assert declared == {k: fields[k] for k in declared}  # an edit to one default is an edit to both
    assert {k: train.DEFAULTS[k] for k in fields} == fields  # knobs not declared here are keys too


def test_importing_train_leaves_the_importer_s_signals_alone():
    probe = "import signal, train; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "True", result.stderr[-2000:]
