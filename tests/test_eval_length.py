"""eval_length.py on tiny random checkpoints: the output schema, its numbers recomputed, which checkpoints
are seeds of one run, the only skips allowed, and one-line errors."""

import csv
import json
import math
import os

import numpy as np
import pytest
import torch

import eval_length
import runs
import train
from checkpoint import build_model, load_checkpoint
from data.shards import TokenShards
from tinydata import write_random_chars
from data.tokenizer import get_tokenizer
from passkey import FILLER, KEY_PREFIX, PasskeyDocs, score

CHARS = "".join(sorted(set(FILLER + KEY_PREFIX + "0123456789]. \n")))
L = 64  # the tiny models' training length; a passkey document fits in it


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny checkpoints written by train.py itself: fope (two seeds), rope, learned, and fope runs that
    differ from fope_s1 in one setting each (sigma 0, a learning rate)."""
    root = tmp_path_factory.mktemp("sweep")
    data_dir = write_random_chars(root / "data", CHARS, 20000, 3000)
    runs = {"fope_s1": ["--pos_emb=fope", "--seed=1"], "fope_s2": ["--pos_emb=fope", "--seed=2"],
            "rope_s1": ["--pos_emb=rope", "--seed=1"], "learned_s1": ["--pos_emb=learned", "--seed=1"],
            "fope_sigma0_s1": ["--pos_emb=fope", "--fope_sigma=0.0", "--seed=1"],
            "fope_lr_s1": ["--pos_emb=fope", "--learning_rate=0.003", "--seed=1"]}
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
    assert by["fope_s1", L]["ppl_beyond"] == ""  # the numbers themselves: test_sweep_numbers_match_...
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


def test_a_length_longer_than_the_val_split_is_skipped_and_the_table_says_so(ckpts, tmp_path, capsys):
    result = sweep(ckpts, ["rope_s1"], tmp_path / "res", "--lengths", str(L), "5000")
    long = [r for r in result["rows"] if r["length"] == 5000][0]
    assert long["ppl"] is None and long["passkey"] is None
    assert long["note"] == "skipped: no val shard fills 5000 tokens and a target"
    assert result["rows"][0]["ppl"] is not None and result["rows"][0]["note"] == ""
    assert "rope at 5000: skipped: no val shard fills 5000 tokens" in capsys.readouterr().out  # the table


# -----------------------------------------------------------------------------
# the numbers: each view recomputed plainly


def plain_perplexity(model, data, length, train_len, n_windows):
    """exp(mean loss) over all positions and over positions >= train_len, one window at a time."""
    losses = []
    for window in data.windows(length):
        w = torch.from_numpy(window)[None]
        with torch.no_grad():
            losses.append(model(w[:, :-1], w[:, 1:], reduction="none")[1][0].double())
        if len(losses) == n_windows:
            break
    losses = torch.stack(losses)  # (windows, length)
    return math.exp(losses.mean()), math.exp(losses[:, train_len:].mean())


def plain_passkey(model, tok, length, depths, trials, seed):
    """Exact-match accuracy over the same documents, one at a time, greedy answer token by token."""
    docs, rng, hits = PasskeyDocs(tok), np.random.default_rng(seed), []
    for depth in depths:
        keys = [docs.random_key(rng) for _ in range(trials)]
        for key in keys:
            ids, answer_start, _ = docs.build(length, depth, key)
            with torch.no_grad():
                logits, _ = model(torch.tensor([ids]), torch.tensor([ids]))
            guess = tok.decode(logits[0, answer_start - 1:length - 1].argmax(-1).tolist())
            hits.append(score(guess, key)[0])
    return float(np.mean(hits)), hits


def test_sweep_numbers_match_a_plain_recomputation(ckpts, tmp_path):
    root, data_dir = ckpts
    result = sweep(ckpts, ["rope_s1"], tmp_path / "res", "--multipliers", "1", "2", "--trials", "3", "--depths", "0", "1")
    checkpoint = load_checkpoint(root / "rope_s1")
    model = build_model(checkpoint, root / "rope_s1").eval()
    data = TokenShards(data_dir, "val")
    tok = get_tokenizer(checkpoint["meta"])
    for row in result["rows"]:
        length = row["length"]
        ppl, ppl_beyond = plain_perplexity(model, data, length, L, 1280 // length)
        assert row["ppl"] == pytest.approx(ppl, rel=1e-6)
        assert row["ppl_beyond"] == (None if length == L else pytest.approx(ppl_beyond, rel=1e-6))
        passkey, hits = plain_passkey(model, tok, length, [0, 1], 3, seed=1234)
        assert row["passkey"] == passkey and row["passkey_by_depth"] == {"0": np.mean(hits[:3]), "1": np.mean(hits[3:])}
    assert result["rows"][1]["ppl_beyond"] != result["rows"][1]["ppl"]  # the two views differ at 2 L_train


class KnownLossModel(torch.nn.Module):
    """A 'model' whose loss at position t is (t + 1) ** 2, whatever the tokens."""

    def token_losses(self, idx, targets):
        B, T = idx.shape
        return (torch.arange(T, dtype=torch.float32) + 1)[None].expand(B, T) ** 2


def test_beyond_train_len_view_averages_exactly_the_positions_from_train_len_on(ckpts):
    data = TokenShards(ckpts[1], "val")
    out = eval_length.perplexity(KnownLossModel(), data, length=8, train_len=5, tokens=64, device="cpu")
    assert out["windows"] == 8
    assert out["per_position"] == [1, 4, 9, 16, 25, 36, 49, 64]
    assert out["loss_beyond"] == (36 + 49 + 64) / 3  # positions 5, 6, 7: >= train_len, 0-based
    assert out["loss"] == sum(out["per_position"]) / 8


class ParrotModel(torch.nn.Module):
    """Given a whole document, predicts its true next token (so retrieves every key), except in documents
    whose token sum is divisible by 3, where it predicts token 0 ('\\n', never a digit) everywhere."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size
        self.head = torch.nn.Identity()  # passkey scoring reads head(hidden_states(idx)) where the answer is

    def hidden_states(self, idx):
        following = torch.roll(idx, -1, dims=1)
        following[idx.sum(1) % 3 == 0] = 0
        return torch.nn.functional.one_hot(following, self.vocab_size).float()


