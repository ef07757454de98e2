"""Nothing a user made is lost, nothing wrong passes in silence: one out_dir holds one run, a checkpoint's
losses describe its weights, interrupted or failed saves keep the last checkpoint and say so in one line,
and scripts refuse data, labels and flags that would give a wrong number without a word.

Each test reproduces one path of the 90-input battery of issue 27 (its item number in the comment)."""

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval_length
import train
from checkpoint import BEST, checkpoint_status, save_checkpoint
from data.shards import write_shard
from data.tokenizer import BPETokenizer
from experiments import demo
from test_pretrained import MERGES, TOKENS, hf_state, llama
from tinydata import write_random_chars

ROOT = Path(__file__).resolve().parent.parent
CHARS = "abcdefghijklmnop"


@pytest.fixture(scope="module")
def chars(tmp_path_factory):
    return write_random_chars(tmp_path_factory.mktemp("data") / "tiny", CHARS, 6000, 2000)


def tiny_args(data_dir, out_dir, **overrides):
    args = dict(dataset=data_dir, out_dir=out_dir, n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4,
                max_iters=4, eval_interval=2, eval_iters=1, log_interval=1, warmup_iters=1, rotary_backend="eager")
    args.update(overrides)
    return [f"--{k}={v}" for k, v in args.items()]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def refused(argv_or_call, match):
    """The one-line SystemExit message of a call (or of train.main(argv)), checked to contain `match`."""
    with pytest.raises(SystemExit) as stop:
        argv_or_call() if callable(argv_or_call) else train.main(argv_or_call)
    message = str(stop.value.code)
    assert message and "\n" not in message and "Traceback" not in message, message
    assert match in message, message
    return message


def subprocess_env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


# -----------------------------------------------------------------------------
# 1. a pretrained HF folder: trains, resumes, keeps its own rope_scaling


def write_hf_folder(folder, rope_scaling):
    """A tiny LlamaForCausalLM folder as HF writes one: config.json, model.safetensors, tokenizer.json."""
    from safetensors.torch import save_file
    folder.mkdir(parents=True)
    model = llama()
    c = model.config
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": c.n_embd, "num_attention_heads": c.n_head,
              "num_key_value_heads": c.n_kv_head, "num_hidden_layers": c.n_layer, "intermediate_size": c.mlp_hidden,
              "rms_norm_eps": c.norm_eps, "max_position_embeddings": c.block_size, "vocab_size": len(TOKENS),
              "rope_theta": c.rope_theta, "tie_word_embeddings": True, "rope_scaling": rope_scaling}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.clone().contiguous() for k, v in hf_state(model).items()}, str(folder / "model.safetensors"))
    BPETokenizer(TOKENS, MERGES, "gpt2", ["<|endoftext|>"], len(TOKENS) - 1, "x").tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def write_token_data(data_dir, meta):
    data_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_shard(data_dir / "train_000000.bin", rng.integers(0, meta["vocab_size"], 4000), meta["vocab_size"])
    write_shard(data_dir / "val_000000.bin", rng.integers(0, meta["vocab_size"], 1000), meta["vocab_size"])
    (data_dir / "meta.json").write_text(json.dumps(meta))
    return data_dir


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    folder = write_hf_folder(root / "tiny-llama", {"rope_type": "linear", "factor": 2.0})
    data = write_token_data(root / "data", {"tokenizer": "pretrained", "source": str(folder), "vocab_size": len(TOKENS)})
    return folder, data


def test_train_from_an_hf_folder_trains_resumes_and_keeps_the_folders_rope_scaling(hf_folder, tmp_path):
    folder, data = hf_folder
    argv = [f"--init_from={folder}", f"--dataset={data}", f"--out_dir={tmp_path / 'run'}", "--pos_emb=rope",
            "--block_size=16", "--batch_size=2", "--max_iters=4", "--eval_interval=2", "--eval_iters=1",
            "--warmup_iters=1", "--rotary_backend=eager"]
    train.main(argv)
    ckpt = load(tmp_path / "run" / "ckpt.pt")
    assert ckpt["model_args"]["rope_scaling"]["rope_type"] == "linear"
    assert ckpt["model_args"]["rope_scaling"]["factor"] == 2.0
    assert ckpt["model_args"]["n_kv_head"] == 2 and ckpt["parent"]["init_from"] == str(folder)
    assert len(ckpt["parent"]["sha256"]) == 64
    train.main([*argv, "--init_from=resume", "--max_iters=6"])
    resumed = load(tmp_path / "run" / "ckpt.pt")
    assert resumed["iter_num"] == 6 and resumed["model_args"]["rope_scaling"] == ckpt["model_args"]["rope_scaling"]


# 6 (and 7: the fope_dim message names the pretrained model's own head_dim)
def test_model_flags_a_pretrained_source_cannot_take_are_refused_in_one_line(hf_folder, tmp_path):
    folder, data = hf_folder
    argv = [f"--init_from={folder}", f"--dataset={data}", f"--out_dir={tmp_path / 'run'}", "--block_size=16",
            "--max_iters=2", "--rotary_backend=eager"]
    message = refused([*argv, "--n_layer=3", "--qk_norm=True"], "cannot change")
    assert "n_layer" in message and "qk_norm" in message
    assert "head_dim 8" in refused([*argv, "--pos_emb=fope", "--fope_dim=6"], "fope_dim")  # 32 / 4 heads
    assert not (tmp_path / "run").exists()


