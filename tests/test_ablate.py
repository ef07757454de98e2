"""make ablate: the arms come from the registry, the paired comparisons, and the quick pipeline end to end."""

import json
from pathlib import Path

import pytest

from experiments import ablate, demo, runner
from model import POS_EMBS, PositionEmbedding
from test_demo import PASSKEY_CHARS, experiment
from tinydata import write_random_chars

ROOT = Path(__file__).resolve().parent.parent


def rows(values_a, values_b, metric="ppl_beyond", length=1024):
    """eval_length.py rows of two arms, one per seed."""
    out = []
    for label, values in (("A", values_a), ("B", values_b)):
        for seed, v in enumerate(values, 1):
            out.append({"label": label, "seed": seed, "length": length, "ppl_beyond": None, "passkey": None,
                        "ppl": None, metric: v})
    return out


def test_a_claim_is_the_paired_per_seed_difference_with_its_interval():
    (c,) = ablate.claim_rows(rows([10.0, 11.0, 12.0], [12.0, 13.1, 13.9]), 64,
                             [ablate.Claim("s", "A", "B", "ppl_beyond", 16, "A beats B")])
    assert c["n"] == 3 and c["mean"] == pytest.approx(-2.0) and c["d"] == pytest.approx([-2.0, -2.1, -1.9])
    assert c["min"] == pytest.approx(-2.1) and c["max"] == pytest.approx(-1.9) and c["ci95"][1] < 0
    assert c["verdict"] == "better" and c["paper"] == "as the paper says"
    assert ablate.claim_rows(rows([1.0], [2.0]), 64) == []  # one seed: no test


def test_claims_read_perplexity_lower_and_passkey_higher_as_better(monkeypatch):
    monkeypatch.setattr(ablate, "CLAIMS", [ablate.Claim("s", "A", "B", "ppl_beyond", 16, "A beats B"),
                                           ablate.Claim("s", "A", "B", "passkey", 1, "A retrieves more")])
    r = rows([10.0, 11.0, 12.0], [12.0, 13.1, 13.9]) + rows([0.9, 0.8, 0.95], [0.1, 0.0, 0.2], "passkey", 64)
    verdicts = {c["metric"]: c["verdict"] for c in ablate.claim_rows(r, 64)}
    assert verdicts == {"ppl_beyond": "better", "passkey": "better"}
    r = rows([12.0, 13.1, 13.9], [10.0, 11.0, 12.0])
    c = ablate.claim_rows(r, 64)[0]
    assert c["verdict"] == "worse" and c["paper"] == "against the paper"
    # the same direction on 2 of 3 seeds only: undecided, never "no difference", with the seeds it would need
    r = rows([9.0, 11.5, 11.0], [10.0, 11.0, 12.0]) + rows([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], "passkey", 64)
    by_metric = {c["metric"]: c for c in ablate.claim_rows(r, 64)}
    assert by_metric["ppl_beyond"]["verdict"] == "undecided" and by_metric["ppl_beyond"]["seeds_needed"] > 3
    # 1.00 against 1.00 on 3 seeds: zero spread, the sign tests' p = 0.125 decides nothing; both arms at the ceiling
    assert by_metric["passkey"]["verdict"] == "undecided" and by_metric["passkey"]["ceiling"]
    assert by_metric["passkey"]["paper"] == "undecided; both arms at the ceiling"


def test_a_passkey_claim_past_l_train_needs_both_arms_to_retrieve_at_l_train(monkeypatch):
    monkeypatch.setattr(ablate, "CLAIMS", [ablate.Claim("s", "A", "B", "passkey", 2, "A keeps the key at 2x")])
    r = rows([0.9, 0.95, 1.0], [0.2, 0.3, 0.1], "passkey", 64) + rows([0.4, 0.5, 0.3], [0.0, 0.0, 0.1], "passkey", 128)
    (c,) = ablate.claim_rows(r, 64)
    assert c["verdict"] == "not measurable" and "B retrieves 0.20 at L_train" in c["verdict_text"]


def test_every_registered_embedding_is_an_arm_and_a_new_one_joins_without_edits(monkeypatch):
    assert set(POS_EMBS) <= set(ablate.arms())
    monkeypatch.setitem(POS_EMBS, "xpos", PositionEmbedding("rotary", POS_EMBS["rope"].build))
    assert ablate.arms()["xpos"] == ["--pos_emb=xpos"]
    assert ("xpos", "xpos") in ablate.sections()["embeddings"][1]


