"""
Verdicts: what a comparison of two arms over seeds decides, and with what confidence.

A claim compares arm A with arm B on one metric at one length through the paired per-seed differences
d_s = A_s - B_s (seed s trains both arms on the same data order). Each claim gets one of four verdicts:

    better      A is better than B, and not within the margin m: the two-sided paired t-test rejects "no
                difference" (Holm-adjusted p < 0.05), A on the good side (lower perplexity, higher passkey
                accuracy), and the equivalence test below does not show |difference| < m
    worse       the same, A on the bad side
    equivalent  within +/- m: the two one-sided tests (TOST, Schuirmann 1987) reject |mean d| >= m
                (Holm-adjusted p < 0.05), i.e. the 90% interval lies inside +/- m
    undecided   neither, with the seeds the observed effect would need (80% power at 5% / the number of claims,
                the level Holm asks of the strictest claim in the family): to show the difference (both
                conditions of "better", by numeric integration over the sample sd) or equivalence (exact TOST
                power: both one-sided tests jointly, Owen's integral done numerically)

Why equivalence comes first (decide): the margin is the smallest difference that counts. A test that rejects "no
difference" says only that the difference is not 0; with a small spread it rejects for a difference of -0.009
passkey accuracy, which the margin calls negligible, and TOST then shows it within +/- 0.10: equivalent (the
report adds that a difference was detected, within the margin), never better or worse. A difference whose
interval excludes 0 and is not inside +/- m is better or worse: the four outcomes of equivalence testing beside a
test of difference (Lakens 2017, "Equivalence tests", Soc. Psychol. Personal. Sci. 8(4)). A stricter rule, the
whole interval beyond the margin ("better by more than m"), was considered and not taken: it asks for a
superiority margin the paper's claims do not state, and it multiplies the seeds a difference needs.

The margin m is set here, one rule for every experiment: 2% of B's mean perplexity, or 0.10 of passkey accuracy
(MARGINS). It was set on 2026-12-06, after the runs of make demo, make ablate, make extend and make power's two
900-iteration grids, before the others: each report says which (its experiment's or grid's margin field, not a
blanket sentence). Equality is never read from a failed test of difference: "equivalent" needs its own test.

Zero spread (paired_test): when every paired difference is the same value c (a spread below 1e-9 of the largest
|d|, float rounding), the t statistic is c / 0 and the t-test says nothing (its model gives a constant sample
probability 0). Such a sample is decided by exact sign tests instead, which need no spread: n identical nonzero
differences give the two-sided p = 2 * 0.5^n (capped at 1; 0.25 at 3 seeds, 0.002 at 10), all-zero differences no
evidence of a difference (p = 1); equivalence: each one-sided sign test (every difference above -m; every
difference below +m) has p = 0.5^n when |c| < m, so TOST's p = 0.5^n (else 1); the interval is the sign test's
order-statistic interval [c, c], which reaches 95% coverage only from 6 differences (2 * 0.5^6 < 0.05): below
that it is unbounded. Three seeds that agree exactly decide nothing, either way.
Holm's step-down correction runs over the claims of one report (one family), separately for the
difference tests and for the equivalence tests. Passkey accuracies also get a pooled Wilson interval
(all seeds' documents together) beside the per-seed mean.

A claim whose units are passkey documents (unit "documents": one model, each document's exact match 0 or 1 for
both arms) is tested exactly instead (paired_binary_test): a t-test on a few 0/1 outcomes is no test (three
documents that all differ the same way have sd 0, so t = inf).
"""

import math

import numpy as np
from scipy import integrate
from scipy import stats as st

ALPHA = 0.05
POWER = 0.8
MARGINS = {"ppl": ("relative", 0.02), "ppl_beyond": ("relative", 0.02), "passkey": ("absolute", 0.10)}
HIGHER_IS_BETTER = {"ppl": False, "ppl_beyond": False, "passkey": True}
CEILINGS = {"passkey": 1.0}  # a metric's best possible value, where it has one
# when the margin was set relative to an experiment's (or a grid's) runs: the words its report uses
MARGIN_BEFORE, MARGIN_AFTER = "fixed before the runs", "chosen after the runs"
SEARCHED = {"seeds": 100_000, "documents": 20_000}  # the largest counts seeds_for_* / documents_needed try
ZERO_SPREAD = 1e-9  # a spread below this share of the largest |d| is rounding: every difference the same
VERDICTS = ("better", "worse", "equivalent", "undecided")


def margin(metric, reference_mean):
    """The equivalence margin of a metric, from MARGINS and the reference arm B's mean."""
    kind, value = MARGINS[metric]
    return value * abs(reference_mean) if kind == "relative" else value


