"""make demo / make extend QUICK=1: the laptop pipelines end to end, small, in temporary folders; the runner
they share: which finished runs it keeps, and the readings it renders from the results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoint
import train
from experiments import runner
from passkey import FILLER, KEY_PREFIX
from tinydata import write_random_chars

ROOT = Path(__file__).resolve().parent.parent
PASSKEY_CHARS = "".join(sorted(set(FILLER + KEY_PREFIX + "0123456789]. \n")))  # a vocabulary that spells passkeys


def experiment(name, tmp, *flags):
    """Run experiments/<name>.py --quick on the tiny data in tmp, from tmp: nothing is written into the checkout."""
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{name}.py"), "--quick", *flags,
                           f"--dataset={tmp / 'data'}", f"--out_root={tmp / 'out'}", f"--results={tmp / 'results'}"],
                          cwd=tmp, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    write_random_chars(tmp / "data", PASSKEY_CHARS, 40_000, 8_000)
    return tmp, experiment("demo", tmp, "--fresh")


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_and_reports_every_variant(quick_demo):
    tmp, proc = quick_demo
    for stage in ("1/4 data", "2/4 train", "3/4 eval", "4/4 write"):
        assert stage in proc.stdout
    results = tmp / "results" / "quick"
    plain = json.loads((results / "demo.json").read_text())
    assert set(plain["summary"]) == {"rope", "fope", "clamp-only", "alibi", "nope"}
    assert plain["info"]["groups"]["clamp-only"] == [f"{tmp}/out/demo_quick/clamp-only_s1"]
    assert plain["info"]["lengths"] == [64, 128, 256] and plain["info"]["machine"]
    yarn = json.loads((results / "demo_yarn.json").read_text())
    assert set(yarn["summary"]) == {"rope+yarn8", "fope+yarn8", "clamp-only+yarn8"}
    report = (results / "demo.md").read_text()
    assert "passkey accuracy" in report and "Stage times" in report and "clamp-only " in report
    timing = json.loads((results / "demo_timing.json").read_text())
    assert timing["total"] >= timing["train"] > 0
    clamp_only = torch.load(tmp / "out" / "demo_quick" / "clamp-only_s1" / "ckpt.pt", weights_only=True)
    assert clamp_only["model_args"]["pos_emb"] == "fope" and clamp_only["model_args"]["fope_fourier"] is False
    assert clamp_only["config"]["dataset"] == str(tmp / "data")
    (results / "demo.md").unlink()
    experiment("demo", tmp, "--report_only")  # the report comes from the JSON alone
    assert (results / "demo.md").read_text() == report


@pytest.mark.slow
def test_quick_extend_continues_the_quick_demo_runs_and_reports_every_arm_at_both_steps(quick_demo):
    tmp, _ = quick_demo
    proc = experiment("extend", tmp, "--fresh")
    assert f"{tmp}/out/demo_quick/rope_s1: already trained" in proc.stdout  # the parents are current: kept
    sweep = json.loads((tmp / "results" / "quick" / "extend.json").read_text())
    assert set(sweep["summary"]) == {"rope (L 64)", "fope (L 64)", *(f"{arm} @{step}" for arm in (
        "rope+yarn", "fope+yarn", "rope->fope", "fope->fope") for step in (40, 80))}
    assert sweep["info"]["train_len"] == 64 and sweep["info"]["lengths"] == [64, 128, 256]
    out = tmp / "out" / "extend_quick"
    half, full = (torch.load(out / d / "ckpt.pt", weights_only=True) for d in ("fope-fope_it40_s1", "fope-fope_s1"))
    assert half["iter_num"] == 40 and full["iter_num"] == 80 and full["model_args"]["block_size"] == 128
    assert half["parent"] == full["parent"] and half["parent"]["init_from"] == f"{tmp}/out/demo_quick/fope_s1"
    yarn = torch.load(out / "fope+yarn_s1" / "ckpt.pt", weights_only=True)["model_args"]["rope_scaling"]
    assert yarn == {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 64, "attention_factor": 1.0}
    rows = {(r["label"], r["length"]): r for r in sweep["rows"]}
    assert rows["rope->fope @80", 128]["passkey"] is not None and rows["rope->fope @80", 256]["passkey"] is None


@pytest.fixture
def finished_run(tmp_path):
    """A finished tiny run and the train.py argv that made it."""
    data_dir = write_random_chars(tmp_path / "data", "abcdefgh", 3000, 1000)
    argv = [f"--dataset={data_dir}", f"--out_dir={tmp_path / 'run'}", "--n_layer=1", "--n_head=2", "--n_embd=16",
            "--block_size=8", "--batch_size=2", "--max_iters=2", "--eval_interval=2", "--eval_iters=1",
            "--rotary_backend=eager"]
    train.main(argv)
    return str(tmp_path / "run"), argv


def test_a_finished_run_is_kept_only_while_its_resolved_config_is_unchanged(finished_run, monkeypatch):
    out_dir, argv = finished_run
    assert runner.stale_reason(out_dir, argv) is None  # kept
    assert runner.stale_reason(out_dir, [*argv, "--seed=2"]) == "config changed (seed)"  # another run
    assert runner.stale_reason(out_dir, [*argv, "--max_iters=3"]) == "config changed (max_iters)"
    with monkeypatch.context() as patch:  # train.py's defaults edited: no flag and no config file says so
        patch.setitem(train.DEFAULTS, "beta2", 0.95)
        assert runner.stale_reason(out_dir, argv) == "config changed (beta2)"
    assert runner.stale_reason(out_dir + "_never_trained", argv) == "not trained yet"


def test_a_knob_registered_after_the_run_leaves_it_current_unless_the_run_sets_it(finished_run, monkeypatch):
    """A new embedding's knob is a new config key: at its default it changes nothing the run computes."""
    out_dir, argv = finished_run
    monkeypatch.setitem(train.DEFAULTS, "newpe_power", 1.0)  # registered since the run was saved
    assert runner.stale_reason(out_dir, argv) is None
    assert runner.stale_reason(out_dir, [*argv, "--newpe_power=2.0"]) == "config changed (newpe_power)"
    monkeypatch.delitem(train.DEFAULTS, "fope_sigma")  # a key the run recorded, gone from train.py
    assert runner.stale_reason(out_dir, argv) == "config changed (fope_sigma)"


