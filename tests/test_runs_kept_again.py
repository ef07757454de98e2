"""Nothing lost, second pass (issue 37, train.py and checkpoint.py): --overwrite keeps the old run until the new
one has saved, best.pt survives a kill between its save and ckpt.pt's, SIGTERM and a second Ctrl-C end a run as
one Ctrl-C does, and a resume refuses damaged checkpoints and other val batches in one line.

Each test reproduces one item of the issue (its number in the comment) and fails on the code before the fix."""

import errno
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import train
from checkpoint import BEST, best_pair, save_checkpoint
from guard import claim_out_dir
from test_runs_kept import ROOT, chars, load, refused, subprocess_env, tiny_args  # noqa: F401 (chars: a fixture)


@pytest.fixture(scope="module")
def finished(chars, tmp_path_factory):
    """One finished 4-iteration run, trained once; each test works on its own copy (a_run)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train.main(tiny_args(chars, out))
    return out


def a_run(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "run")


def run_files(out):
    return {name: (out / name).read_bytes() for name in ("ckpt.pt", BEST)}


def diverge_at_iter(n, monkeypatch, error=None):
    """Training forwards from the n-th on give a NaN loss, or raise `error` (a Ctrl-C, in-process)."""
    real_forward, steps = train.GPT.forward, []

    def forward(self, idx, targets=None, reduction="mean"):
        logits, loss = real_forward(self, idx, targets, reduction)
        if self.training:
            steps.append(1)
            if len(steps) > n:
                if error is not None:
                    raise error
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(train.GPT, "forward", forward)


def disk_full_save(obj, f):
    """torch.save on a full disk: its C++ writer's RuntimeError, the OSError as its context."""
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")


# -----------------------------------------------------------------------------
# 2, 9: --overwrite removes the old run only once the new one has saved; a parent is never its child's out_dir


@pytest.mark.parametrize("end", ["nan", "disk full", "ctrl-c"])
def test_overwrite_keeps_the_old_run_when_the_new_one_ends_before_its_first_save(chars, finished, tmp_path,
                                                                                 monkeypatch, capsys, end):
    out = a_run(finished, tmp_path)
    before = run_files(out)
    if end == "nan":
        diverge_at_iter(1, monkeypatch)
        match = "iter 1: loss is nan"
    elif end == "disk full":
        monkeypatch.setattr(torch, "save", disk_full_save)
        match = "could not write"
    else:
        diverge_at_iter(1, monkeypatch, KeyboardInterrupt())
        match = "130"
    message = refused(tiny_args(chars, out, seed=7, overwrite=True), match)
    if end == "disk full":  # the first save of a run: nothing to keep, and the reason said plainly
        assert "(No space left on device: disk full?): no checkpoint was written" in message, message
        assert "previous checkpoint" not in message and "inline_container" not in message, message
    assert run_files(out) == before and load(out / "ckpt.pt")["config"]["seed"] != 7
    assert {p.name for p in tmp_path.iterdir()} == {"run"} and {p.name for p in out.iterdir()} == {"ckpt.pt", BEST}
    assert f"{out} keeps the run it held" in capsys.readouterr().err


def test_a_run_moved_aside_by_a_killed_overwrite_is_put_back_or_removed_and_a_users_folder_is_left_alone(tmp_path):
    out, aside = tmp_path / "run", tmp_path / "run.replaced"
    out.mkdir()
    aside.mkdir()
    (aside / "ckpt.pt").write_bytes(b"old run")
    with claim_out_dir(str(out), new_run=False):  # killed before the new run saved: the old one comes back
        pass
    assert (out / "ckpt.pt").read_bytes() == b"old run" and not aside.exists()
    aside.mkdir()
    (aside / "ckpt.pt").write_bytes(b"older run")
    with claim_out_dir(str(out), new_run=False):  # killed after it saved: the old one goes
        pass
    assert (out / "ckpt.pt").read_bytes() == b"old run" and not aside.exists()
    aside.mkdir()
    (aside / "notes.txt").write_text("the user's")
    refused(lambda: claim_out_dir(str(out), new_run=False).__enter__(), "holds other files than a run moved aside")
    assert (aside / "notes.txt").read_text() == "the user's"