def test_the_demo_variants_are_the_same_runs_at_demo_scale():
    """--scale=demo trains make demo's variants with make demo's arguments into make demo's out_dirs."""
    for variant, flags in demo.VARIANTS.items():
        assert ablate.arms()[variant] == flags
        assert runner.run_args("config/demo.py", "out/demo", variant, ablate.arms()[variant], 1) == \
            runner.run_args("config/demo.py", "out/demo", variant, demo.VARIANTS[variant], 1)
    used = {arm for _, (_, pairs) in ablate.sections().items() for _, arm in pairs}
    assert used == set(ablate.arms())  # every arm is in a section, every section's arm is trained


@pytest.mark.slow
def test_quick_ablate_runs_end_to_end_and_reports_every_section_arm_and_claim(tmp_path):
    write_random_chars(tmp_path / "data", PASSKEY_CHARS, 40_000, 8_000)
    proc = experiment("ablate", tmp_path)
    for stage in ("1/4 data", "2/4 train", "3/4 eval", "4/4 write"):
        assert stage in proc.stdout
    results = tmp_path / "results" / "quick"
    sweep = json.loads((results / "ablate.json").read_text())
    assert set(sweep["summary"]) == set(ablate.arms())
    assert all(len(sweep["info"]["groups"][arm]) == 2 for arm in ablate.arms())  # two seeds each
    assert sweep["info"]["lengths"] == [64, 128, 256, 1024]
    assert {c["section"] for c in sweep["claims"]} >= {"parts", "sigma", "table2", "embeddings"}
    assert all(c["n"] == 2 and c["verdict"] for c in sweep["claims"])
    assert sweep["claim"]["fope vs rope, ppl_beyond at 16x"] == sweep["claims"][0]  # claims by name, for readings
    report = (results / "ablate.md").read_text()
    for name, (title, _) in ablate.sections().items():
        assert title in report and (results / f"ablate_{name}.png").is_file()
    assert "paired t" in report and "Holm" in report and "Stage times" in report
    assert "learned at 128: skipped: learned positions stop at block_size 64" in report
    assert "| RoPE + QK norm | " in report  # the compact table of each section
    (results / "ablate.md").unlink()
    experiment("ablate", tmp_path, "--report_only")
    assert (results / "ablate.md").read_text() == report  # the report comes from ablate.json alone


def test_a_claim_of_no_difference_is_read_by_its_expectation_not_its_wording(monkeypatch):
    monkeypatch.setattr(ablate, "CLAIMS", [ablate.Claim("s", "A", "B", "ppl_beyond", 16, "(none: worded oddly)"),
                                           ablate.Claim("s", "A", "B", "ppl_beyond", 16, "A ~ B", "no difference")])
    r = rows([10.0, 11.0, 12.0], [12.0, 13.1, 13.9])  # a clear difference
    assert [(c["verdict"], c["paper"]) for c in ablate.claim_rows(r, 64)] == \
        [("better", "as the paper says"), ("better", "against the paper")]


def test_power_report_only_without_a_grid_json_is_one_line(tmp_path):
    from experiments import power

    for results in (tmp_path / "missing", tmp_path):  # no folder; a folder with no power_<grid>.json
        with pytest.raises(SystemExit) as stop:
            power.main(["--report_only", "--results", str(results)])
        assert str(stop.value.code) == (f"no power_<grid>.json in {results}: run python experiments/power.py first "
                                        "(without --report_only), or pass the --results it wrote to")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seeds, message", [(["1", "1"], "--seeds must not list a value twice, got [1, 1]"),
                                            (["-1"], "--seeds must be >= 0, got [-1]")])
def test_every_experiment_checks_its_seeds_before_any_work(tmp_path, seeds, message):
    with pytest.raises(SystemExit) as stop:
        ablate.main(["--seeds", *seeds, "--out_root", str(tmp_path), "--results", str(tmp_path)])
    assert str(stop.value.code) == message and list(tmp_path.iterdir()) == []


def test_a_damaged_report_json_is_one_line_naming_it(tmp_path):
    with pytest.raises(SystemExit) as stop:
        with runner.saved_results(str(tmp_path), f"{tmp_path}/x.json"):
            json.loads("[1]")["rows"]  # a list where a dict was: it read "lacks list indices must be ..."
    assert str(stop.value.code) == (f"{tmp_path}/x.json is damaged (TypeError: list indices must be integers or "
                                    "slices, not str): run the experiment again (without --report_only)")