def test_passkey_accuracy_scores_each_document_by_its_greedy_answer_across_batches():
    tok = get_tokenizer({"tokenizer": "char", "vocab_size": len(CHARS), "chars": CHARS})
    docs, length, depths, trials = PasskeyDocs(tok), 80, [0.0, 0.5, 1.0], 7
    rng = np.random.default_rng(5)
    expected = {}
    for depth in depths:  # the same documents, drawn in the same order
        built = [docs.build(length, depth, docs.random_key(rng))[0] for _ in range(trials)]
        expected[f"{depth:g}"] = np.mean([sum(ids) % 3 != 0 for ids in built])
    assert len(set(expected.values())) > 1  # the depths differ, so a wrong average would show
    out = eval_length.passkey_accuracy(ParrotModel(len(CHARS)), docs, tok, length, depths, trials, seed=5,
                                       device="cpu", batch_tokens=3 * length)  # batches of 3, 3, 1 documents
    assert out["passkey_by_depth"] == pytest.approx(expected)
    assert out["passkey"] == pytest.approx(np.mean(list(expected.values())))


# -----------------------------------------------------------------------------
# which checkpoints are seeds of one run


def test_runs_differing_in_any_training_setting_are_separate_rows_named_by_the_difference(ckpts, tmp_path):
    names = ["fope_s1", "fope_s2", "fope_sigma0_s1", "fope_lr_s1", "rope_s1"]
    result = sweep(ckpts, names, tmp_path / "res", "--multipliers", "1", "--trials", "0")
    labels = {r["ckpt"].rsplit("/", 1)[1]: r["label"] for r in result["rows"]}
    assert labels == {"fope_s1": "fope", "fope_s2": "fope", "fope_sigma0_s1": "fope fope_sigma=0.0",
                      "fope_lr_s1": "fope learning_rate=0.003", "rope_s1": "rope"}
    assert result["summary"]["fope"][str(L)]["ppl"]["n"] == 2  # the two seeds, and only they
    assert result["summary"]["fope learning_rate=0.003"][str(L)]["ppl"]["n"] == 1
    assert sorted(result["info"]["groups"]["fope"]) == sorted(str(ckpts[0] / n) for n in ["fope_s1", "fope_s2"])


