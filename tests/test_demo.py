"""make demo QUICK=1: the whole laptop pipeline (data, 5 variants, sweeps, report) end to end, small."""

import json
import subprocess
import sys
from pathlib import Path

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