def sign_test(c, n, m):
    """n paired differences all equal to c (zero spread) -> paired_test's fields by exact sign tests (the module's
    docstring): two-sided p = min(1, 2 * 0.5^n) for c != 0, 1 for c = 0; TOST p = 0.5^n if |c| < m, else 1; the
    order-statistic interval [c, c] from 6 differences on, unbounded below."""
    p = min(1.0, 2 * 0.5 ** n) if c != 0 else 1.0
    p_equiv = 0.5 ** n if abs(c) < m else 1.0
    ci = (c, c) if 2 * 0.5 ** n <= ALPHA else (-math.inf, math.inf)
    return {"n": n, "mean": c, "sd": 0.0, "ci95": ci, "t": math.nan, "p": p, "p_equiv": p_equiv,
            "test": ("exact sign test", "exact sign tests")}


def zero_spread(d):
    """Whether every difference is the same value, up to float rounding (ZERO_SPREAD)."""
    d = np.asarray(d, dtype=float)
    return len(d) > 1 and float(d.std(ddof=1)) <= ZERO_SPREAD * float(np.abs(d).max())


def paired_test(d, m):
    """Paired differences d -> mean, sd, 95% interval, two-sided p of 'no difference', TOST p of '|mean| >= m'.
    Zero spread (every difference equal, up to rounding) is decided by exact sign tests (sign_test), never by
    t = c / 0."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "sd": sd, "ci95": (math.nan, math.nan), "t": math.nan, "p": 1.0, "p_equiv": 1.0}
    if zero_spread(d):
        return sign_test(mean, n, m)
    se = sd / math.sqrt(n)
    t = mean / se
    p = float(2 * st.t.sf(abs(t), n - 1))
    half = float(st.t.ppf(1 - ALPHA / 2, n - 1)) * se
    p_lower = float(st.t.sf((mean + m) / se, n - 1))  # H0: mean <= -m
    p_upper = float(st.t.cdf((mean - m) / se, n - 1))  # H0: mean >= +m
    return {"n": n, "mean": mean, "sd": sd, "ci95": (mean - half, mean + half), "t": t, "p": p,
            "p_equiv": max(p_lower, p_upper)}


def paired_binary_test(d, m):
    """Paired 0/1 outcomes, d = A - B in {-1, 0, 1} per document -> paired_test's fields, by exact tests:
    difference: McNemar's exact test (the signs of the discordant pairs, binomial at 1/2, two-sided);
    equivalence within m: |P(A > B) - P(A < B)| <= P(A != B), so an exact one-sided binomial test that the share
      of discordant documents is below m shows it (conservative where discordant pairs cancel out);
    interval: Clopper-Pearson bounds of P(A > B) and P(A < B), 97.5% each (Bonferroni), combined: it covers the
      difference at 95% or more, but does not invert McNemar's test (six documents all one way are decided, p = 0.031,
      while the interval still reaches past 0)."""
    d = np.asarray(d, dtype=float)
    if not np.isin(d, (-1.0, 0.0, 1.0)).all():
        raise ValueError("a claim with documents as units needs per-document differences of 0/1 outcomes (-1, 0, 1)")
    n, up, down = len(d), int((d == 1).sum()), int((d == -1).sum())
    if n == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "ci95": (math.nan, math.nan), "t": math.nan, "p": 1.0,
                "p_equiv": 1.0, "test": ("exact McNemar", "exact discordance bound")}
    p = float(st.binomtest(up, up + down, 0.5).pvalue) if up + down else 1.0
    p_equiv = float(st.binom.cdf(up + down, n, m)) if n else 1.0

    def bounds(k):
        ci = st.binomtest(k, n, 0.5).proportion_ci(0.975, "exact")
        return ci.low, ci.high

    (lo_up, hi_up), (lo_down, hi_down) = bounds(up), bounds(down)
    return {"n": n, "mean": float(d.mean()), "sd": float(d.std(ddof=1)) if n > 1 else math.nan,
            "ci95": (lo_up - hi_down, hi_up - lo_down), "t": math.nan, "p": p, "p_equiv": p_equiv,
            "test": ("exact McNemar", "exact discordance bound")}


def documents_needed(d, m, alpha):
    """Documents the observed rates would need (80% power at alpha) to decide a claim by paired_binary_test:
    the difference if the discordant pairs lean one way, else equivalence if discordance is below m; None if
    neither can be decided by any count (up to 20,000)."""
    d = np.asarray(d, dtype=float)
    n0 = len(d)
    if n0 == 0:
        return None
    p_up, p_down = float((d == 1).sum()) / n0, float((d == -1).sum()) / n0
    disc = p_up + p_down

    def power_difference(n):
        k = np.arange(n + 1)
        # per discordant count k: the largest b with two-sided exact p < alpha (the rejection region's edge)
        edge = st.binom.ppf(alpha / 2, k, 0.5) - 1  # 2 cdf(edge) < alpha <= 2 cdf(edge + 1)
        share = p_up / disc
        given = st.binom.cdf(edge, k, share) + st.binom.sf(k - edge - 1, k, share)
        return float((st.binom.pmf(k, n, disc) * np.where(edge >= 0, given, 0)).sum())

    def power_equivalence(n):
        edge = st.binom.ppf(alpha, n, m) - 1  # the most discordant documents that still show it
        return float(st.binom.cdf(edge, n, disc)) if edge >= 0 else 0.0

    powers = [power_difference] if disc and p_up != p_down else []
    powers += [power_equivalence] if disc < m else []
    counts = (*range(2, 200), *range(200, 2000, 10), *range(2000, 20001, 100))
    found = [next((n for n in counts if power(n) >= POWER), None) for power in powers]
    return min((n for n in found if n), default=None)


def holm(pvalues):
    """Holm's step-down adjusted p-values (same order as given)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def _over_sd(n, sd, inside, breaks=()):
    """E over the sample sd s of a paired sample of n (s^2 (n-1) / sd^2 ~ chi^2 with n - 1 df) of inside(s): the
    probability, given s, that the mean lands where the test rejects. breaks: values of s where inside has a kink
    or drops to 0 (the integral is taken piecewise between them, over the chi^2's central 1 - 2e-12)."""
    df = n - 1
    lo, hi = float(st.chi2.ppf(1e-12, df)), float(st.chi2.isf(1e-12, df))
    cuts = sorted({lo, hi, *(df * (b / sd) ** 2 for b in breaks if lo < df * (b / sd) ** 2 < hi)})
    return sum(integrate.quad(lambda u: inside(sd * math.sqrt(u / df)) * st.chi2.pdf(u, df), a, b, limit=200,
                              epsabs=1e-11)[0] for a, b in zip(cuts, cuts[1:]))