# 11
@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "config.json").write_text('{"architectures": ['), "not a readable JSON file"),
    (lambda f: (f / "model.safetensors").write_bytes(b""), "not a readable safetensors file"),
    (lambda f: (f / "config.json").write_text(json.dumps(
        {k: v for k, v in json.loads((f / "config.json").read_text()).items() if k != "rms_norm_eps"})), "has no rms_norm_eps"),
])
def test_a_damaged_hf_folder_is_one_line(hf_folder, tmp_path, damage, message):
    import shutil
    from pretrained import from_pretrained, read_weights
    folder = tmp_path / "copy"
    shutil.copytree(hf_folder[0], folder)
    damage(folder)
    read_weights.cache_clear()
    refused(lambda: from_pretrained(str(folder)), message)


# -----------------------------------------------------------------------------
# 2, 3, 10: one out_dir, one run


def test_a_new_run_into_an_out_dir_holding_one_is_refused_unless_overwrite(chars, tmp_path):
    out = tmp_path / "run"
    train.main(tiny_args(chars, out))
    before = (out / "ckpt.pt").read_bytes()
    message = refused(tiny_args(chars, out), "already holds a run (ckpt.pt at iter 4)")
    assert "--init_from=resume" in message and "--overwrite=True" in message
    for init_from in (out, out / "ckpt.pt", out / BEST):  # a parent is never its child's out_dir (issue 37, 2)
        for overwrite in (False, True):
            refused(tiny_args(chars, out, init_from=init_from, overwrite=overwrite), "a run cannot start from the run "
                    "it would replace; pick another --out_dir (or --init_from=resume to continue it)")
    assert (out / "ckpt.pt").read_bytes() == before
    train.main(tiny_args(chars, out, seed=7, overwrite=True))
    assert load(out / "ckpt.pt")["config"]["seed"] == 7
    assert {p.name for p in tmp_path.iterdir()} == {"run"}  # the old run, moved aside, is gone once the new saved


def test_a_second_process_on_the_same_out_dir_is_refused_and_a_killed_one_leaves_no_lock(chars, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another training process holds it (the lock is per open file)
    try:
        refused(tiny_args(chars, out), "is in use by another training run")
    finally:
        os.close(fd)
    assert not (out / "ckpt.pt").exists()
    # a run killed with SIGKILL, mid-training: the kernel drops its lock; its next run resumes
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *tiny_args(chars, out, max_iters=100_000)],
                            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "saved" in line:
            break
    proc.kill()
    proc.communicate(timeout=60)
    (out / "ckpt.pt.tmp99999").write_bytes(b"half a checkpoint")  # what a save killed before its rename leaves
    (out / "best.pt.tmp99999").write_bytes(b"half a link")
    iter_num = load(out / "ckpt.pt")["iter_num"]
    train.main(tiny_args(chars, out, init_from="resume", max_iters=iter_num + 2))
    assert {p.name for p in out.iterdir()} == {"best.pt", "ckpt.pt"}  # the leftovers removed


# -----------------------------------------------------------------------------
# 4: the best checkpoint is never replaced by a worse one; losses describe the weights they are saved with


def test_a_worse_save_keeps_the_best_checkpoint_and_each_checkpoint_records_its_own_val_loss(chars, tmp_path, monkeypatch):
    losses = iter([5.0, 3.0, 4.0, 9.0])  # the evaluations at iters 0, 2, 4, 6: the run gets worse after iter 2
    monkeypatch.setattr(train, "estimate_val_loss", lambda *a: next(losses))
    out = tmp_path / "run"
    train.main(tiny_args(chars, out, max_iters=6, always_save_checkpoint=True))
    last, best = load(out / "ckpt.pt"), load(out / BEST)
    assert (last["iter_num"], last["val_loss"], last["best_val_loss"]) == (6, 9.0, 3.0)
    assert (best["iter_num"], best["val_loss"]) == (2, 3.0)
    status = checkpoint_status(str(out / "ckpt.pt"))
    assert "iter 6, val loss 9.0000" in status and "best.pt (iter 2, val loss 3.0000)" in status


def test_resuming_into_divergence_keeps_the_good_weights_as_best(chars, tmp_path):
    out = tmp_path / "run"
    train.main(tiny_args(chars, out, max_iters=40, eval_interval=20, learning_rate=3e-3, min_lr=3e-4))
    good = load(out / "ckpt.pt")
    train.main(tiny_args(chars, out, init_from="resume", max_iters=60, learning_rate=5.0, min_lr=5.0, warmup_iters=0))
    diverged, best = load(out / "ckpt.pt"), load(out / BEST)
    assert diverged["val_loss"] > good["val_loss"]  # the learning rate of 5 ruined the weights...
    assert best["iter_num"] == 40 and best["val_loss"] == good["val_loss"]  # ...and best.pt still holds the good ones
    assert all(torch.equal(best["model"][k], good["model"][k]) for k in good["model"])


