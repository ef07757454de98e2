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