def difference_power(n, mean, sd, m=0.0, alpha=ALPHA):
    """Power of "better"/"worse" (decide) with n pairs when the true difference is `mean` with spread `sd`: the
    two-sided test at alpha rejects AND TOST at alpha does not show equivalence within m, i.e.
    |mean_hat| > max(t_{1-alpha/2} se, m - t_{1-alpha} se), se = s / sqrt(n) (either side counts, as the test does)."""
    ta, tb = st.t.ppf(1 - alpha / 2, n - 1), st.t.ppf(1 - alpha, n - 1)
    se_true = sd / math.sqrt(n)

    def inside(s):
        edge = max(ta * s / math.sqrt(n), m - tb * s / math.sqrt(n))
        return st.norm.sf((edge - abs(mean)) / se_true) + st.norm.cdf((-edge - abs(mean)) / se_true)
    kink = (m * math.sqrt(n) / (ta + tb),) if m > 0 else ()  # where the two conditions swap
    return _over_sd(n, sd, inside, kink)


def tost_power(n, mean, sd, m, alpha=ALPHA):
    """Exact power of TOST at alpha with n pairs when the true difference is `mean` with spread `sd`: both
    one-sided tests reject jointly, i.e. |mean_hat| < m - t_{1-alpha} s / sqrt(n), integrated over the sample sd
    s (Owen's Q, done numerically; a simulation of 200,000 samples agrees to 0.001)."""
    t = st.t.ppf(1 - alpha, n - 1)
    se_true = sd / math.sqrt(n)

    def inside(s):
        edge = m - t * s / math.sqrt(n)
        return max(0.0, st.norm.cdf((edge - abs(mean)) / se_true) - st.norm.cdf((-edge - abs(mean)) / se_true)) \
            if edge > 0 else 0.0
    return _over_sd(n, sd, inside, (m * math.sqrt(n) / t,))  # no s past m sqrt(n) / t rejects


def _fewest(power, most=SEARCHED["seeds"]):
    """The smallest n >= 2 with power(n) >= POWER (power grows with n), by doubling then bisection; None past most."""
    if power(2) >= POWER:
        return 2
    lo, hi = 2, 4
    while power(hi) < POWER:
        lo, hi = hi, hi * 2
        if hi > most:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power(mid) >= POWER else (mid, hi)
    return hi


def seeds_for_difference(mean, sd, alpha=ALPHA, m=0.0):
    """Seeds a paired comparison needs (POWER) to decide a true difference `mean` with spread `sd` as better or
    worse (difference_power: the test at alpha, TOST within the margin m not passed); None if |mean| <= m. Zero
    spread: the exact sign test's count, the fewest n with 2 * 0.5^n < alpha (and at least 6, for the interval)."""
    if not mean or abs(mean) <= m or not math.isfinite(sd):
        return None
    if sd == 0:
        return max(6, math.ceil(math.log2(2 / alpha) + 1e-12))
    return _fewest(lambda n: difference_power(n, mean, sd, m, alpha))


