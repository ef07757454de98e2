"""make demo QUICK=1: the whole laptop pipeline (data, 5 variants, sweeps, report) end to end, small;
and which finished runs the demo keeps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import demo
import train
from tinydata import write_random_chars

ROOT = Path(__file__).resolve().parent.parent


def test_quick_demo_runs_end_to_end_and_reports_every_variant():
    proc = subprocess.run([sys.executable, "demo.py", "--quick", "--fresh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for stage in ("1/4 data", "2/4 train", "3/4 eval", "4/4 write"):
        assert stage in proc.stdout
    results = ROOT / "results" / "quick"
    plain = json.loads((results / "demo.json").read_text())
    assert set(plain["summary"]) == {"rope", "fope", "clamp-only", "alibi", "nope"}
    assert plain["info"]["groups"]["clamp-only"] == ["out/demo_quick/clamp-only_s1"]
    assert plain["info"]["lengths"] == [64, 128, 256]
    yarn = json.loads((results / "demo_yarn.json").read_text())
    assert set(yarn["summary"]) == {"rope+yarn8", "fope+yarn8", "clamp-only+yarn8"}
    report = (results / "demo.md").read_text()
    assert "passkey accuracy" in report and "Stage times" in report and "clamp-only " in report
    timing = json.loads((results / "demo_timing.json").read_text())
    assert timing["total"] >= timing["train"] > 0
    clamp_only = torch.load(ROOT / "out" / "demo_quick" / "clamp-only_s1" / "ckpt.pt", weights_only=True)
    assert clamp_only["model_args"]["pos_emb"] == "fope" and clamp_only["model_args"]["fope_fourier"] is False


@pytest.fixture
def finished_run(tmp_path):
    """A finished tiny run and the train.py argv that made it."""
    data_dir = write_random_chars(tmp_path / "data", "abcdefgh", 3000, 1000)
    argv = [f"--dataset={data_dir}", f"--out_dir={tmp_path / 'run'}", "--n_layer=1", "--n_head=2", "--n_embd=16",
            "--block_size=8", "--batch_size=2", "--max_iters=2", "--eval_interval=2", "--eval_iters=1",
            "--rotary_backend=eager"]
    train.main(argv)
    return str(tmp_path / "run"), argv


def test_quick_extend_continues_the_quick_demo_runs_and_reports_every_arm_at_both_steps():
    # after the quick demo above (its rope and fope runs are the parents; they are current, so kept)
    proc = subprocess.run([sys.executable, "extend.py", "--quick", "--fresh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "out/demo_quick/rope_s1: already trained" in proc.stdout
    sweep = json.loads((ROOT / "results" / "quick" / "extend.json").read_text())
    assert set(sweep["summary"]) == {"rope (L 64)", "fope (L 64)", *(f"{arm} @{step}" for arm in (
        "rope+yarn", "fope+yarn", "rope->fope", "fope->fope") for step in (40, 80))}
    assert sweep["info"]["train_len"] == 64 and sweep["info"]["lengths"] == [64, 128, 256]
    out = ROOT / "out" / "extend_quick"
    half, full = (torch.load(out / d / "ckpt.pt", weights_only=True) for d in ("fope-fope_it40_s1", "fope-fope_s1"))
    assert half["iter_num"] == 40 and full["iter_num"] == 80 and full["model_args"]["block_size"] == 128
    assert half["parent"] == full["parent"] and half["parent"]["init_from"] == "out/demo_quick/fope_s1"
    yarn = torch.load(out / "fope+yarn_s1" / "ckpt.pt", weights_only=True)["model_args"]["rope_scaling"]
    assert yarn == {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 64, "attention_factor": 1.0}
    rows = {(r["label"], r["length"]): r for r in sweep["rows"]}
    assert rows["rope->fope @80", 128]["passkey"] is not None and rows["rope->fope @80", 256]["passkey"] is None


def test_a_finished_run_is_kept_only_while_its_resolved_config_and_sources_are_unchanged(finished_run, monkeypatch):
    out_dir, argv = finished_run
    assert demo.stale_reason(out_dir, argv) is None  # kept
    assert demo.stale_reason(out_dir, [*argv, "--seed=2"]) == "config changed (seed)"  # another run
    assert demo.stale_reason(out_dir, [*argv, "--max_iters=3"]) == "config changed (max_iters)"
    with monkeypatch.context() as patch:  # train.py's defaults edited: no flag and no config file says so
        patch.setitem(train.DEFAULTS, "beta2", 0.95)
        assert demo.stale_reason(out_dir, argv) == "config changed (beta2)"
    with monkeypatch.context() as patch:  # model.py edited
        edited = {**demo.source_hashes(), "model.py": "0" * 64}
        patch.setattr(demo, "source_hashes", lambda: edited)
        assert demo.stale_reason(out_dir, argv) == "code changed (model.py)"
    assert demo.stale_reason(out_dir + "_never_trained", argv) == "not trained yet"


def test_a_run_resumed_across_a_code_change_records_both_and_is_retrained(finished_run, monkeypatch):
    out_dir, argv = finished_run
    edited = {**train.source_hashes(), "fope.py": "0" * 64}
    monkeypatch.setattr(train, "source_hashes", lambda: edited)
    train.main([*argv, "--init_from=resume", "--max_iters=4"])
    sources = torch.load(Path(out_dir) / "ckpt.pt", weights_only=True)["sources"]
    assert sources == [demo.source_hashes(), edited]
    monkeypatch.setattr(demo, "source_hashes", lambda: edited)
    assert demo.stale_reason(out_dir, [*argv, "--init_from=resume", "--max_iters=4"]) == "resumed across a code change"
