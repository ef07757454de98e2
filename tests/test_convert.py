"""make convert (experiments/convert.py) on a tiny pretrained HF folder: identical batches for every arm, step-0
values equal to make pretrained's, and a resume that continues an interrupted run exactly."""

import json

import numpy as np
import pytest

from experiments import convert
from experiments import pretrained as make_pretrained
from pretrained import from_pretrained
from test_runs_kept import write_hf_folder, write_token_data
from test_pretrained import TOKENS


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    folder = write_hf_folder(root / "tiny-llama", None)  # L_train 32, GQA 4 on 2 heads, head_dim 8
    data = write_token_data(root / "data", {"tokenizer": "pretrained", "source": str(folder), "vocab_size": len(TOKENS)})
    return folder, data


def run(source, out, *extra):
    folder, data = source
    convert.main([f"--source={folder}", f"--dataset={data}", f"--out_root={out}", f"--results={out / 'results'}",
                  "--steps=4", "--window=16", "--batch=2", "--evals=2", "--windows=2", "--longest=4", "--trials=0", "--warmup=1",
                  "--dtype=float32", *extra])
    return json.loads((out / "results" / "convert.json").read_text())


@pytest.mark.slow  # seconds each: CI's make test-all runs them, make test leaves them
def test_every_arm_trains_on_the_same_batches_and_is_compared_with_the_control(source, tmp_path):
    doc = run(source, tmp_path, "--arms", "rope", "clamp", "fope", "nope", "yarn", "cope")
    batches = [m["batches"] for m in doc["arms"].values()]
    assert doc["same_batches"] and len(batches[0]) == 4 and all(b == batches[0] for b in batches)
    assert [p["step"] for p in doc["arms"]["fope"]["curve"]] == [0, 2, 4]
    scored = [sorted(map(int, p["lengths"])) for p in doc["arms"]["fope"]["curve"]]  # past L_train 32: at the end only
    assert scored == [[8, 32], [8, 32], [8, 32, 64, 128]]
    losses = {a: m["loss"] for a, m in doc["arms"].items()}
    assert losses["rope"] != losses["nope"]  # the arms differ in what they are, not in what they saw
    pairs = {(c["a"], c["b"]) for c in doc["claims"]}
    assert {("clamp", "rope"), ("fope", "rope"), ("nope", "rope"), ("yarn", "rope"), ("fope", "yarn"), ("cope", "rope")} == pairs
    assert losses["cope"] != losses["clamp"]  # CoPE's taper slows the frequencies the clamp cuts: another model
    assert "No reading" in (tmp_path / "results" / "convert.md").read_text()  # the reading reads make convert's run
    assert all(c["unit"] == "windows" and c["verdict"] in ("better", "worse", "equivalent", "undecided") for c in doc["claims"])
    assert (tmp_path / "results" / "convert.md").read_text().count("| fope | ") == 3


@pytest.mark.slow  # seconds each: CI's make test-all runs them, make test leaves them
@pytest.mark.parametrize("arm", ["rope", "yarn", "clamp"])
def test_step_0_is_make_pretraineds_training_free_value_on_the_same_windows(source, tmp_path, arm):
    folder, data = source
    doc = run(source, tmp_path, "--arms", arm, "--steps=1", "--evals=1", "--long_evals=ends")
    start = doc["arms"][arm]["curve"][0]
    assert convert.arms(32)[arm] == make_pretrained.arms(32)[arm]
    model = from_pretrained(folder, **make_pretrained.arms(32)[arm])
    from data.shards import TokenShards
    windows = convert.eval_windows(TokenShards(data, "val"), [8, 32, 64, 128], 2)[128]  # make pretrained's way:
    losses = np.stack([make_pretrained.window_losses(model, w, "float32").numpy() for w in windows])  # prefixes
    for L, row in make_pretrained.perplexity_rows(losses, [8, 32, 64, 128], 32).items():
        expected = row["per_window" if L <= 32 else "per_window_beyond"]
        np.testing.assert_allclose(start["lengths"][str(L)]["per_window"], expected, rtol=1e-12)


