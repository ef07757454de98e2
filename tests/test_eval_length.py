"""eval_length.py on tiny random checkpoints: the output schema, seeds grouped, errors and skips."""

import csv
import json

import numpy as np
import pytest

import eval_length
import train
from data.shards import write_shard
from passkey import FILLER, KEY_PREFIX

CHARS = "".join(sorted(set(FILLER + KEY_PREFIX + "0123456789]. \n")))
L = 64  # the tiny models' training length; a passkey document fits in it


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny checkpoints written by train.py itself: fope (two seeds), rope, learned."""
    root = tmp_path_factory.mktemp("sweep")
    data_dir = root / "data"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    write_shard(data_dir / "train_000000.bin", rng.integers(0, len(CHARS), 20000), len(CHARS))
    write_shard(data_dir / "val_000000.bin", rng.integers(0, len(CHARS), 3000), len(CHARS))
    (data_dir / "meta.json").write_text(json.dumps({"tokenizer": "char", "vocab_size": len(CHARS), "chars": CHARS}))
    runs = {"fope_s1": ["--pos_emb=fope", "--seed=1"], "fope_s2": ["--pos_emb=fope", "--seed=2"],
            "rope_s1": ["--pos_emb=rope", "--seed=1"], "learned_s1": ["--pos_emb=learned", "--seed=1"]}
    for name, flags in runs.items():
        train.main([f"--dataset={data_dir}", f"--out_dir={root / name}", "--n_layer=1", "--n_head=2", "--n_embd=32",
                    f"--block_size={L}", "--batch_size=4", "--max_iters=2", "--eval_interval=2", "--eval_iters=1",
                    "--passkey_frac=0.5", "--rotary_backend=eager", *flags])
    return root, data_dir


def sweep(ckpts, names, out, *extra):
    root, data_dir = ckpts
    eval_length.main(["--ckpt", *[str(root / n) for n in names], "--data_dir", str(data_dir), "--out", str(out),
                      "--tokens", "1280", "--trials", "2", "--depths", "0", "1", *extra])
    with open(f"{out}.json") as f:
        return json.load(f)


def test_sweep_writes_the_documented_csv_json_and_plots(ckpts, tmp_path):
    out = tmp_path / "res"
    result = sweep(ckpts, ["fope_s1", "fope_s2", "rope_s1", "learned_s1"], out, "--multipliers", "1", "2")
    with open(f"{out}.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 2
    for column in ("ckpt", "label", "pos_emb", "seed", "scaling", "train_len", "length", "ppl", "ppl_beyond",
                   "windows", "passkey", "passkey_digits", "passkey_by_depth", "note"):
        assert column in rows[0]
    by = {(r["ckpt"].split("/")[-1], int(r["length"])): r for r in rows}
    # the same token budget at every length: 1280 tokens = 20 windows of 64, 10 of 128
    assert by["fope_s1", L]["windows"] == "20" and by["fope_s1", 2 * L]["windows"] == "10"
    assert by["fope_s1", L]["ppl_beyond"] == "" and float(by["fope_s1", 2 * L]["ppl_beyond"]) > 1
    assert 0 <= float(by["rope_s1", 2 * L]["passkey"]) <= 1
    assert set(json.loads(by["rope_s1", 2 * L]["passkey_by_depth"])) == {"0", "1"}
    # learned positions: skipped past block_size, said in the row, the sweep goes on
    assert by["learned_s1", 2 * L]["note"].startswith("skipped") and by["learned_s1", 2 * L]["ppl"] == ""
    # seeds of one variant are aggregated: mean within [min, max], n = 2
    stats = result["summary"]["fope"][str(2 * L)]["ppl"]
    assert stats["n"] == 2 and stats["min"] <= stats["mean"] <= stats["max"]
    assert set(result["summary"]) == {"fope", "rope", "learned"}
    assert result["info"]["lengths"] == [L, 2 * L] and result["info"]["peak_rss_mb"] > 0
    assert len(result["per_position"]["loss"]["fope"]) == 2 * L
    for png in (f"{out}.png", f"{out}_positions.png"):
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_yarn_at_factor_one_leaves_results_unchanged(ckpts, tmp_path):
    plain = sweep(ckpts, ["fope_s1", "rope_s1"], tmp_path / "plain", "--multipliers", "1", "4")
    yarn = sweep(ckpts, ["fope_s1", "rope_s1"], tmp_path / "yarn", "--multipliers", "1", "4",
                 "--rope_scaling", "yarn", "--factor", "1")
    for a, b in zip(plain["rows"], yarn["rows"]):
        assert a["ppl"] == pytest.approx(b["ppl"], rel=1e-5) and a["passkey"] == b["passkey"]
    assert {r["label"] for r in yarn["rows"]} == {"fope+yarn1", "rope+yarn1"}
    # and a real factor changes them
    yarn8 = sweep(ckpts, ["rope_s1"], tmp_path / "yarn8", "--multipliers", "4", "--rope_scaling", "yarn", "--factor", "8")
    assert yarn8["rows"][0]["ppl"] != plain["rows"][3]["ppl"]


def test_a_missing_checkpoint_is_a_one_line_error(ckpts, tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at .*nothing_here: train one") as err:
        sweep(ckpts, ["rope_s1", "nothing_here"], tmp_path / "res")
    assert "\n" not in str(err.value)


def test_a_length_longer_than_the_val_split_is_skipped_with_a_note(ckpts, tmp_path):
    result = sweep(ckpts, ["rope_s1"], tmp_path / "res", "--lengths", str(L), "5000")
    long = [r for r in result["rows"] if r["length"] == 5000][0]
    assert long["ppl"] is None and "fewer than one window" in long["note"]
    assert result["rows"][0]["ppl"] > 1
