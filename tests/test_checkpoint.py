"""checkpoint.py: the one loader every script reads checkpoints through, and what a checkpoint records
about the run that made it (the resolved config, the sources)."""

import pickle
import shutil
from pathlib import Path

import pytest
import torch

import eval_length
import sample
import train
from experiments import runner
from checkpoint import SOURCES, changed_sources, source_hashes
from configurator import configure
from tinydata import write_random_chars

ROOT = Path(__file__).resolve().parent.parent
CHARS = "abcdefghijklmnop"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A dataset and a 4-iteration run on it: (data_dir, out_dir, the train.py argv)."""
    root = tmp_path_factory.mktemp("ckpt")
    data_dir = write_random_chars(root / "data", CHARS, 5000, 2000)
    argv = [f"--dataset={data_dir}", f"--out_dir={root / 'run'}", "--n_layer=1", "--n_head=2", "--n_embd=32",
            "--block_size=16", "--batch_size=4", "--max_iters=4", "--eval_interval=2", "--eval_iters=1",
            "--rotary_backend=eager"]
    train.main(argv)
    return data_dir, root / "run", argv


# -----------------------------------------------------------------------------
# one loader, one set of messages


def truncated(tiny_run, tmp_path):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    raw = (tiny_run[1] / "ckpt.pt").read_bytes()
    (out_dir / "ckpt.pt").write_bytes(raw[:len(raw) // 2])
    return out_dir, (f"{out_dir / 'ckpt.pt'} is not a readable checkpoint (PytorchStreamReader failed reading zip "
                     "archive: failed finding central directory): damaged or cut short; pass another")


def foreign(tiny_run, tmp_path):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 3}, out_dir / "ckpt.pt")
    return out_dir, f"{out_dir / 'ckpt.pt'} has no model, model_args, config, iter_num, meta: not a checkpoint written by train.py"


def pickled_object(tiny_run, tmp_path):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    with open(out_dir / "ckpt.pt", "wb") as f:
        pickle.dump({"model": Path("x")}, f, protocol=2)  # an object weights_only refuses to build
    return out_dir, (f"{out_dir / 'ckpt.pt'} holds Python objects besides tensors and plain data: not a checkpoint "
                     "written by train.py (it is not loaded, as that could run code)")


def missing(tiny_run, tmp_path):
    out_dir = tmp_path / "run"
    return out_dir, f"no checkpoint at {out_dir}: train one with python train.py --out_dir={out_dir}"


def resume(tiny_run, out_dir):
    train.main([*tiny_run[2], f"--out_dir={out_dir}", "--init_from=resume", "--max_iters=8"])


def sweep(tiny_run, out_dir):
    eval_length.main(["--ckpt", str(out_dir), "--data_dir", str(tiny_run[0]), "--out", str(out_dir / "res"),
                      "--trials", "0", "--tokens", "64"])


def sample_from(tiny_run, out_dir):
    sample.main([f"--out_dir={out_dir}", "--max_new_tokens=3", "--start=abc"])


@pytest.mark.parametrize("bad", [truncated, foreign, pickled_object, missing])
@pytest.mark.parametrize("script", [resume, sweep, sample_from])
def test_every_script_reads_a_bad_checkpoint_through_one_loader_with_one_message(tiny_run, tmp_path, script, bad):
    out_dir, message = bad(tiny_run, tmp_path)
    if script is resume:  # resuming also needs the optimizer and rng, and has its own advice when there is none
        message = message.replace("iter_num, meta:", "iter_num, meta, optimizer, rng:")
        if bad is missing:
            message = f"no checkpoint at {out_dir}/ckpt.pt: drop --init_from=resume or pick its --out_dir"
    with pytest.raises(SystemExit) as stop:
        script(tiny_run, out_dir)
    assert str(stop.value.code) == message


@pytest.mark.parametrize("bad", [truncated, foreign, pickled_object])
def test_demo_retrains_a_run_whose_checkpoint_it_cannot_read_and_says_why(tiny_run, tmp_path, bad):
    out_dir, message = bad(tiny_run, tmp_path)
    assert runner.stale_reason(str(out_dir), tiny_run[2]) == f"unreadable ({message})"


# -----------------------------------------------------------------------------
# what a checkpoint records about its run


def test_a_checkpoint_records_the_resolved_config_and_the_sources_that_made_it(tiny_run):
    checkpoint = torch.load(tiny_run[1] / "ckpt.pt", weights_only=True)
    resolved = configure(train.DEFAULTS, tiny_run[2], train.OPTIONAL_TYPES)
    assert checkpoint["config"] == resolved and checkpoint["config"]["beta2"] == train.DEFAULTS["beta2"]
    assert checkpoint["sources"] == [source_hashes()]
    files = set(checkpoint["sources"][0])
    assert {"train.py", "model.py", "fope.py", "passkey.py", "data/shards.py", "data/tokenizer.py", "torch"} <= files
    assert {"fope_ext/__init__.py", "fope_ext/rotation.py", "fope_ext/build.py", "checkpoint.py"} <= files and any(f.endswith(".c") for f in files)
    assert {"rope_scaling.py", "baselines.py"} <= files
    assert not {"eval_length.py", "runs.py", "sample.py", "fope_ext/bench.py", "README.md"} & files
    assert not any(f.startswith("experiments/") for f in files)


def copy_sources(root):
    for pattern in [*SOURCES, "eval_length.py", "README.md"]:
        for path in ROOT.glob(pattern):
            (root / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / path.relative_to(ROOT))


def test_source_hashes_change_with_each_file_that_shapes_a_run_and_no_other(tmp_path):
    copy_sources(tmp_path)
    before = source_hashes(tmp_path)
    assert before == source_hashes(ROOT)  # the same files, wherever they lie
    for name in [name for name in before if name != "torch"]:
        path = tmp_path / name
        text = path.read_bytes()
        path.write_bytes(text + b"\n")
        assert changed_sources(before, source_hashes(tmp_path)) == [name]
        path.write_bytes(text)
    for name in ("eval_length.py", "README.md"):  # read a trained model or describe it: not sources
        (tmp_path / name).write_text("changed")
    assert source_hashes(tmp_path) == before
