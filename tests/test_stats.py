"""experiments/stats.py, the verdicts: constructed samples whose answer is known, and the readings' words."""

import glob
import math
import os
import re

import numpy as np
import pytest

from experiments.stats import (VERDICTS, decide, holm, paired_binary_test, paired_test, seeds_for_difference,
                               seeds_for_equivalence, verdict_text, wilson)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def claim(d, metric="ppl_beyond", reference=10.0):
    return {"d": list(d), "metric": metric, "reference": reference}


def test_a_clear_difference_is_better_or_worse_by_the_metrics_direction():
    lower = claim([-0.9, -0.8, -1.1, -0.7, -1.0, -0.85, -0.95, -0.9, -1.05, -0.75])  # A's perplexity lower
    higher_passkey = claim([0.3, 0.25, 0.4, 0.35, 0.3, 0.28, 0.33, 0.31, 0.36, 0.29], "passkey", 0.5)
    a, b = decide([lower, higher_passkey])
    assert a["verdict"] == "better" and a["p_holm"] < 1e-6 and a["ci95"][1] < 0
    assert b["verdict"] == "better"
    (c,) = decide([claim([0.9, 0.8, 1.1, 0.7, 1.0, 0.85])])
    assert c["verdict"] == "worse"


def test_a_clear_equivalence_needs_the_interval_inside_the_margin():
    rng = np.random.default_rng(0)
    (c,) = decide([claim(rng.normal(0.0, 0.02, 12))])  # margin: 2% of 10 = 0.2
    assert c["verdict"] == "equivalent" and c["margin"] == pytest.approx(0.2)
    assert -0.2 < c["ci95"][0] and c["ci95"][1] < 0.2
    assert verdict_text(c).startswith("equivalent within +/- 0.200")


def test_a_wide_sample_is_undecided_with_the_seeds_it_would_need_never_equivalent():
    d = [1.5, -1.2, 0.4, 2.0, -0.9]  # 3 seeds' worth of noise: neither a difference nor inside +/- 0.2
    (c,) = decide([claim(d)])
    assert c["verdict"] == "undecided" and c["seeds_needed"] and c["seeds_needed"] > 5
    assert "would decide it" in verdict_text(c)
    # the case: every seed higher, t = 3.8 with 3 seeds: a failed test of difference is not equality
    (c,) = decide([claim([0.05, 0.13, 0.21], reference=1.0)])  # t = 2.8; margin 0.02: the effect is outside it
    assert c["verdict"] == "undecided" and c["p_holm"] > 0.05


def test_a_tiny_variance_decides_exactly():
    (same,) = decide([claim([0.0, 0.0, 0.0], "passkey", 1.0)])  # passkey 1.00 against 1.00 on every seed
    assert same["verdict"] == "equivalent"
    (shift,) = decide([claim([-0.5, -0.5, -0.5])])
    assert shift["verdict"] == "better" and shift["p"] == 0.0
    (tiny,) = decide([claim([-0.5, -0.5 + 1e-9, -0.5])])
    assert tiny["verdict"] == "better"


def documents(d):
    return {**claim(d, "passkey", 0.5), "unit": "documents"}


def test_passkey_documents_of_one_model_are_decided_by_exact_tests_not_by_a_t_on_zero_spread():
    # three documents, each retrieved by B and missed by A: sd 0, a t-test would read p = 0; McNemar's exact p is 0.25
    (lost, none, held, flipped) = decide([documents([-1, -1, -1]), documents([0, 0, 0]), documents([0] * 100),
                                          documents([-1] * 30 + [0] * 10)])
    assert lost["verdict"] == "undecided" and lost["p"] == pytest.approx(0.25) and lost["seeds_needed"] >= 8
    assert none["verdict"] == "undecided" and none["p_equiv"] == pytest.approx(0.9 ** 3)  # 0/3 and 0/3 prove nothing
    assert "~" in verdict_text(none) and "documents would decide it" in verdict_text(none)
    assert held["verdict"] == "equivalent" and held["p_equiv"] == pytest.approx(0.9 ** 100)
    assert "exact discordance bound" in verdict_text(held)
    assert flipped["verdict"] == "worse" and flipped["p"] == pytest.approx(2 * 0.5 ** 30)
    assert "exact McNemar" in verdict_text(flipped) and flipped["ci95"][1] < 0
    r = paired_binary_test([1, -1] * 50, 0.1)  # half the documents disagree, both ways: no difference, no equivalence
    assert r["p"] == 1.0 and r["p_equiv"] > 0.99 and r["ci95"][0] < 0 < r["ci95"][1]
    with pytest.raises(ValueError, match="0/1 outcomes"):
        decide([documents([0.5, 0.0])])