def test_a_run_made_by_other_sources_is_kept_while_it_computes_the_same(tmp_path, monkeypatch):
    data_dir = write_random_chars(tmp_path / "data", "abcdefgh", 3000, 1000)
    argv = [f"--dataset={data_dir}", f"--out_dir={tmp_path / 'run'}", "--n_layer=1", "--n_head=2", "--n_embd=16",
            "--block_size=8", "--batch_size=2", "--max_iters=5", "--eval_interval=5", "--eval_iters=1",
            "--rotary_backend=eager"]
    with monkeypatch.context() as patch:  # trained by other files (a new embedding in model.py, say)
        patch.setattr(checkpoint, "source_hashes", lambda *a: {"model.py": "0" * 64, "torch": "0"})
        train.main(argv)
    saved = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert saved["sources"] == [{"model.py": "0" * 64, "torch": "0"}] != [checkpoint.source_hashes()]
    assert len(saved["fingerprint"]["losses"]) == train.FINGERPRINT_ITERS == 3
    probes = []
    real_main = train.main
    monkeypatch.setattr(train, "main", lambda a: probes.append(real_main(a)) or probes[-1])
    assert runner.stale_reason(str(tmp_path / "run"), argv) is None  # current: it computes the same
    assert [len(losses) for losses in probes] == [3]  # the probe: 3 iterations, not the run's 5


def test_a_run_goes_stale_when_what_it_computes_changes(finished_run, monkeypatch):
    out_dir, argv = finished_run
    real_forward = train.GPT.forward

    def nudged(self, idx, targets=None, **kw):  # an edit to the model's arithmetic
        logits, loss = real_forward(self, idx, targets, **kw)
        return logits, None if loss is None else loss * (1 + 1e-6)

    with monkeypatch.context() as patch:
        patch.setattr(train.GPT, "forward", nudged)
        reason = runner.stale_reason(out_dir, argv)
    assert reason.startswith("what it computes changed (loss at iter 0: "), reason
    with monkeypatch.context() as patch:  # the schedule's arithmetic edited: the hash of every iteration's lr
        patch.setattr(train, "get_lr", lambda it, cfg: 1e-3 if it < 1 else 2e-3)
        assert runner.stale_reason(out_dir, argv) == "what it computes changed (its lr schedule)"
    assert runner.stale_reason(out_dir, argv) is None


