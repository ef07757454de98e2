"""train.py, sample.py, configurator.py and config/: resuming, DDP, checkpoints, and their one-line errors.

Tiny models on a tiny generated dataset (data.shards.write_shard); scripts run in a subprocess only
where that is the honest test (torchrun, SIGINT, the exit of a missing dataset).
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import sample
import train
from configurator import configure
from data.shards import write_shard
from model import GPTConfig

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


def test_two_ddp_processes_match_one_process_accumulating_the_same_micro_batches(tiny_data, tmp_path):
    args = tiny_args(tiny_data, tmp_path / "ddp", gradient_accumulation_steps=2, max_iters=3)
    result = run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         str(ROOT / "train.py"), *args], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    single = train.main(tiny_args(tiny_data, tmp_path / "single", gradient_accumulation_steps=2, max_iters=3))
    logged = [float(v) for v in re.findall(r"^iter \d+: loss ([\d.]+),", result.stdout, re.M)]
    np.testing.assert_allclose(logged, single, atol=1e-4)  # the log prints 4 decimals
    ddp, one = load(tmp_path / "ddp" / "ckpt.pt"), load(tmp_path / "single" / "ckpt.pt")
    assert ddp["iter_num"] == one["iter_num"] == 3
    for name, value in one["model"].items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-5, atol=1e-6)


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
    with pytest.raises(OSError):
        train.save_checkpoint({"iter_num": 2, "weight": torch.zeros(1000)}, path)
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