def test_paired_t_and_tost_match_their_textbook_values():
    d = [0.2, 0.5, -0.1, 0.4, 0.3]
    r = paired_test(d, 0.6)
    mean, sd = np.mean(d), np.std(d, ddof=1)
    assert r["t"] == pytest.approx(mean / (sd / math.sqrt(5)))
    assert r["p"] == pytest.approx(0.064986, abs=1e-5)  # scipy.stats.ttest_1samp(d, 0).pvalue
    assert r["ci95"][0] == pytest.approx(mean - 2.776445 * sd / math.sqrt(5), abs=1e-5)
    assert r["p_equiv"] == pytest.approx(0.014933, abs=1e-5)  # the upper one-sided test, mean 0.26 against 0.6


def test_holm_adjusts_step_down_and_stays_monotone():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    # more claims in a family: a claim that alone would pass no longer does
    alone = decide([claim([-0.3, -0.1, -0.5, -0.2, -0.4])])[0]
    crowd = decide([claim([-0.3, -0.1, -0.5, -0.2, -0.4])] + [claim([1.0, -1.0, 0.5, -0.5, 0.2])] * 4)[0]
    assert alone["verdict"] == "better" and crowd["p_holm"] > alone["p_holm"]


def test_seed_counts_grow_as_the_effect_shrinks():
    assert seeds_for_difference(1.0, 1.0) == 10  # d = 1: the textbook 10 pairs for 80% power at 5%
    assert seeds_for_difference(0.5, 1.0) > seeds_for_difference(1.0, 1.0)
    assert seeds_for_difference(0.0, 1.0) is None
    assert seeds_for_equivalence(0.0, 0.1, 0.2) < seeds_for_equivalence(0.1, 0.1, 0.2)
    assert seeds_for_equivalence(0.3, 0.1, 0.2) is None


def test_wilson_interval_covers_the_proportion_and_stays_in_zero_one():
    lo, hi = wilson(0, 100)
    assert lo == pytest.approx(0.0, abs=1e-12) and 0.03 < hi < 0.04
    lo, hi = wilson(52, 100)
    assert lo < 0.52 < hi and hi - lo == pytest.approx(0.19, abs=0.01)


# the words of equality a reading may use only beside an 'equivalent' verdict
EQUALITY = re.compile(r"\b(the same (perplexity|accuracy)|as good as|does as well as|no (clear )?difference|"
                      r"agrees? \(no|matches?|match the paper)\b", re.IGNORECASE)


def test_no_reading_claims_equality_without_an_equivalence_verdict():
    """Every sentence of a reading (experiments/readings/*.md), a report (results/*.md) and the README that
    uses an equality word must cite an 'equivalent' verdict in the same sentence."""
    files = [os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "experiments", "readings", "*.md"))]
    offenders = []
    for path in files:
        text = open(path).read()
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            if EQUALITY.search(sentence) and "equivalent" not in sentence:
                offenders.append(f"{os.path.relpath(path, ROOT)}: {sentence.strip()[:140]}")
    assert not offenders, "\n".join(offenders)


# -----------------------------------------------------------------------------
# the one protocol, and make power


def test_a_report_names_each_way_its_sweep_departed_from_the_protocol():
    from experiments.protocol import PROTOCOL, header
    info = {"train_len": 64, "lengths": [64 * m for m in PROTOCOL.multiples], "tokens_per_length": 65536,
            "passkey_trials": 20, "passkey_depths": list(PROTOCOL.passkey_depths)}
    assert header(info) == [PROTOCOL.describe(), ""]  # the protocol itself: no deviation
    lines = header({**info, "tokens_per_length": 32768, "passkey_trials": 10, "lengths": [64, 128, 256, 1024]}, "why")
    assert lines[1].startswith("Deviation from the protocol:") and lines[1].endswith("(why).")
    assert "32,768 perplexity tokens" in lines[1] and "10 passkey documents per depth" in lines[1] and "'16'" in lines[1]


@pytest.mark.slow
def test_quick_power_trains_sweeps_and_decides_every_grid_and_its_report_comes_from_json(tmp_path):
    import json

    from test_demo import PASSKEY_CHARS, experiment
    from tinydata import write_random_chars
    write_random_chars(tmp_path / "data", PASSKEY_CHARS, 40_000, 8_000)
    proc = experiment("power", tmp_path, "--grids", "theta150-900", "ablate-900")
    assert "2/3 train theta150-900" in proc.stdout and "3/3 eval ablate-900" in proc.stdout
    results = tmp_path / "results" / "quick"
    doc = json.loads((results / "power.json").read_text())
    assert set(doc["grids"]) == {"theta150-900", "ablate-900"}
    assert all(c["verdict"] in (*VERDICTS, "not measurable") for c in doc["claims"])
    assert {c["grid"] for c in doc["claims"]} == {"theta150-900", "ablate-900"}
    report = (results / "power.md").read_text()
    assert "Deviation from the protocol" in report and "grid theta150-2200: not run yet" in report
    assert "Verdicts by grid" in report and "| fope vs rope, ppl_beyond at 4x |" in report  # quick: lengths to 4x
    (results / "power.md").unlink()
    experiment("power", tmp_path, "--report_only")
    assert (results / "power.md").read_text() == report