def test_label_names_a_run_and_cannot_join_two_runs(ckpts, tmp_path):
    root = ckpts[0]
    result = sweep(ckpts, ["fope_s1", "fope_s2", "fope_sigma0_s1"], tmp_path / "res", "--multipliers", "1",
                   "--trials", "0", f"--label=clamp-ish={root / 'fope_sigma0_s1'}", f"--label=mine={root / 'fope_s2'}")
    assert set(result["summary"]) == {"clamp-ish", "mine"}  # naming one seed names its run
    with pytest.raises(SystemExit) as stop:
        sweep(ckpts, ["fope_s1", "fope_sigma0_s1"], tmp_path / "res2",
              f"--label=both={root / 'fope_s1'},{root / 'fope_sigma0_s1'}")
    assert str(stop.value.code) == ("--label both names checkpoints of different runs (they differ in fope_sigma): "
                                    "give each run its own label")
    assert not os.path.exists(f"{tmp_path / 'res2'}.json")


def settings(**changes):
    base = {"pos_emb": "fope", "fope_sigma": 0.3, "rope_theta": 10000.0, "learning_rate": 1e-3, "iter_num": 10}
    return {**base, **changes}


def test_settings_a_position_embedding_never_reads_do_not_split_its_runs():
    class Config:  # the model fields of a rope and a fope checkpoint that set fope_sigma
        pass

    def run(pos_emb, sigma):
        checkpoint = {"config": {"seed": 1, "out_dir": "x", "fope_sigma": sigma, "pos_emb": pos_emb}, "iter_num": 5}
        model = torch.nn.Module()
        model.config = train.GPTConfig.from_dict({"pos_emb": pos_emb, "fope_sigma": sigma})  # as a checkpoint loads
        return runs.run_settings(checkpoint, model)

    assert run("rope", 0.3) == run("rope", 0.1) and "fope_sigma" not in run("rope", 0.3)
    assert run("fope", 0.3) != run("fope", 0.1) and "seed" not in run("fope", 0.3)
    labels = runs.label_runs({"a": settings(), "b": settings(iter_num=20), "c": settings(pos_emb="rope")}, {})
    assert labels == {"a": "fope", "b": "fope iter_num=20", "c": "rope"}  # shown where it differs from most runs
    labels = runs.label_runs({"a": settings(), "b": settings(iter_num=20)}, {})
    assert labels == {"a": "fope iter_num=10", "b": "fope iter_num=20"}  # no value most runs share: both shown
    labels = runs.label_runs({"a": settings(), "b": settings(), "c": settings(fope_sigma=0.1)}, {}, "+yarn8")
    assert labels == {"a": "fope+yarn8", "b": "fope+yarn8", "c": "fope fope_sigma=0.1+yarn8"}  # a, b: seeds


# -----------------------------------------------------------------------------
# errors: only an unfillable length is skipped; everything else stops the sweep


