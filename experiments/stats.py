"""
Verdicts: what a comparison of two arms over seeds decides, and with what confidence.

A claim compares arm A with arm B on one metric at one length through the paired per-seed differences
d_s = A_s - B_s (seed s trains both arms on the same data order). Each claim gets one of four verdicts:

    better      A is better than B: the two-sided paired t-test rejects "no difference" (Holm-adjusted p < 0.05)
                and A is on the good side (lower perplexity, higher passkey accuracy)
    worse       the same test rejects, A on the bad side
    equivalent  within +/- m: the two one-sided tests (TOST, Schuirmann 1987) reject |mean d| >= m
                (Holm-adjusted p < 0.05), i.e. the 90% interval lies inside +/- m
    undecided   neither, with the seeds the observed effect would need (80% power at 5% / the number of claims,
                the level Holm asks of the strictest claim in the family)

The margin m is fixed here, before any run: 2% of B's mean perplexity, or 0.10 of passkey accuracy
(MARGINS). Equality is never read from a failed test of difference: "equivalent" needs its own test.
Holm's step-down correction runs over the claims of one report (one family), separately for the
difference tests and for the equivalence tests. Passkey accuracies also get a pooled Wilson interval
(all seeds' documents together) beside the per-seed mean.

A claim whose units are passkey documents (unit "documents": one model, each document's exact match 0 or 1 for
both arms) is tested exactly instead (paired_binary_test): a t-test on a few 0/1 outcomes is no test (three
documents that all differ the same way have sd 0, so t = inf).
"""

import math

import numpy as np
from scipy import stats as st

ALPHA = 0.05
POWER = 0.8
MARGINS = {"ppl": ("relative", 0.02), "ppl_beyond": ("relative", 0.02), "passkey": ("absolute", 0.10)}
HIGHER_IS_BETTER = {"ppl": False, "ppl_beyond": False, "passkey": True}
VERDICTS = ("better", "worse", "equivalent", "undecided")


def margin(metric, reference_mean):
    """The equivalence margin of a metric, from MARGINS and the reference arm B's mean."""
    kind, value = MARGINS[metric]
    return value * abs(reference_mean) if kind == "relative" else value


def paired_test(d, m):
    """Paired differences d -> mean, sd, 95% interval, two-sided p of 'no difference', TOST p of '|mean| >= m'.
    Degenerate spreads (every difference equal) are decided exactly: a constant nonzero difference is a
    difference (p = 0), a constant zero one is equivalence within any m > 0."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "sd": sd, "ci95": (math.nan, math.nan), "t": math.nan, "p": 1.0, "p_equiv": 1.0}
    se = sd / math.sqrt(n)
    if se == 0:
        p = 0.0 if mean != 0 else 1.0
        p_equiv = 0.0 if abs(mean) < m else 1.0
        return {"n": n, "mean": mean, "sd": sd, "ci95": (mean, mean), "t": math.copysign(math.inf, mean) if mean else 0.0,
                "p": p, "p_equiv": p_equiv}
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


def seeds_for_difference(mean, sd, alpha=ALPHA):
    """Seeds a paired t-test needs to detect a true difference `mean` with spread `sd` (two-sided alpha,
    POWER), by the noncentral t; None if there is no effect to detect."""
    if not mean or not math.isfinite(sd) or sd == 0:
        return None
    effect = abs(mean) / sd
    for n in range(2, 10_000):
        crit = st.t.ppf(1 - alpha / 2, n - 1)
        if st.nct.sf(crit, n - 1, effect * math.sqrt(n)) >= POWER:
            return n
    return None


def seeds_for_equivalence(mean, sd, m, alpha=ALPHA):
    """Seeds TOST needs to show |difference| < m when the true difference is `mean` with spread `sd`
    (the power of the worse one-sided test, a conservative bound); None if |mean| >= m."""
    if abs(mean) >= m or not math.isfinite(sd):
        return None
    if sd == 0:
        return 2
    for n in range(2, 10_000):
        crit = st.t.ppf(1 - alpha, n - 1)
        if st.nct.cdf(-crit, n - 1, (abs(mean) - m) / sd * math.sqrt(n)) >= POWER:
            return n
    return None


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
        if pd < ALPHA:
            verdict = "better" if good else "worse"
        elif pe < ALPHA:
            verdict = "equivalent"
        else:
            verdict = "undecided"
        need = None
        if verdict == "undecided" and c.get("unit") == "documents":
            need = documents_needed(c["d"], c["margin"], ALPHA / len(tested))
        elif verdict == "undecided":  # at the level Holm asks of the family's strictest rank (Bonferroni's)
            alpha = ALPHA / len(tested)
            options = [n for n in (seeds_for_difference(c["mean"], c["sd"], alpha),
                                   seeds_for_equivalence(c["mean"], c["sd"], c["margin"], alpha)) if n]
            need = min(options) if options else None
        out.append({**c, "p_holm": pd, "p_equiv_holm": pe, "verdict": verdict, "seeds_needed": need})
    return out


def verdict_text(c, fmt=".3f"):
    """One claim's verdict as a reviewer reads it, e.g. 'better: -0.84 [-1.20, -0.50], 10 seeds, Holm p = 0.003'."""
    lo, hi = c["ci95"]
    effect = f"{c['mean']:+{fmt}} [{lo:+{fmt}}, {hi:+{fmt}}], {c['n']} {c.get('unit', 'seeds')}"
    difference, equivalence = c.get("test", ("paired t", "TOST"))
    if c["verdict"] in ("better", "worse"):
        return f"{c['verdict']}: {effect}, {difference}, Holm p = {c['p_holm']:.2g}"
    if c["verdict"] == "equivalent":
        return f"equivalent within +/- {c['margin']:{fmt}}: {effect}, {equivalence} Holm p = {c['p_equiv_holm']:.2g}"
    unit = c.get("unit", "seeds")
    need = f"; ~{c['seeds_needed']} {unit} would decide it" if c["seeds_needed"] else f"; no count of {unit} decides it"
    return f"undecided: {effect}, Holm p = {c['p_holm']:.2g} (difference), {c['p_equiv_holm']:.2g} (within +/- {c['margin']:{fmt}}){need}"
