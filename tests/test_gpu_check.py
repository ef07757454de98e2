"""experiments/gpu_check.py, the prepared GPU check, dry-run on the CPU through the same stage code: one JSON
line per stage as it ends, a failing or overlong stage that leaves the others' lines, and a run with none of
the optional packages (tiktoken, cffi, tokenizers, gguf, safetensors, tqdm, matplotlib) importable."""

import json
import os
import subprocess
import sys
import time

import pytest

from experiments import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_a_stage_that_raises_or_overruns_its_budget_leaves_the_other_stages_lines(tmp_path, monkeypatch):
    def broken(args):
        raise RuntimeError("the kernel crashed")

    def stuck(args):
        time.sleep(30)

    monkeypatch.setitem(gpu_check.STAGES, "flex", broken)
    monkeypatch.setitem(gpu_check.STAGES, "sweep", stuck)
    monkeypatch.setitem(gpu_check.BUDGETS, "sweep", 1)
    t0 = time.time()
    gpu_check.main(["--device=cpu", f"--out={tmp_path}/gpu", "--stages", "env", "flex", "sweep", "rotation"])
    assert time.time() - t0 < 20  # the stuck stage was cut at its budget
    got = lines(tmp_path / "gpu.jsonl")
    assert [(l["stage"], l["ok"]) for l in got] == [("env", True), ("flex", False), ("sweep", False), ("rotation", True)]
    assert got[1]["error"] == "RuntimeError: the kernel crashed"
    assert got[2]["error"].startswith("StageTimeout")
    assert set(got[3]["result"]) == {"eager", "compile", "copy"}
    summary = (tmp_path / "gpu.md").read_text()
    assert "| flex | no |" in summary and "| rotation | yes |" in summary


def test_each_stage_is_written_the_moment_it_ends(tmp_path, monkeypatch):
    seen = []

    def after_env(args):  # runs after env: env's line must already be on disk
        seen.extend(lines(tmp_path / "gpu.jsonl"))
        return {}

    monkeypatch.setitem(gpu_check.STAGES, "flex", after_env)
    gpu_check.main(["--device=cpu", f"--out={tmp_path}/gpu", "--stages", "env", "flex"])
    assert [l["stage"] for l in seen] == ["env"]


# the optional packages hidden from every import: what a bare GPU machine may lack
WITHOUT_OPTIONAL = """
import runpy, sys
for name in ("tiktoken", "cffi", "tokenizers", "gguf", "safetensors", "tqdm", "matplotlib"):
    sys.modules[name] = None  # `import name` raises ModuleNotFoundError, as where it is not installed
sys.argv = ["experiments/gpu_check.py", *sys.argv[1:]]
runpy.run_path("experiments/gpu_check.py", run_name="__main__")
"""


@pytest.mark.slow
def test_the_dry_run_runs_every_stage_with_only_torch_and_numpy(tmp_path):
    run = subprocess.run([sys.executable, "-c", WITHOUT_OPTIONAL, "--device=cpu", f"--out={tmp_path}/gpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    got = {l["stage"]: l for l in lines(tmp_path / "gpu.jsonl")}
    assert list(got) == list(gpu_check.STAGES)
    assert all(l["ok"] for l in got.values()), {k: l.get("error") for k, l in got.items()}
    env = got["env"]["result"]
    assert {"tiktoken", "cffi", "tokenizers"} <= set(env["missing"])
    for config, r in got["train"]["result"].items():  # train.py itself: 6 iterations, a checkpoint, a resume of 2
        assert r["checkpoint_iter"] == 6 and r["resumed_checkpoint_iter"] == 8 and r["resumed_iters"] == [6, 7]
        assert r["tokens_per_s"] > 0 and r["mfu"] is None  # no peak on a CPU
    assert all(r["forward_max_abs"] < 1e-4 for r in got["flex"]["result"].values())
    for pos_emb, r in got["sweep"]["result"].items():
        assert len(r["rows"]) == 12 and r["recompile_limit_hits"] == 0
    assert set(got["smollm2"]["result"]) == {"rope", "fope-production", "yarn4"}
    assert (tmp_path / "gpu.md").exists()