# 9
def test_an_out_dir_holding_only_best_pt_tells_resume_and_a_new_run_the_same_way_out(chars, finished, tmp_path):
    out = a_run(finished, tmp_path)
    (out / "ckpt.pt").unlink()
    for argv in (tiny_args(chars, out, init_from="resume", max_iters=6), tiny_args(chars, out)):
        message = refused(argv, f"cp {out / BEST} {out / 'ckpt.pt'}")
        assert "--overwrite=True" in message and f"{out} holds only best.pt at iter" in message
    train.main(tiny_args(chars, out, overwrite=True, max_iters=2))  # the way out it names works
    assert load(out / "ckpt.pt")["iter_num"] == 2


# 8, 9
@pytest.mark.parametrize("text", ["every good boy\n", "error: none\n", ""])
def test_a_text_file_as_a_checkpoint_is_called_what_it_is_and_no_one_is_told_to_delete_it(chars, tmp_path, text):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ckpt.pt").write_text(text)
    for argv in (tiny_args(chars, out, init_from="resume"), tiny_args(chars, tmp_path / "child", init_from=out)):
        message = refused(argv, f"{out / 'ckpt.pt'} is not a checkpoint (not a torch save file)")
        assert "delete" not in message
    assert (out / "ckpt.pt").read_text() == text


# -----------------------------------------------------------------------------
# 3: the best weights survive any kill


KILL_BETWEEN_BEST_AND_CKPT = """
import os, signal, sys
import train
losses = iter([5.0, 4.0, 3.0])  # iters 0, 2, 4: iter 4's save is a new best
train.estimate_val_loss = lambda *a: next(losses)
real_replace, renames = os.replace, []
def replace(src, dst):
    if os.path.basename(str(dst)) == "ckpt.pt":
        renames.append(dst)
        if len(renames) == 2:  # iter 4's rename of ckpt.pt: killed just before it
            os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.replace = replace
train.main(sys.argv[1:])
"""


def test_a_kill_between_best_pt_and_ckpt_pt_keeps_the_best_weights_and_the_resume_says_so(chars, tmp_path,
                                                                                        monkeypatch, capsys):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", KILL_BETWEEN_BEST_AND_CKPT, *tiny_args(chars, out, max_iters=6)],
                            cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    best, last = load(out / BEST), load(out / "ckpt.pt")
    assert (best["iter_num"], best["val_loss"]) == (4, 3.0), result.stderr[-3000:]  # the best weights are on disk
    assert (last["iter_num"], last["best_val_loss"]) == (2, 4.0)
    losses = iter([4.0, 3.5, 3.8])  # the resumed evaluations at iters 2, 4, 6: none beats best.pt's 3.0
    monkeypatch.setattr(train, "estimate_val_loss", lambda *a: next(losses))
    train.main(tiny_args(chars, out, max_iters=6, init_from="resume"))
    assert f"{out / BEST} (val loss 3.0000) is ahead of {out / 'ckpt.pt'} (iter 2" in capsys.readouterr().err
    kept, last = load(out / BEST), load(out / "ckpt.pt")
    assert (kept["iter_num"], kept["val_loss"], last["best_val_loss"]) == (4, 3.0, 3.0)
    assert all(torch.equal(kept["model"][k], best["model"][k]) for k in best["model"])


def fake_checkpoint(iter_num, val_loss, best_val_loss):
    return {"model": {}, "model_args": {}, "config": {}, "iter_num": iter_num, "meta": {}, "val_loss": val_loss,
            "best_val_loss": best_val_loss}


def test_a_resume_repairs_a_ckpt_pt_recording_a_best_that_best_pt_lacks_or_says_it_is_lost(tmp_path):
    # what an older train.py (ckpt.pt renamed first) left when killed at best.pt's link
    path = tmp_path / "ckpt.pt"
    save_checkpoint(fake_checkpoint(2, 4.1937, 4.1937), path, best=True)
    save_checkpoint(fake_checkpoint(4, 4.1151, 4.1151), path)  # killed before best.pt followed
    best_val_loss, best_saved, note = best_pair(load(path), str(path))
    assert (best_val_loss, best_saved) == (4.1151, 4.1151) and "best.pt is now" in note
    assert os.path.samefile(path, tmp_path / BEST)  # ckpt.pt held the best weights: best.pt links them again
    save_checkpoint(fake_checkpoint(6, 4.3, 4.0), path)  # a best (4.0) that neither file holds
    best_val_loss, best_saved, note = best_pair(load(path), str(path))
    assert (best_val_loss, best_saved) == (4.1151, 4.1151)
    assert "records a best val loss 4.0000 that no file holds (best.pt 4.1151)" in note