def seeds_for_equivalence(mean, sd, m, alpha=ALPHA):
    """Seeds TOST needs (POWER) to show |difference| < m when the true difference is `mean` with spread `sd`, by
    its exact power (tost_power: both one-sided tests jointly); None if |mean| >= m. Zero spread: the exact sign
    tests' count, the fewest n with 0.5^n < alpha."""
    if abs(mean) >= m or not math.isfinite(sd):
        return None
    if sd == 0:
        return max(2, math.ceil(math.log2(1 / alpha) + 1e-12))
    return _fewest(lambda n: tost_power(n, mean, sd, m, alpha))


def wilson(successes, trials, z=1.959964):
    """The Wilson score interval of a binomial proportion (95%)."""
    if trials == 0:
        return (math.nan, math.nan)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (centre - half, centre + half)


def decide(claims):
    """claims: [{"d": per-seed differences A - B, "metric": ..., "reference": B's mean}, ...], one report's
    family -> each claim with its test, Holm-adjusted p-values, margin and verdict added (a new dict)."""
    tested = []
    for c in claims:
        m = margin(c["metric"], c["reference"])
        test = paired_binary_test if c.get("unit") == "documents" else paired_test
        tested.append({**c, **test(c["d"], m), "margin": m})
    p_diff = holm([c["p"] for c in tested]) if tested else []
    p_equiv = holm([c["p_equiv"] for c in tested]) if tested else []
    out = []
    for c, pd, pe in zip(tested, p_diff, p_equiv):
        good = c["mean"] > 0 if HIGHER_IS_BETTER[c["metric"]] else c["mean"] < 0
        if pe < ALPHA:  # within the margin, whatever the test of difference says (the module's docstring)
            verdict = "equivalent"
        elif pd < ALPHA:
            verdict = "better" if good else "worse"
        else:
            verdict = "undecided"
        need = None
        if verdict == "undecided" and c.get("unit") == "documents":
            need = documents_needed(c["d"], c["margin"], ALPHA / len(tested))
        elif verdict == "undecided":  # at the level Holm asks of the family's strictest rank (Bonferroni's)
            alpha = ALPHA / len(tested)
            options = [n for n in (seeds_for_difference(c["mean"], c["sd"], alpha, c["margin"]),
                                   seeds_for_equivalence(c["mean"], c["sd"], c["margin"], alpha)) if n]
            need = min(options) if options else None
        out.append({**c, "p_holm": pd, "p_equiv_holm": pe, "verdict": verdict, "seeds_needed": need})
    return out


def at_ceiling(metric, a_mean, b_mean, m):
    """Whether both arms are within the margin m of the metric's best possible value (CEILINGS): then the arms
    cannot differ by a margin's worth and the comparison shows only that both are at the ceiling."""
    top = CEILINGS.get(metric)
    return top is not None and a_mean is not None and b_mean is not None and min(a_mean, b_mean) >= top - m


def verdict_text(c, fmt=".3f"):
    """One claim's verdict as a reviewer reads it, e.g. 'better: -0.84 [-1.20, -0.50], 10 seeds, Holm p = 0.003'."""
    lo, hi = c["ci95"]
    effect = f"{c['mean']:+{fmt}} [{lo:+{fmt}}, {hi:+{fmt}}], {c['n']} {c.get('unit', 'seeds')}"
    difference, equivalence = c.get("test", ("paired t", "TOST"))
    if c["verdict"] in ("better", "worse"):
        return f"{c['verdict']}: {effect}, {difference}, Holm p = {c['p_holm']:.2g}"
    inside = f"a difference too (Holm p = {c['p_holm']:.2g}), but within the margin" if c["p_holm"] < ALPHA else ""
    if c["verdict"] == "equivalent":
        return (f"equivalent within +/- {c['margin']:{fmt}}: {effect}, {equivalence} Holm p = {c['p_equiv_holm']:.2g}"
                + (f"; {inside}" if inside else ""))
    unit = c.get("unit", "seeds")
    need = (f"; ~{c['seeds_needed']} {unit} would decide it" if c["seeds_needed"] else
            f"; no count of {unit} up to {SEARCHED.get(unit, SEARCHED['seeds']):,} decides it")
    return (f"undecided: {effect}, Holm p = {c['p_holm']:.2g} (difference), {c['p_equiv_holm']:.2g} "
            f"(within +/- {c['margin']:{fmt}}){need}")
