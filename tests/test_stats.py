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


def test_zero_spread_is_decided_by_exact_sign_tests_never_p_zero():
    # three seeds that agree exactly: the t-test would read t = c / 0, p = 0; the sign test's p is 2 * 0.5^3
    (shift,) = decide([claim([-0.5, -0.5, -0.5])])
    assert shift["p"] == pytest.approx(0.25) and shift["verdict"] == "undecided"
    assert shift["ci95"] == (-math.inf, math.inf)  # the sign test's interval needs 6 differences for 95%
    assert shift["seeds_needed"] == 6 and "exact sign test" in shift["test"]
    (ten,) = decide([claim([-0.5] * 10)])  # ten seeds that agree: decided, at the sign test's p
    assert ten["verdict"] == "better" and ten["p"] == pytest.approx(2 * 0.5 ** 10) and ten["ci95"] == (-0.5, -0.5)
    assert "exact sign test" in verdict_text(ten)
    # all-zero differences: no evidence of a difference; equivalence by the one-sided sign tests, p = 0.5^n
    (same,) = decide([claim([0.0, 0.0, 0.0], "passkey", 1.0)])  # passkey 1.00 against 1.00 on 3 seeds
    assert same["p"] == 1.0 and same["p_equiv"] == pytest.approx(0.125) and same["verdict"] == "undecided"
    (same10,) = decide([claim([0.0] * 10, "passkey", 1.0)])
    assert same10["verdict"] == "equivalent" and same10["p_equiv"] == pytest.approx(0.5 ** 10)
    assert paired_test([0.3] * 8, 0.2)["p_equiv"] == 1.0  # a constant outside the margin is never equivalent
    # a spread of float rounding is zero spread: passkey accuracies that differ by 0.05 on every seed
    d = [0.95 - 0.9, 0.85 - 0.8, 0.75 - 0.7]
    assert np.std(d) > 0 and paired_test(d, 0.1)["p"] == pytest.approx(0.25)
    # a real spread, however small, is the t-test's
    r = paired_test([-0.5, -0.499, -0.501], 0.2)
    assert "test" not in r and r["p"] < 1e-3


def test_a_difference_inside_the_margin_is_never_better_or_worse():
    # the case: passkey -0.009 on 10 seeds with a tiny spread passes the t-test, but 0.009 is within +/- 0.10
    d = [-0.009 + e for e in (0.001, -0.001, 0.0005, -0.0005, 0.0, 0.0012, -0.0012, 0.0003, -0.0003, 0.0)]
    (c,) = decide([claim(d, "passkey", 1.0)])
    assert c["p_holm"] < 1e-6 and c["verdict"] == "equivalent"
    assert "a difference too" in verdict_text(c) and "within the margin" in verdict_text(c)
    # passes the test, its interval straddles the margin's near side (-0.2), TOST fails: a difference, not
    # shown negligible: better (equivalence testing's "different, not equivalent")
    d = [-0.22 + e for e in (0.05, -0.05, 0.1, -0.1, 0.03, -0.03, 0.07, -0.07, 0.0, 0.0)]
    (c,) = decide([claim(d)])  # margin 2% of 10 = 0.2
    lo, hi = c["ci95"]
    assert c["p_holm"] < 0.05 and c["p_equiv_holm"] >= 0.05 and lo < -0.2 < hi and c["verdict"] == "better"
    # a difference detected whose 90% interval lies inside +/- m: equivalent, not better, at any spread
    (c,) = decide([claim([x + 0.12 for x in d])])  # mean -0.10, inside the margin 0.2
    assert c["p_holm"] < 0.05 and c["verdict"] == "equivalent" and "within the margin" in verdict_text(c)


def test_equivalence_seeds_come_from_exact_tost_power_not_the_worse_one_sided_test():
    from scipy import stats as st

    from experiments.stats import difference_power, tost_power
    # results/power.md's two rows (FoPE - RoPE, ppl at 1x, theta150-900 and ablate-900; 45 claims, Bonferroni level)
    alpha = 0.05 / 45
    rows = [(-0.0012545048819115224, 0.2232922569562641, 0.1828278786683718, 28, 33),
            (-0.010810499352199975, 0.5171906936197551, 0.1880696955882323, 135, 150)]
    for mean, sd, m, one_sided, exact in rows:
        worse_side = next(n for n in range(2, 1000) if st.nct.cdf(-st.t.ppf(1 - alpha, n - 1), n - 1,
                                                                   (abs(mean) - m) / sd * math.sqrt(n)) >= 0.8)
        assert worse_side == one_sided  # what the reports said
        assert seeds_for_equivalence(mean, sd, m, alpha) == exact  # what exact TOST power asks
        assert tost_power(exact - 1, mean, sd, m, alpha) < 0.8 <= tost_power(exact, mean, sd, m, alpha)
    # exact TOST power against a simulation of the two one-sided tests (8 pairs, delta 0.05, sd 0.2, m 0.25)
    rng = np.random.default_rng(1)
    x = rng.normal(0.05, 0.2, (100_000, 8))
    mu, se, t = x.mean(1), x.std(1, ddof=1) / math.sqrt(8), st.t.ppf(0.95, 7)
    simulated = ((mu - t * se > -0.25) & (mu + t * se < 0.25)).mean()
    assert tost_power(8, 0.05, 0.2, 0.25) == pytest.approx(simulated, abs=0.005)
    # without a margin, the power of "better" is the noncentral t's (both tails)
    crit = st.t.ppf(0.975, 9)
    nct = st.nct.sf(crit, 9, math.sqrt(10)) + st.nct.cdf(-crit, 9, math.sqrt(10))
    assert difference_power(10, 1.0, 1.0) == pytest.approx(nct, abs=1e-6)
    # "not shown equivalent" can only remove power from the test of difference, and binds little beyond the margin
    assert difference_power(6, 0.25, 0.3, m=0.2) <= difference_power(6, 0.25, 0.3) + 1e-9
    assert seeds_for_difference(0.25, 0.3, m=0.2) == seeds_for_difference(0.25, 0.3) == 14
    assert seeds_for_difference(0.15, 0.1, m=0.2) is None


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
    alone = decide([claim([-0.3, -0.1, -0.5, -0.2, -0.4], reference=1.0)])[0]  # margin 0.02: the interval clears it
    crowd = decide([claim([-0.3, -0.1, -0.5, -0.2, -0.4], reference=1.0)] + [claim([1.0, -1.0, 0.5, -0.5, 0.2])] * 4)[0]
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
