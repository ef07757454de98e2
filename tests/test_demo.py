"""make demo QUICK=1: the whole laptop pipeline (data, 5 variants, sweeps, report) end to end, small."""

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def test_quick_demo_runs_end_to_end_and_reports_every_variant():
    proc = subprocess.run([sys.executable, "demo.py", "--quick", "--fresh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for stage in ("1/4 data", "2/4 train", "3/4 eval", "4/4 write"):
        assert stage in proc.stdout
    results = ROOT / "results" / "quick"
    plain = json.loads((results / "demo.json").read_text())
    assert set(plain["summary"]) == {"rope", "fope", "fope-clamp", "alibi", "nope"}
    assert plain["info"]["lengths"] == [64, 128, 256]
    yarn = json.loads((results / "demo_yarn.json").read_text())
    assert set(yarn["summary"]) == {"rope+yarn8", "fope+yarn8", "fope-clamp+yarn8"}
    report = (results / "demo.md").read_text()
    assert "passkey accuracy" in report and "Stage times" in report
    timing = json.loads((results / "demo_timing.json").read_text())
    assert timing["total"] >= timing["train"] > 0


def test_a_finished_run_is_kept_only_if_made_with_the_current_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    import demo
    flags = ["--pos_emb=fope", "--fope_sigma=0.0", "--seed=2"]
    config = demo.expected_config(flags)
    assert config["fope_sigma"] == 0.0 and config["seed"] == 2 and config["pos_emb"] == "fope"
    run = tmp_path / "run"
    run.mkdir()

    def save(iter_num, **changes):
        torch.save({"iter_num": iter_num, "config": {**config, **changes}}, run / "ckpt.pt")

    assert not demo.finished(str(run), flags)  # no checkpoint
    save(config["max_iters"])
    assert demo.finished(str(run), flags)
    save(config["max_iters"] - 1)  # interrupted
    assert not demo.finished(str(run), flags)
    save(config["max_iters"], learning_rate=config["learning_rate"] * 3)  # config/demo.py edited since
    assert not demo.finished(str(run), flags)
    save(config["max_iters"])
    assert not demo.finished(str(run), ["--pos_emb=fope", "--fope_sigma=0.3", "--seed=2"])  # another variant