# -----------------------------------------------------------------------------
# 6, 7: SIGTERM ends a run as Ctrl-C does; a second signal while the first is handled does nothing


SIGNALS_AT_THE_END = """
import os, runpy, signal, sys
import torch
import checkpoint
real_save, real_status = torch.save, checkpoint.checkpoint_status
def save(obj, f):  # SIGTERM while the first checkpoint is written (a scheduler's, timeout's)
    os.kill(os.getpid(), signal.SIGTERM)
    real_save(obj, f)
def status(path):  # a Ctrl-C while the run says what it leaves
    os.kill(os.getpid(), signal.SIGINT)
    return real_status(path)
torch.save, checkpoint.checkpoint_status = save, status
sys.argv = [sys.argv[0], *sys.argv[1:]]
runpy.run_path(os.path.join(os.environ["ROOT"], "train.py"), run_name="__main__")
"""


def test_sigterm_mid_save_ends_as_ctrl_c_does_and_a_second_signal_changes_nothing(chars, finished, tmp_path):
    out = a_run(finished, tmp_path)  # a run for the new one to replace, once it has saved
    result = subprocess.run([sys.executable, "-c", SIGNALS_AT_THE_END,
                             *tiny_args(chars, out, seed=7, overwrite=True, max_iters=100_000)],
                            cwd=tmp_path, env={**subprocess_env(), "ROOT": str(ROOT)}, capture_output=True, text=True,
                            timeout=120)
    stderr = result.stderr.strip()
    assert result.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    last_line = stderr.splitlines()[-1]
    assert last_line.startswith(f"terminated (SIGTERM); last checkpoint: {out / 'ckpt.pt'} (iter 2"), stderr
    assert {p.name for p in out.iterdir()} == {"ckpt.pt", BEST}, stderr  # no ckpt.pt.tmp<pid>
    assert {p.name for p in tmp_path.iterdir()} == {"run"}, stderr  # the replaced run went once the new one saved
    assert (load(out / "ckpt.pt")["iter_num"], load(out / "ckpt.pt")["config"]["seed"]) == (2, 7)


# -----------------------------------------------------------------------------
# 8: what a resume refuses


def test_max_iters_0_is_refused_in_one_line(chars, tmp_path):
    refused(tiny_args(chars, tmp_path / "run", max_iters=0), "max_iters must be >= 1 (0 trains nothing")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_changed_on_disk_is_refused_by_its_sha256(chars, finished, tmp_path):
    out = a_run(finished, tmp_path)
    raw = bytearray((out / "ckpt.pt").read_bytes())
    weight = load(out / "ckpt.pt")["model"]["lm_head.weight"].numpy().tobytes()
    at = raw.find(weight[:64])  # inside a tensor's bytes: torch.load reads the file as if nothing happened
    assert at > 0
    raw[at:at + 4] = bytes(4)
    (out / "ckpt.pt").write_bytes(bytes(raw))
    refused(tiny_args(chars, out, init_from="resume", max_iters=6), f"{out / 'ckpt.pt'} does not match the sha256")


def test_a_resume_keeps_the_val_batches_unless_told_and_keeps_the_config_it_replaces(chars, finished, tmp_path,
                                                                                      capsys):
    out = a_run(finished, tmp_path)
    before = run_files(out)
    for change in ({"seed": 3}, {"batch_size": 2}, {"eval_iters": 2}):
        message = refused(tiny_args(chars, out, init_from="resume", max_iters=6, **change), "other val batches")
        key, value = next(iter(change.items()))
        assert f"asks {key}={value}" in message and "--new_val_batches=True" in message
    assert run_files(out) == before
    train.main(tiny_args(chars, out, init_from="resume", max_iters=6, eval_iters=2, new_val_batches=True))
    assert "resuming with eval_iters=2 (was eval_iters=1; new_val_batches=True)" in capsys.readouterr().err
    last = load(out / "ckpt.pt")
    assert last["config"]["eval_iters"] == 2
    assert [(c["until_iter"], c["config"]["eval_iters"]) for c in last["past_configs"]] == [(4, 1)]