def test_a_row_without_a_paper_claim_is_never_read_for_or_against_the_paper(monkeypatch):
    monkeypatch.setattr(ablate, "CLAIMS", [ablate.Claim("s", "A", "B", "ppl_beyond", 16, "(no paper claim) A vs B", None),
                                           ablate.Claim("s", "A", "B", "ppl_beyond", 16, "A beats B")])
    clear = rows([10.0, 11.0, 12.0], [12.0, 13.1, 13.9])  # decided: better
    assert [(c["verdict"], c["paper"]) for c in ablate.claim_rows(clear, 64)] == \
        [("better", "no paper claim"), ("better", "as the paper says")]


def test_a_ceiling_row_says_so_and_the_passkey_at_1x_carries_no_paper_claim(monkeypatch):
    monkeypatch.setattr(ablate, "CLAIMS", [ablate.Claim("s", "A", "B", "passkey", 1, "(no paper claim) 1x", None),
                                           ablate.Claim("s", "A", "B", "passkey", 2, "A keeps the key at 2x")])
    fope = [0.99, 0.98, 1.0, 0.99, 0.99, 0.98, 1.0, 0.99, 0.99, 0.98]  # near 1.00 at 1x and 2x: both arms at the ceiling
    r = rows(fope, [1.0] * 10, "passkey", 64) + rows(fope, [1.0] * 10, "passkey", 128)
    at1, at2 = ablate.claim_rows(r, 64)
    assert at1["verdict"] == at2["verdict"] == "equivalent" and at1["ceiling"] and at2["ceiling"]
    assert at1["paper"] == "no paper claim; both arms at the ceiling"
    assert at2["paper"] == "against the paper; both arms at the ceiling"  # the paper says B falls at 2x: it did not
    low = rows([0.5] * 3, [0.6, 0.7, 0.5], "passkey", 64)  # far from the ceiling
    assert not ablate.claim_rows(low, 64)[0]["ceiling"]


def test_every_claim_without_a_paper_claim_has_no_expectation():
    """A row worded "(no paper claim)", or on the passkey at 1x (the paper claims nothing within L_train), carries
    expect None in every experiment, so no verdict of it reads for or against the paper."""
    from experiments import extend, geometry, power
    every = [*ablate.CLAIMS, *demo.claims(), *extend.claims(extend.STEPS), *geometry.CLAIMS, *power.CLAIMS]
    for c in every:
        if "(no paper claim)" in c.text or (c.metric == "passkey" and c.multiple == 1):
            assert c.expect is None, c
    assert any(c.metric == "passkey" and c.multiple == 1 for c in power.CLAIMS)


def test_the_margin_timing_is_each_experiments_field_and_the_reports_say_it():
    """The margin (experiments/stats.py) was set after make demo's, ablate's, extend's and the 900-iteration power
    grids' runs, before the others: each report says what its experiment's (or grid's) field says."""
    from experiments import extend, geometry, power
    from experiments.stats import MARGIN_AFTER, MARGIN_BEFORE
    assert ablate.MARGIN == demo.MARGIN == extend.MARGIN == MARGIN_AFTER and geometry.MARGIN == MARGIN_BEFORE
    assert {g: grid.margin for g, grid in power.GRIDS.items()} == {
        "theta150-900": MARGIN_AFTER, "ablate-900": MARGIN_AFTER, "theta150-2200": MARGIN_BEFORE,
        "ablate-2200": MARGIN_BEFORE}
    assert power.margin_words(["theta150-2200"]) == MARGIN_BEFORE
    assert power.margin_words(["ablate-900", "ablate-2200"]) == \
        f"{MARGIN_AFTER} for ablate-900; {MARGIN_BEFORE} for ablate-2200"
    assert MARGIN_AFTER in ablate.claims_note(MARGIN_AFTER) and MARGIN_BEFORE not in ablate.claims_note(MARGIN_AFTER)
    for report in ("demo", "ablate", "extend"):
        text = (ROOT / "results" / f"{report}.md").read_text()
        assert MARGIN_AFTER in text and MARGIN_BEFORE not in text and "before any run" not in text, report
    power_md = (ROOT / "results" / "power.md").read_text()
    assert "swept 2026-12-06 14:12; margin chosen after the runs" in power_md
    assert f"{MARGIN_AFTER} for theta150-900, ablate-900; {MARGIN_BEFORE} for theta150-2200, ablate-2200" in power_md
