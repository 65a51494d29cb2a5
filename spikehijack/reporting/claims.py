"""The one home of verdicts: the paper's claims, the vocabulary, and the rules that turn evidence into a verdict.

A chapter computes *evidence* for one *link* of a claim (claim 1's ordering is two links: MaxSim > Top-k and
Top-k > softmax): an estimate with its 95 % interval, how many seeds and queries it rests on and, for ratios,
how many base hits. The rules below decide; a chapter never writes a verdict by hand. Rows go into
``claims_NN.csv`` (columns ``COLUMNS``); notebook 06 stacks them into ``claims.csv``.

Vocabulary (one verdict per row):
- paper claims: reproduced / partly reproduced / not reproduced / indicative (the interval cannot decide and
  rests on fewer than ``MIN_SEEDS`` seeds: the quick profile) / untestable here (a floor or ceiling: too little
  base evidence, the minimum stated in the row) / calibrated (the number was a calibration target) / mechanism
  (a property of untrained inputs, not a trained result);
- findings beyond the paper: supported / not supported / inconclusive.
"Reproduced" needs the interval to support it; "similar" needs an equivalence test with a stated margin.

>>> direction(0.02, 0.10, n_seeds=5), direction(-0.10, 0.05, n_seeds=5), direction(-0.10, 0.05, n_seeds=2)
('reproduced', 'not reproduced', 'indicative')
>>> similar(-0.03, 0.04, margin=0.05, n_seeds=5), similar(0.06, 0.20, margin=0.05, n_seeds=5)
('reproduced', 'not reproduced')
>>> finding(0.0, 0.0, +1, base_hits=0), finding(0.0, 0.0, -1, base_hits=50, strict=False)
('inconclusive', 'supported')
"""

from __future__ import annotations

import math

#: PAPER.md section 5, the eight claims the reproduction tests.
PAPER_CLAIMS: dict[str, str] = {
    "1": "Gini ordering MaxSim > Top-k > Softmax, in synthetic training and on a real model",
    "2": "The ordering appears early in training and stays stable",
    "3": "MaxSim and Top-4 reach similar Recall@1; Softmax (tau = 1) is clearly worse",
    "4": "Recall falls with M for every pooling; MaxSim falls fastest; Top-4 beats MaxSim at large M",
    "5": "Token-targeted spike injection collapses MaxSim and Top-k recall; Softmax keeps far more",
    "6": "Larger k does not restore robustness under spike injection",
    "7": "Gaussian-patch injection of the same size barely hurts",
    "8": "Most token-wise argmax selections move to injected spikes",
}
CLAIM_VERDICTS = ("reproduced", "partly reproduced", "not reproduced", "indicative", "untestable here",
                  "calibrated", "mechanism")
FINDING_VERDICTS = ("supported", "not supported", "inconclusive")
VERDICTS = CLAIM_VERDICTS + FINDING_VERDICTS
COLUMNS = ["claim", "link", "world", "quantity", "paper", "ours", "ci_low", "ci_high", "n_seeds", "n_queries",
           "base_hits", "verdict", "where"]

#: An interval over fewer seeds cannot refute: where it cannot decide, the verdict is "indicative".
MIN_SEEDS = 3
#: A ratio to a clean baseline (retained recall) needs this many clean hits (pooled over seeds) to be judged.
MIN_BASE_HITS = 10
#: Equivalence margin for "similar" Recall@1 (claim 3) and for "does not restore" across k (claim 6).
SIMILAR_MARGIN = 0.05
#: How far a Gini level may sit from the paper's to count as the paper's level (claim 1, levels).
GINI_LEVEL_MARGIN = 0.1
#: Below this retained share every pooling has collapsed: comparisons between them are floors (claim 6).
COLLAPSE_FLOOR = 0.05


def _undecided(n_seeds: int | None) -> str:
    return "indicative" if n_seeds is not None and n_seeds < MIN_SEEDS else "not reproduced"


def direction(low: float, high: float, threshold: float = 0.0, above: bool = True, n_seeds: int | None = None) -> str:
    """The claim "the quantity is above (``above``) / below ``threshold``" against its interval [low, high]:
    reproduced when the whole interval is on the claimed side, not reproduced when none of it is, else
    indicative (fewer than ``MIN_SEEDS`` seeds) or not reproduced. A single run (``n_seeds`` 1, no interval) is
    indicative at best."""
    if any(map(math.isnan, (low, high))):
        return "untestable here"
    if low == high and n_seeds is not None and n_seeds <= 1:
        return "indicative"  # one run, no interval: a point estimate cannot support a claim
    lo, hi = (low - threshold, high - threshold) if above else (threshold - high, threshold - low)
    if lo > 0:
        return "reproduced"
    if hi <= 0:
        return "not reproduced"
    return _undecided(n_seeds)


def similar(low: float, high: float, margin: float = SIMILAR_MARGIN, target: float = 0.0,
            n_seeds: int | None = None) -> str:
    """Equivalence (two one-sided tests at the interval's level): reproduced when [low, high] lies within
    target +- margin, not reproduced when it lies entirely outside, else indicative / not reproduced."""
    if any(map(math.isnan, (low, high))):
        return "untestable here"
    if target - margin <= low and high <= target + margin:
        return "reproduced"
    if high < target - margin or low > target + margin:
        return "not reproduced"
    return _undecided(n_seeds)


def few_seeds(verdict: str, n_seeds: int | None) -> str:
    """A decided verdict from fewer than ``MIN_SEEDS`` trained seeds is "indicative" (an interval over queries
    within so few trainings cannot see the variance between trainings); ``n_seeds`` None: queries are the unit."""
    decided = verdict in ("reproduced", "partly reproduced", "not reproduced")
    return "indicative" if decided and n_seeds is not None and n_seeds < MIN_SEEDS else verdict


def floor(base_hits: float | None, minimum: int = MIN_BASE_HITS) -> bool:
    """True when a ratio rests on fewer than ``minimum`` base hits: its verdict is "untestable here"."""
    return base_hits is None or math.isnan(base_hits) or base_hits < minimum


def finding(low: float, high: float, sign: int, base_hits: float | None = None, minimum: int = MIN_BASE_HITS,
            strict: bool = True) -> str:
    """A finding beyond the paper, "the difference has sign ``sign``" (``strict=False``: "... is at most 0 in
    the opposite direction", e.g. "does not raise"): supported when the interval lies on that side (excluding 0
    when strict), not supported when it lies on the other side, inconclusive when it straddles 0 or rests on
    fewer than ``minimum`` base hits (both arms at the floor)."""
    if base_hits is not None and floor(base_hits, minimum):
        return "inconclusive"
    lo, hi = (low, high) if sign > 0 else (-high, -low)
    if lo > 0 or (not strict and lo >= 0):
        return "supported"
    if hi < 0:
        return "not supported"
    return "inconclusive"


def row(claim: str, link: str, world: str, quantity: str, paper: str, ours: float, low: float, high: float,
        verdict: str, where: str, n_seeds: int | None = None, n_queries: int | None = None,
        base_hits: float | None = None) -> dict[str, object]:
    """One row of a claims table (``COLUMNS``); ``verdict`` must be in the vocabulary (``VERDICTS``)."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {list(VERDICTS)}, got {verdict!r}")
    return {"claim": str(claim), "link": link, "world": world, "quantity": quantity, "paper": paper,
            "ours": round(float(ours), 4), "ci_low": round(float(low), 4), "ci_high": round(float(high), 4),
            "n_seeds": n_seeds, "n_queries": n_queries,
            "base_hits": None if base_hits is None else round(float(base_hits), 4), "verdict": verdict,
            "where": where}