# -----------------------------------------------------------------------------
# 8, 9: a failed or interrupted save


DISK_FULL = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as a full disk fails
resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
import train
train.main(sys.argv[1:])
"""


def test_a_save_that_fails_is_one_line_says_no_saved_and_keeps_the_last_checkpoint(chars, tmp_path):
    out = tmp_path / "run"
    train.main(tiny_args(chars, out))
    before = (out / "ckpt.pt").read_bytes()
    result = subprocess.run([sys.executable, "-c", DISK_FULL, *tiny_args(chars, out, init_from="resume", max_iters=6)],
                            cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    stderr = result.stderr.strip()
    assert "\n" not in stderr and "Traceback" not in stderr and "could not write" in stderr, stderr
    assert "saved" not in result.stdout
    assert (out / "ckpt.pt").read_bytes() == before
    assert {p.name for p in out.iterdir()} == {"best.pt", "ckpt.pt"}  # no temp file left


def test_ctrl_c_during_a_save_waits_for_the_rename_then_interrupts(tmp_path, monkeypatch, request):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"iter_num": 1}, path)
    real_save = torch.save

    def interrupted_save(obj, f):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while torch.save writes
        real_save(obj, f)

    # Python's own Ctrl-C handler, whatever the suite started with: a process started in the background by a
    # non-interactive shell (`make test-all &`, a CI runner's script) inherits SIGINT ignored, and Python keeps it so
    # (its handler is installed only where SIGINT is not ignored), so the deferred interrupt would never come
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"iter_num": 2}, path)
    assert load(path)["iter_num"] == 2  # the save finished first
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_ctrl_c_while_train_py_imports_torch_ends_quietly_with_130(tmp_path):
    proc = subprocess.Popen([sys.executable, "-X", "importtime", str(ROOT / "train.py"), "--help"], cwd=tmp_path,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # -X importtime: a line as each module finishes importing
        lines.append(line)
        if "torch." in line:  # torch's submodules are loading: torch itself is mid-import
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, rest[-2000:]
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest


# -----------------------------------------------------------------------------
# 5, 7: wrong numbers in silence


def test_eval_length_and_the_lens_refuse_a_checkpoint_trained_on_another_vocabulary(chars, tmp_path):
    from experiments import lens
    train.main(tiny_args(chars, tmp_path / "run"))
    other = write_random_chars(tmp_path / "other", "qrstuvwxyzABCDEFGHIJ", 3000, 3000)  # another vocabulary
    sweep = ["--ckpt", str(tmp_path / "run"), "--data_dir", str(other), "--out", str(tmp_path / "res"), "--trials", "0"]
    message = refused(lambda: eval_length.main(sweep), "was trained on other tokens")
    assert "vocab 16" in message and "vocab 20" in message
    refused(lambda: lens.main(["--ckpt", str(tmp_path / "run"), "--data_dir", str(other), "--out", str(tmp_path / "lens")]),
            "was trained on other tokens")
    assert not list(tmp_path.glob("res*"))


def test_a_second_label_for_one_checkpoint_is_refused(chars, tmp_path):
    train.main(tiny_args(chars, tmp_path / "run"))
    run = str(tmp_path / "run")
    refused(lambda: eval_length.main(["--ckpt", run, "--label", f"a={run}", "--label", f"b={run}", "--out",
                                      str(tmp_path / "res")]), "already labelled 'a'")


def test_settings_that_train_nothing_or_the_wrong_schedule_are_refused(chars, tmp_path):
    refused(tiny_args(chars, tmp_path / "a", learning_rate=1e-3, min_lr=1e-2), "min_lr 0.01 is above learning_rate 0.001")
    train.main(tiny_args(chars, tmp_path / "b"))
    refused(tiny_args(chars, tmp_path / "b", init_from="resume", max_iters=4), "already at iter 4 >= max_iters=4")


def test_a_text_file_passed_as_a_checkpoint_is_called_what_it_is(tmp_path):
    from checkpoint import load_checkpoint
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    message = refused(lambda: load_checkpoint(str(text)), "is not a checkpoint")
    assert "Python objects" not in message


@pytest.mark.parametrize("content", ["", '{"info": {"train_len": 64'])
def test_report_only_on_a_damaged_json_is_one_line(tmp_path, content):
    (tmp_path / "demo.json").write_text(content)
    (tmp_path / "demo_yarn.json").write_text("{}")
    (tmp_path / "demo_timing.json").write_text("{}")
    refused(lambda: demo.main(["--report_only", "--results", str(tmp_path)]), "run the experiment again")


def test_report_only_on_a_json_that_lacks_a_key_is_one_line(tmp_path):
    for name in ("demo", "demo_yarn"):
        (tmp_path / f"{name}.json").write_text('{"info": {}}')
    (tmp_path / "demo_timing.json").write_text("{}")
    refused(lambda: demo.main(["--report_only", "--results", str(tmp_path)]), "lacks")