def test_an_error_inside_the_sweep_propagates_instead_of_becoming_a_skipped_row(ckpts, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("fope_ext.rotate: dtype not supported")  # e.g. the kernel's input check

    monkeypatch.setattr(eval_length, "perplexity", refuse)
    with pytest.raises(ValueError, match="fope_ext.rotate"):
        sweep(ckpts, ["rope_s1"], tmp_path / "res", "--multipliers", "1")
    assert not os.path.exists(f"{tmp_path / 'res'}.json")


def truncated_copy(ckpts, tmp_path):
    path = tmp_path / "truncated" / "ckpt.pt"
    path.parent.mkdir()
    raw = (ckpts[0] / "rope_s1" / "ckpt.pt").read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def foreign_file(ckpts, tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)  # a torch file, but not train.py's
    return path


@pytest.mark.parametrize("case, args, message", [
    ("lengths", ["--lengths", "10000000"], "no length in [10000000] fits the val split (its longest shard fills 2999 "
                                           "tokens and a target): pass --lengths <= 2999"),
    ("lengths", ["--multipliers", "-1"], "--multipliers must be > 0, got [-1.0]"),
    ("lengths", ["--multipliers", "0"], "--multipliers must be > 0, got [0.0]"),
    ("lengths", ["--multipliers", "0.001"], "--multipliers 0.001 give length 0 at L_train 64: use multipliers >= 0.0156"),
    ("lengths", ["--lengths", "0", "64"], "--lengths must be >= 1, got [0, 64]"),
    ("values", ["--tokens", "0"], "--tokens must be >= 1, got 0"),
    ("values", ["--trials", "-1"], "--trials must be >= 0 (0 skips passkey), got -1"),
    ("values", ["--seed", "-1"], "--seed must be >= 0, got -1"),
    ("values", ["--depths", "1.5"], "--depths must be in [0, 1], got [1.5]"),
    ("values", ["--rope_scaling", "yarn", "--factor", "0.5"], "--factor must be >= 1, got 0.5"),
    ("values", ["--rope_scaling", "ntk", "--no_attn_temperature"],
     "--no_attn_temperature applies to --rope_scaling yarn only, got True"),
    ("values", ["--label", "nameonly"], "--label nameonly: write --label NAME=CKPT[,CKPT...]"),
    ("values", ["--label", "x=out/elsewhere"], "--label x=out/elsewhere: out/elsewhere is not one of the --ckpt checkpoints"),
    ("files", ["--ckpt", "{rope}", "{rope}"], "--ckpt lists {rope} twice: it would count as two seeds"),
    ("files", ["--ckpt", "{truncated}"], "{truncated} is not a readable checkpoint (PytorchStreamReader failed reading "
                                         "zip archive: failed finding central directory): damaged or cut short; "
                                         "pass another"),
    ("files", ["--ckpt", "{foreign}"], "{foreign} has no model, model_args, config, iter_num, meta: not a checkpoint "
                                       "written by train.py"),
    ("files", ["--out", "{tmp}/a_file/res"], "cannot make {tmp}/a_file for --out {tmp}/a_file/res (File exists): "
                                             "pick another --out"),
    ("files", ["--out", "{tmp}/"], "--out must name files (results/NAME), not a directory, got {tmp}/"),
    ("devices", ["--device", "cuda"], "device cuda: this torch ({torch}) sees no CUDA GPU; use --device=cpu (or auto)"),
    ("devices", ["--device", "gpu"], "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
])
def test_bad_input_is_one_line_exits_nonzero_and_writes_nothing(ckpts, tmp_path, monkeypatch, case, args, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    root, data_dir = ckpts
    (tmp_path / "a_file").write_text("")
    paths = {"rope": root / "rope_s1", "truncated": truncated_copy(ckpts, tmp_path),
             "foreign": foreign_file(ckpts, tmp_path), "tmp": tmp_path, "torch": torch.__version__}
    args = [a.format(**paths) for a in args]
    ckpt_args = ["--ckpt", str(root / "rope_s1")] if "--ckpt" not in args else []
    out = ["--out", str(tmp_path / "res")] if "--out" not in args else []
    with pytest.raises(SystemExit) as stop:
        eval_length.main([*ckpt_args, "--data_dir", str(data_dir), "--tokens", "1280", *out, *args])
    assert str(stop.value.code) == message.format(**paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a_file", "truncated", "foreign.pt"])


def test_an_all_skipped_sweep_plots_without_warnings(tmp_path):
    """A learned model swept only past its block_size draws no line: no empty legend, no matplotlib warning."""
    import warnings

    summary = {"learned": {128: {"note": "skipped: learned positions stop at block_size 64"}}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runs.plot_sweep(summary, {}, 64, str(tmp_path / "sweep"))
    assert (tmp_path / "sweep.png").is_file() and (tmp_path / "sweep_positions.png").is_file()


@pytest.fixture(scope="module")
def own_chars(tmp_path_factory):
    """A run of a user's own char dataset, whose vocabulary lacks the passkey's characters, with the default
    rotary backend (the C kernel's on CPU, which takes no float16)."""
    root = tmp_path_factory.mktemp("own")
    data_dir = write_random_chars(root / "data", "abcdefgh \n", 6000, 3000)
    train.main([f"--dataset={data_dir}", f"--out_dir={root / 'run'}", "--n_layer=1", "--n_head=2", "--n_embd=32",
                f"--block_size={L}", "--batch_size=4", "--max_iters=1", "--eval_interval=1", "--eval_iters=1",
                "--passkey_frac=0", "--pos_emb=fope"])
    return root / "run", data_dir


@pytest.mark.parametrize("flags, message", [
    ([], "{run}'s data cannot spell passkey documents (character 'T' is not in this dataset's char vocabulary): "
         "pass --trials 0 (perplexity only)"),
    (["--trials", "0", "--dtype", "float16", "--device", "cpu"],
     "dtype float16 on CPU: the C rotation kernel (rotary_backend=auto) takes float32 and bfloat16; use "
     "--dtype=bfloat16 (CPU autocast's type) or float32"),
])
def test_what_would_fail_inside_the_sweep_is_one_line_before_it(own_chars, tmp_path, flags, message):
    run, data_dir = own_chars
    with pytest.raises(SystemExit) as stop:
        eval_length.main(["--ckpt", str(run), "--data_dir", str(data_dir), "--out", str(tmp_path / "res"),
                          "--tokens", "256", "--lengths", str(L), *flags])
    assert str(stop.value.code) == message.format(run=run)
    assert list(tmp_path.iterdir()) == []


def test_a_split_the_data_lacks_names_the_splits_it_has(ckpts, tmp_path):
    root, data_dir = ckpts
    with pytest.raises(SystemExit) as stop:
        eval_length.main(["--ckpt", str(root / "rope_s1"), "--data_dir", str(data_dir), "--split", "test",
                          "--out", str(tmp_path / "res")])
    assert str(stop.value.code).startswith(f"{data_dir} has no test split, only train, val (found no test_*.bin; ")


def test_no_positions_figure_when_no_run_reached_the_longest_length(ckpts, tmp_path, capsys):
    result = sweep(ckpts, ["learned_s1"], tmp_path / "res", "--lengths", str(L), str(2 * L))
    assert result["per_position"]["loss"] == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.csv", "res.json", "res.png"]
    assert f"(no _positions.png: no run was measured at the longest length, {2 * L})" in capsys.readouterr().out


@pytest.mark.parametrize("script", ["eval_length.py", "sample.py"])
def test_ctrl_c_ends_the_script_in_one_line_with_status_130(script, monkeypatch, capsys):
    """Run as a script (its __main__ block), interrupted in its first call to configurator."""
    import runpy

    import configurator

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(configurator, "resolve_device", interrupted)
    monkeypatch.setattr("sys.argv", [script, "--ckpt", "x"] if script == "eval_length.py" else [script])
    try:
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(os.path.join(os.path.dirname(eval_length.__file__), script), run_name="__main__")
    except KeyboardInterrupt:  # would end the test session, not fail this test
        pytest.fail(f"{script} lets Ctrl-C out as a KeyboardInterrupt")
    assert stop.value.code == 130 and capsys.readouterr().err == "interrupted (Ctrl-C)\n"