def test_a_run_without_a_fingerprint_is_stale_and_a_failed_probe_says_why(finished_run, monkeypatch):
    out_dir, argv = finished_run
    saved = torch.load(Path(out_dir) / "ckpt.pt", weights_only=True)
    assert runner.computes_otherwise({k: v for k, v in saved.items() if k != "fingerprint"}).startswith(
        "no fingerprint of what it computes")
    monkeypatch.delitem(train.DEFAULTS, "beta2")  # a key today's train.py no longer takes
    assert runner.computes_otherwise(saved).startswith("its probe failed (")


def test_a_resumed_run_keeps_its_start_s_fingerprint_and_is_probed_from_its_start(finished_run, monkeypatch):
    out_dir, argv = finished_run
    first = torch.load(Path(out_dir) / "ckpt.pt", weights_only=True)["fingerprint"]
    monkeypatch.setattr(checkpoint, "source_hashes", lambda *a: {"fope.py": "0" * 64})  # resumed with other code
    train.main([*argv, "--init_from=resume", "--max_iters=4", "--lr_decay_iters=2"])
    resumed = torch.load(Path(out_dir) / "ckpt.pt", weights_only=True)
    assert resumed["fingerprint"] == first and len(resumed["sources"]) == 2  # provenance: both
    assert runner.stale_reason(out_dir, [*argv, "--init_from=resume", "--max_iters=4", "--lr_decay_iters=2"]) is None


# -----------------------------------------------------------------------------
# readings: the prose of results/<experiment>.md, its numbers filled from the experiment's JSON


def test_a_reading_placeholder_is_filled_from_the_json_and_a_missing_path_stops_the_report():
    docs = {"demo": {"summary": {"fope": {"1024": {"ppl": {"mean": 12.3456}}}}, "seeds": [1, 2]}}
    text = "FoPE {{demo/summary/fope/1024/ppl/mean:.2f}} over seeds {{demo/seeds/1}}; {{demo/seeds}}"
    assert runner.render_reading(text, docs) == "FoPE 12.35 over seeds 2; [1, 2]"
    with pytest.raises(runner.ReadingError, match="no '512'"):
        runner.render_reading("{{demo/summary/fope/512/ppl/mean}}", docs)


def committed(path):
    with open(ROOT / "results" / path) as f:
        return json.load(f)


@pytest.mark.parametrize("reading, docs", [
    ("demo", lambda: {"demo": committed("demo.json"), "demo_yarn": committed("demo_yarn.json"),
                      "timing": committed("demo_timing.json")}),
    ("extend", lambda: {"extend": committed("extend.json"), "timing": committed("extend_timing.json")}),
    ("ablate", lambda: {"ablate": committed("ablate.json"), "timing": committed("ablate_timing.json"),
                        "geometry": committed("ablate_geometry.json")}),
    ("ablate_geometry", lambda: committed("ablate_geometry.json")),  # holds its own "timing"
    ("lens", lambda: {"lens": committed("lens/lens.json")}),
    ("bench", lambda: {"bench": committed("bench.json")}),
])
def test_every_reading_renders_against_the_committed_results(reading, docs):
    with open(ROOT / "experiments" / "readings" / f"{reading}.md") as f:
        text = runner.render_reading(f.read(), docs())
    assert "{{" not in text and len(text) > 200


def test_the_committed_reports_are_what_report_only_writes_from_the_committed_json(tmp_path, monkeypatch):
    """results/<experiment>.md is written by its command: regenerated from the committed JSON, it is unchanged
    (in this process: the scripts' main, as their __main__ calls it, without four more imports of torch)."""
    import importlib
    results = tmp_path / "results"
    results.mkdir()
    for name in ("demo.json", "demo_yarn.json", "demo_timing.json", "extend.json", "extend_timing.json",
                 "ablate_geometry_timing.json", "ablate_geometry_lens.json", "convert.json", "convert_timing.json",
                 *[f"ablate_geometry_{g}.json" for g in ("theta150", "L512", "theta50")]):
        (results / name).write_bytes((ROOT / "results" / name).read_bytes())
    monkeypatch.chdir(tmp_path)
    for name, report in (("demo", "demo"), ("extend", "extend"), ("geometry", "ablate_geometry"), ("convert", "convert")):
        importlib.import_module(f"experiments.{name}").main(["--report_only", f"--results={results}"])
        assert (results / f"{report}.md").read_text() == (ROOT / "results" / f"{report}.md").read_text(), name
    assert not os.path.exists(tmp_path / "out")