@pytest.mark.slow  # seconds each: CI's make test-all runs them, make test leaves them
def test_an_interrupted_run_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(source, tmp_path, monkeypatch):
    whole = run(source, tmp_path / "whole", "--arms", "rope", "fope")
    finished = tmp_path / "whole" / "convert" / "rope"
    assert (finished / "done.json").is_file() and not (finished / "state.pt").exists()  # its curve, not its weights
    evaluate, calls = convert.evaluate, []

    def interrupted(*args, **kw):  # Ctrl-C at fope's second evaluation: rope is done, fope saved at step 0
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return evaluate(*args, **kw)

    monkeypatch.setattr(convert, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(source, tmp_path / "cut", "--arms", "rope", "fope")
    monkeypatch.setattr(convert, "evaluate", evaluate)
    resumed = run(source, tmp_path / "cut", "--arms", "rope", "fope")
    for arm in ("rope", "fope"):
        assert resumed["arms"][arm]["loss"] == whole["arms"][arm]["loss"]
        assert resumed["arms"][arm]["curve"] == whole["arms"][arm]["curve"]
    with pytest.raises(SystemExit, match="other settings: pass --fresh"):
        run(source, tmp_path / "cut", "--arms", "rope", "--lr=1e-4")


def test_unknown_arms_are_refused_in_one_line(source, tmp_path):
    with pytest.raises(SystemExit, match=r"--arms: unknown \['rpoe'\]; pick from rope, yarn"):
        run(source, tmp_path, "--arms", "rpoe")
    with pytest.raises(SystemExit, match=r"the val split holds 7 windows of 128 tokens, --windows asks 50"):
        run(source, tmp_path, "--windows=50")


@pytest.mark.slow
def test_the_gpu_recipe_runs_on_a_cpu_compiled_in_bfloat16(source, tmp_path):
    doc = run(source, tmp_path, "--arms", "rope", "fope", "--compile", "--dtype=bfloat16", "--steps=2", "--evals=1")
    assert doc["info"]["dtype"] == "bfloat16" and all(np.isfinite(m["loss"]).all() for m in doc["arms"].values())


@pytest.mark.slow
def test_make_convert_quick_on_smollm2_writes_its_report(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "experiments/convert.py", "--quick", "--device=cpu", f"--results={tmp_path}",
                          f"--out_root={tmp_path / 'out'}"], cwd=root, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    doc = json.loads((tmp_path / "quick" / "convert.json").read_text())
    assert list(doc["arms"]) == ["rope", "fope"] and doc["same_batches"]
    assert all(np.isfinite(m["loss"]).all() and len(m["curve"]) == 2 for m in doc["arms"].values())
    assert "| fope vs rope | ppl at 256 |" in (tmp_path / "quick" / "convert.md").read_text()  # 2 windows' prefixes


@pytest.mark.parametrize("flags, message", [
    (["--steps=-1"], "--steps must be >= 1 (a step-0-only run would report untrained arms), got -1"),
    (["--steps=0"], "--steps must be >= 1 (a step-0-only run would report untrained arms), got 0"),
    (["--windows=-2"], "--windows must be >= 1, got -2"),
    (["--windows=0"], "--windows must be >= 1, got 0"),
    (["--trials=-1"], "--trials must be >= 0 (0: no passkey), got -1"),
    (["--evals=0"], "--evals must be >= 1, got 0"),
    (["--batch=0"], "--batch must be >= 1, got 0"),
    (["--depths", "2"], "--depths must be in [0, 1], got [2.0]"),
    (["--arms", "rope", "rope"], "--arms must not list a value twice, got ['rope', 'rope']"),
    (["--arms", "bogus"], "--arms: unknown ['bogus']; pick from rope, yarn, clamp, fope, nope, fope+yarn, cope"),
    (["--seeds", "-3"], "--seeds must be >= 0, got [-3]"),
])
def test_counts_and_arms_are_checked_before_the_data_or_the_model(tmp_path, monkeypatch, flags, message):
    def no_work(*_, **__):
        raise AssertionError("work began before the checks")

    monkeypatch.setattr(convert, "resolve_device", no_work)  # the first call of the run's work
    with pytest.raises(SystemExit) as stop:
        convert.main([f"--out_root={tmp_path}", f"--results={tmp_path}", *flags])
    assert str(stop.value.code) == message


def test_the_arm_names_checked_are_the_arms_there_are():
    assert tuple(convert.arms(8192)) == convert.ARMS


def saved_doc(arms, trials):
    arm = {"batches": [1, 2], "step_seconds": [0.5], "loss": [3.0, 2.0], "curve": [
        {"step": s, "tokens": s * 32, "lengths": {"8": {"metric": "ppl", "per_window": [5.0, 6.0], "mean": 5.5}},
         "passkey": {"8": {"per_document": [1.0, 0.0], "mean": 0.5}} if trials else {}} for s in (0, 2)]}
    info = {"source": "tiny", "train_len": 8, "steps": 2, "batch": 2, "window": 16, "lr": 1e-4, "min_lr": 1e-5,
            "dtype": "float32", "machine": "a CPU", "windows": 2, "lengths": [8], "trials": trials, "depths": [0.5],
            "passkey_lengths": [8] if trials else [], "long_evals": "end", "quick": False}
    return {"info": info, "same_batches": True, "arms": {a: arm for a in arms}}


@pytest.mark.parametrize("trials", [0, 1])
def test_the_report_table_rows_have_as_many_cells_as_its_separator(tmp_path, trials):
    convert.write(str(tmp_path), saved_doc(["rope", "fope"], trials))
    table = [line for line in (tmp_path / "convert.md").read_text().splitlines() if line.startswith("| arm | step")]
    lines = (tmp_path / "convert.md").read_text().splitlines()
    start = lines.index(table[0])
    cells = [line.count("|") for line in lines[start:start + 6]]
    assert cells == [cells[0]] * 6 and cells[0] == 5 + trials and "|  |" not in "\n".join(lines)


def test_fingerprints_are_compared_only_between_arms_and_no_arms_is_refused(tmp_path):
    convert.write(str(tmp_path), saved_doc(["rope"], 0))
    assert "one arm, no fingerprints to compare" in (tmp_path / "convert.md").read_text()
    with pytest.raises(SystemExit) as stop:
        convert.write(str(tmp_path), saved_doc([], 0))
    assert str(stop.value.code) == (f"{tmp_path}/convert.json holds no arms (damaged?): run experiments/convert.py "
                                    "again (without --report_only)")


def test_a_damaged_convert_json_is_one_line_naming_it(tmp_path):
    doc = saved_doc(["rope", "fope"], 0)
    doc["arms"]["rope"]["curve"] = ["damaged"]  # a string where the report reads a dict
    (tmp_path / "convert.json").write_text(json.dumps(doc))
    with pytest.raises(SystemExit) as stop:
        convert.main([f"--results={tmp_path}", "--report_only"])
    assert str(stop.value.code).startswith(f"{tmp_path}/convert.json is damaged (")
    assert str(stop.value.code).endswith("): run the experiment again (without --report_only)")


@pytest.mark.parametrize("flags, message", [(["--windows=0"], "--windows must be >= 1 (default: all of them), got 0"),
                                            (["--trials=0"], "--trials must be >= 1, got 0"),
                                            (["--position_bin=0"], "--position_bin must be >= 1, got 0")])
def test_make_pretraineds_counts_are_checked_before_any_work(tmp_path, flags, message):
    with pytest.raises(SystemExit) as stop:
        make_pretrained.main([f"--results={tmp_path}", "--source=nowhere", *flags])
    assert str(stop.value.code) == message and list(tmp_path.iterdir()) == []
