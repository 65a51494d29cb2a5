"""Chapter 04 (notebook 04): the real benchmark, offline (HPO-Dx and HPO-Syn2Def with all-MiniLM-L6-v2).

On the tasks of ``spikehijack.worlds.tasks``: the evaluation protocol (Recall@1/5/10, MRR, nDCG@5 per
pooling), the per-query document-patch gradient Gini of gold pairs, quality against the gold document's length,
a neutral length sweep, spike / Gaussian injection (``spikehijack.core.inject``) and the real-benchmark rows of
the claims (PAPER.md section 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core import inject
from ..core.checks import check_positive_int
from ..core.metrics import gini, gold_rank, patch_gradient_norms, retrieval_metrics
from ..core.pooling import parse_pooling
from ..core.scoring import pad
from ..reporting import claims, evidence
from ..reporting.stats import Resampler, mean_ci, paired_test
from ..worlds.tasks import (
    RealTask,
    injection_scores_many,
    neutral_pool,
    pad_task,
    relevance,
    score_ragged_many,
)


def evaluate(task: RealTask, poolings: Sequence[str], ks: tuple[int, ...] = (1, 5, 10),
             scores: dict[str, Tensor] | None = None) -> pd.DataFrame:
    """Tidy table (task, pooling, metric, value) of Recall@k, MRR and nDCG@5 for each pooling (``scores``: the
    [Nq, Nd] scores of each pooling spec when already computed, e.g. by ``score_ragged_many``)."""
    rows = []
    scores = scores or score_ragged_many(task.queries, task.documents, poolings)
    for spec in poolings:
        p = parse_pooling(spec)
        for metric, value in retrieval_metrics(scores[p.spec], relevance(task), ks).items():
            rows.append({"task": task.name, "pooling": p.label, "spec": p.spec, "metric": metric, "value": value})
    return pd.DataFrame(rows)


def per_query(task: RealTask, poolings: Sequence[str], scores: dict[str, Tensor] | None = None) -> pd.DataFrame:
    """Per-query gold rank, Recall@1 (1 when a relevant document ranks first) and reciprocal rank with the gold
    document's length and the length of the top-1 document (for length-bias readings); ``scores`` as in
    ``evaluate``."""
    rows = []
    lengths = task.doc_lengths
    scores = scores or score_ragged_many(task.queries, task.documents, poolings)
    for spec in poolings:
        p = parse_pooling(spec)
        S = scores[p.spec]
        rank = gold_rank(S, relevance(task)).numpy()
        top = S.argmax(1).numpy()
        for i in range(len(task.queries)):
            rows.append({"task": task.name, "pooling": p.label, "spec": p.spec, "query": i, "rank": int(rank[i]),
                         "recall@1": float(rank[i] == 1), "rr": 1.0 / rank[i],
                         "gold_len": int(lengths[int(task.gold[i])]), "top1_len": int(lengths[top[i]]),
                         "query_len": len(task.queries[i])})
    return pd.DataFrame(rows)


def sweep_tau(task: RealTask, taus: Sequence[float], metric: str = "mrr") -> pd.DataFrame:
    """Softmax pooling quality for each tau: (tau, metric, value) rows."""
    rows = []
    scores = score_ragged_many(task.queries, task.documents, [f"softmax:{tau:g}" for tau in taus])
    for tau in taus:
        for m, v in retrieval_metrics(scores[f"softmax:{tau:g}"], relevance(task)).items():
            rows.append({"task": task.name, "tau": float(tau), "metric": m, "value": v})
    return pd.DataFrame(rows)


def pick_tau(sweep: pd.DataFrame, metric: str = "mrr") -> float:
    """The tau with the best ``metric`` in a ``sweep_tau`` table (smallest tau on ties)."""
    g = sweep[sweep.metric == metric].sort_values(["value", "tau"], ascending=[False, True])
    return float(g.iloc[0]["tau"])


# ----------------------------------------------------------------------------------------------------------
# Gradient concentration of gold pairs


def gold_pair_gini(task: RealTask, poolings: Sequence[str], losses: Sequence[str] = ("pair", "infonce"),
                   batch_size: int | None = None) -> pd.DataFrame:
    """Per-query Gini of the document-patch gradient norms at the gold document (metrics.patch_gradient_norms).

    The queries and their gold documents form in-batch InfoNCE batches (all queries at once by default, or
    ``batch_size`` consecutive queries). Rows: pooling, loss, query, gini, gold_len, query_len and the MaxSim
    structural bound max(0, 1 - T/M).
    """
    n = len(task.queries)
    step = n if batch_size is None else check_positive_int("batch_size", batch_size, minimum=2)
    rows = []
    for spec in poolings:
        p = parse_pooling(spec)
        for loss in losses:
            for s in range(0, n, step):
                ids = list(range(s, min(n, s + step)))
                Q, qm = pad([task.queries[i] for i in ids])
                D, dm = pad([task.documents[int(task.gold[i])] for i in ids])
                g = patch_gradient_norms(Q, D, p, qm, dm, loss=loss)
                G = gini(g, mask=dm)
                for j, i in enumerate(ids):
                    T, M = int(qm[j].sum()), int(dm[j].sum())
                    rows.append({"pooling": p.label, "spec": p.spec, "loss": loss, "query": i, "gini": float(G[j]),
                                 "gold_len": M, "query_len": T, "bound": max(0.0, 1 - T / M)})
    return pd.DataFrame(rows)


def length_bins(values: np.ndarray, edges: Sequence[int] = (1, 8, 16, 32, 64, 10_000)) -> list[str]:
    """Labels like '8-15' for integer lengths binned by ``edges`` (left-closed)."""
    labels = []
    for v in values:
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            if lo <= v < hi:
                labels.append(f"{lo}-{hi - 1}" if hi < 10_000 else f">={lo}")
                break
        else:
            raise ValueError(f"length {v} outside the bin edges {edges}")
    return labels


class LengthSweep(NamedTuple):
    """The neutral length sweep: ``metrics`` (factor, task, pooling, spec, metric, value; ``evaluate`` per factor)
    and ``queries`` (``per_query`` per factor: factor, pooling, spec, query, rank, recall@1, rr, ...), from one
    scoring pass per factor."""

    metrics: pd.DataFrame
    queries: pd.DataFrame


def length_sweep(task: RealTask, poolings: Sequence[str], factors: Sequence[int] = (1, 2, 4, 8), seed: int = 0,
                 progress: bool = False) -> LengthSweep:
    """Retrieval quality when every document is padded to factor x its length with neutral real patches
    (``pad_task``; factor f draws its padding with seed ``seed + f``): corpus metrics and per-query ranks."""
    pool = neutral_pool(task)
    metrics, queries = [], []
    for f in tqdm(factors, desc="length sweep", disable=not progress):
        t = pad_task(task, int(f), pool, seed=seed + int(f))
        scores = score_ragged_many(t.queries, t.documents, poolings)
        metrics.append(evaluate(t, poolings, scores=scores).assign(factor=int(f), task=task.name))
        queries.append(per_query(t, poolings, scores=scores).assign(factor=int(f), task=task.name))
    return LengthSweep(pd.concat(metrics, ignore_index=True), pd.concat(queries, ignore_index=True))


# ----------------------------------------------------------------------------------------------------------
# Injection (spikes vs Gaussian control) via spikehijack.core.inject


def _top_subcorpus(task: RealTask, scores: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gold and top non-gold document of every query as one padded sub-corpus:
    (D [2Nq, M, d], d_mask, relevance [Nq, 2Nq], sub-scores [Nq, 2Nq], doc ids [2Nq])."""
    R = relevance(task)
    top = inject.top_nongold_documents(scores, R)
    ids = torch.cat([task.gold, top])
    D, dm = pad([task.documents[int(i)] for i in ids])
    rel = R[:, ids]
    return D, dm, rel, scores[:, ids], ids


def injection_experiment(
    task: RealTask,
    poolings: Sequence[str],
    Ks: Sequence[int] = (0, 25, 50, 100, 200, 400),
    kinds: Sequence[str] = ("spike", "gaussian"),
    spike_size: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Inject K patches per query into every non-gold document and measure, per query and pooling:
    hit@1 (gold ranked first), reciprocal rank, the hijack rate (share of query tokens whose arg-max patch is
    injected) and the pooling's selection mass on injected patches (both in the top non-gold document after
    injection: inject.hijack_rate / selection_mass with documents="top").

    Spikes: inject.spike_patches of the query's own vectors (normalised mean of ``spike_size`` of them); the
    control: inject.gaussian_patches (unit-norm Gaussian). Patches are drawn once with max(Ks) and sliced
    (nested). Tidy rows: kind, K, pooling, spec, query, hit, rr, hijack_rate, selection_mass.
    """
    Q, qm = pad(list(task.queries))
    Kmax = max(Ks)
    g = torch.Generator().manual_seed(seed)
    patches = {}
    for kind in kinds:
        if kind == "spike":
            patches[kind] = inject.spike_patches(Q, Kmax, spike_size=spike_size, q_mask=qm, generator=g)
        elif kind == "gaussian":
            patches[kind] = inject.gaussian_patches(len(Q), Kmax, Q.shape[-1], generator=g, dtype=Q.dtype)
        else:
            raise ValueError(f"kinds: expected 'spike' or 'gaussian', got {kind!r}")
    rows = []
    jobs = [(kind, K, parse_pooling(spec)) for kind in kinds for K in Ks for spec in poolings]
    scores = injection_scores_many(task, [(p, patches[kind][:, :K]) for kind, K, p in jobs])  # one corpus pass
    for (kind, K, p), S in tqdm(list(zip(jobs, scores, strict=True)), desc="injection", disable=not progress):
        inj = patches[kind][:, :K]
        rank = gold_rank(S, relevance(task))
        if K == 0:
            hij = mass = torch.zeros(len(Q))
        else:
            D, dm, rel, sub, _ = _top_subcorpus(task, S)
            hij = inject.hijack_rate(Q, D, p, inj, rel, qm, dm, scores=sub, reduction="none")
            mass = inject.selection_mass(Q, D, p, inj, rel, qm, dm, scores=sub, reduction="none")
        for i in range(len(Q)):
            rows.append({"task": task.name, "kind": kind, "K": int(K), "pooling": p.label, "spec": p.spec,
                         "query": i, "hit": float(rank[i] == 1), "rr": float(1.0 / rank[i]),
                         "hijack_rate": float(hij[i]), "selection_mass": float(mass[i])})
    return pd.DataFrame(rows)


def retained(inj: pd.DataFrame, value: str = "hit") -> pd.DataFrame:
    """Mean ``value`` per (kind, K, pooling) and its share of the K = 0 value ("retained")."""
    m = inj.groupby(["kind", "pooling", "K"], sort=False)[[value, "hijack_rate", "selection_mass"]].mean().reset_index()
    base = m[m.K == 0].set_index(["kind", "pooling"])[value]
    m["retained"] = [v / base[(k, p)] if base[(k, p)] > 0 else float("nan")
                     for k, p, v in zip(m.kind, m.pooling, m[value], strict=True)]
    return m


def selection_example(task: RealTask, query: int, injected: Tensor, scores: Tensor) -> dict[str, object]:
    """Figure-2 data for one query: its top non-gold document after injection and the arg-max patch of every
    query token before and after (inject.selected_patches). injected [K, d] are the query's patches."""
    top = int(inject.top_nongold_documents(scores[query : query + 1], relevance(task)[query : query + 1])[0])
    before, after = inject.selected_patches(task.queries[query], task.documents[top], injected.to(
        task.documents[top].dtype))
    S = torch.cat([task.queries[query] @ task.documents[top].T, task.queries[query] @ injected.T], dim=1)
    return {"doc": top, "M": len(task.documents[top]), "K": len(injected), "before": before.numpy(),
            "after": after.numpy(), "S": S.numpy(), "tokens": task.query_text[query] if task.query_text else []}


# ----------------------------------------------------------------------------------------------------------
# Summaries with intervals and the claims table


def gini_tests(gi: pd.DataFrame, order: Sequence[str], loss: str = "pair") -> pd.DataFrame:
    """Paired t-tests (stats.paired_test) of per-query Gini between consecutive poolings in ``order``
    (labels), for one loss reading."""
    rows = []
    g = gi[gi.loss == loss]
    for a, b in zip(order[:-1], order[1:], strict=True):
        x = g[g.pooling == a].sort_values("query").gini.to_numpy()
        y = g[g.pooling == b].sort_values("query").gini.to_numpy()
        rows.append({"loss": loss, "a": a, "b": b, **paired_test(x, y)})
    return pd.DataFrame(rows)


def length_claims(queries: pd.DataFrame, order: Sequence[str], world: str = "real", where: str = "04 real",
                  n_seeds: int | None = None, n_boot: int = evidence.N_BOOT) -> list[dict[str, object]]:
    """Claim 4 from the per-query length sweep (``LengthSweep.queries``) by the rules of the synthetic world
    (``ch03_tradeoff.claims_length``): for each pooling of ``order`` (labels: MaxSim, Top-k, softmax) Recall@1
    at the largest factor minus at factor 1 is < 0; MaxSim's relative drop exceeds the largest other; Top-k
    beats MaxSim at the largest factor. Intervals from one paired bootstrap over queries (the same draws for
    every pooling and factor, ``stats.Resampler``); a difference resting on fewer than ``claims.MIN_BASE_HITS``
    hits (at factor 1 for the drops; at the largest factor in both arms for the last link) is untestable here.
    ``n_seeds``: trained models behind the sweep (``claims.few_seeds``; None for a zero-shot model)."""
    f0, f1 = int(queries["factor"].min()), int(queries["factor"].max())
    wide = queries.pivot_table(index=["pooling", "factor"], columns="query", values="recall@1")
    missing = [(p, f) for p in order for f in (f0, f1) if (p, f) not in wide.index]
    if missing or wide.isna().any().any():
        raise ValueError(f"queries: no complete (pooling, factor, query) grid (missing {missing})")
    boot = Resampler([wide.shape[1]], n_boot, 0)
    est = {key: boot.estimate(wide.loc[key].to_numpy()[None]) for key in wide.index}  # (point, replicates [B])
    hits = wide.sum(axis=1)

    def row(link: str, quantity: str, point: float, reps: np.ndarray, base: float, above: bool) -> dict[str, object]:
        lo, hi = evidence.interval(reps)
        verdict = "untestable here" if claims.floor(base) else claims.few_seeds(
            claims.direction(lo, hi, above=above), n_seeds)
        return claims.row("4", link, world, quantity, "< 0" if not above else "> 0", point, lo, hi, verdict, where,
                          n_seeds=n_seeds, n_queries=wide.shape[1], base_hits=base)

    def diff(a: tuple[str, int], b: tuple[str, int]) -> tuple[float, np.ndarray]:
        return est[a][0] - est[b][0], est[a][1] - est[b][1]

    def relative(p: str) -> tuple[float, np.ndarray]:  # 1 - R@1(f1) / R@1(f0); NaN without hits at f0
        (a, a_reps), (b, b_reps) = est[(p, f1)], est[(p, f0)]
        with np.errstate(divide="ignore", invalid="ignore"):
            return (1 - a / b if b > 0 else float("nan"),
                    np.where(b_reps > 0, 1 - a_reps / np.where(b_reps > 0, b_reps, 1), np.nan))

    maxsim, topk, others = order[0], order[1], list(order[1:])
    rows = [row(f"falls with M, {p}", f"Recall@1(x{f1}) - Recall@1(x{f0}), neutral padding", *diff((p, f1), (p, f0)),
                hits[(p, f0)], above=False) for p in order]
    own, rest = relative(maxsim), [relative(p) for p in others]
    rows.append(row("MaxSim falls fastest", f"relative Recall@1 drop x{f0} -> x{f1}, MaxSim - largest other",
                    float(own[0] - np.nanmax([r[0] for r in rest])), own[1] - np.fmax.reduce([r[1] for r in rest]),
                    min(hits[(p, f0)] for p in order), above=True))
    rows.append(row(f"{topk} > MaxSim at large M", f"Recall@1 {topk} - MaxSim at x{f1}",
                    *diff((topk, f1), (maxsim, f1)), hits[(topk, f1)] + hits[(maxsim, f1)], above=True))
    return rows


def claims_table(gi: pd.DataFrame, gini_order: Sequence[str], sweep: pd.DataFrame, inj: pd.DataFrame,
                 softmax: str, K: int = 100, loss: str = "pair", where: str = "04 real",
                 world: str = "real", n_seeds: int | None = None) -> pd.DataFrame:
    """Evidence for claims 1 and 4-8 of PAPER.md section 5 on the real benchmark, one row per link, judged by
    ``reporting.claims``: claim 1 from paired t-intervals of per-query Gini differences; claim 4 from the
    per-query length sweep ``sweep`` (``LengthSweep.queries``) by ``length_claims``; claims 5-8 from the
    per-query injection table by ``reporting.evidence`` (bootstrap over queries), with ``softmax`` the validated
    spec. ``world`` names the view ("real": phrase patches; "real tokens": the token view). ``n_seeds``: the
    trained models behind the tables (notebook 04's phrase view: one projection head, so a decided verdict is
    indicative, ``claims.few_seeds``: intervals over its queries cannot see the variance between trainings);
    None for a zero-shot model, whose queries are the unit."""
    rows = []
    g = gi[gi.loss == loss]
    for a, b in zip(gini_order[:-1], gini_order[1:], strict=True):  # claim 1: two links of the ordering
        x = g[g.pooling == a].sort_values("query").gini.to_numpy()
        y = g[g.pooling == b].sort_values("query").gini.to_numpy()
        m, lo, hi = mean_ci(x - y, bounds=(-1, 1))
        rows.append(claims.row("1", f"{a} > {b}", world, f"gold-pair patch-gradient Gini ({loss} loss), {a} - {b}",
                               "> 0 (p < 1e-80)", m, lo, hi, claims.few_seeds(claims.direction(lo, hi), n_seeds),
                               where, n_seeds=n_seeds, n_queries=len(x)))
    bound = float(g[g.pooling == gini_order[0]].bound.mean())
    for lab, paper in zip(gini_order, (0.983, 0.951, 0.883), strict=False):
        x = g[g.pooling == lab].gini.to_numpy()
        m, lo, hi = mean_ci(x, bounds=(0, 1))
        rows.append(claims.row("1", f"level, {lab}", world, f"gold-pair patch-gradient Gini ({loss} loss), {lab} "
                               f"(bound 1 - T/M here {bound:.3f}; paper's M ~ 766: 0.979)", f"{paper}", m, lo, hi,
                               claims.few_seeds(claims.similar(lo, hi, claims.GINI_LEVEL_MARGIN, paper), n_seeds),
                               where, n_seeds=n_seeds, n_queries=len(x)))
    rows += length_claims(sweep, [parse_pooling(s).label for s in ("maxsim", "topk:4", softmax)], world, where,
                          n_seeds)
    ev = evidence.Injection(inj.assign(pooling=inj["spec"], seed=0), world, where, trained=n_seeds)
    rows += evidence.collapse(ev, ["maxsim", "topk:4"], K, {"maxsim": "0.278", "topk:4": "0.293"})
    rows += evidence.keeps_more(ev, softmax, ["maxsim", "topk:4"], K, "+0.38 (0.676 vs 0.293)")
    rows += evidence.larger_k(ev, ["topk:1", "topk:4", "topk:16"], K, "0.28-0.30 for k = 1, 4, 16")
    rows += evidence.length_neutral(ev, ["maxsim", "topk:4", softmax], K, "~0.97")
    rows += evidence.argmax_moves(ev, ["maxsim", "topk:4"], K, "~0.70 (sec. 4.2), ~0.83 (Fig 2)")
    return pd.DataFrame(rows)


def figure2_examples(task: RealTask, K: int = 100, spike_size: int = 4, seed: int = 0,
                     pooling: str = "maxsim") -> dict[str, dict[str, object]]:
    """Figure-2 data for one query, spikes and Gaussian patches (the construction of
    ``injection_experiment``): the first query whose gold ranks first before injection and not after spike
    injection (else query 0). Returns {"spike": selection_example, "gaussian": selection_example}."""
    Q, qm = pad(list(task.queries))
    g = torch.Generator().manual_seed(seed)
    spikes = inject.spike_patches(Q, K, spike_size=spike_size, q_mask=qm, generator=g)
    gauss = inject.gaussian_patches(len(Q), K, Q.shape[-1], generator=g, dtype=Q.dtype)
    clean, after, after_g = injection_scores_many(task, [(pooling, spikes[:, :0]), (pooling, spikes),
                                                         (pooling, gauss)])
    lost = (gold_rank(clean, relevance(task)) == 1) & (gold_rank(after, relevance(task)) > 1)
    q = int(torch.nonzero(lost)[0]) if bool(lost.any()) else 0
    return {"spike": selection_example(task, q, spikes[q], after),
            "gaussian": selection_example(task, q, gauss[q], after_g)}


def head_reading(quality: pd.DataFrame) -> str:
    """One sentence from the quality table: what the MaxSim head does to MaxSim's Recall@1 on HPO-Dx, the best
    pooling zero-shot and with the head, and the spread of the poolings on the token-level Syn2Def task."""
    r1 = quality[quality.metric == "recall@1"].set_index(["task", "model", "pooling"])["value"]
    r1 = r1.sort_index(level=[0, 1], sort_remaining=False)  # lexsorted (task, model), poolings in table order
    zs, hd = r1.loc[("hpo-dx", "zero-shot")], r1.loc[("hpo-dx+head", "MaxSim head")]
    syn = r1.loc[("hpo-syn2def", "zero-shot tokens")]
    return (f"MaxSim Recall@1 {zs['MaxSim']:.3f} zero-shot -> {hd['MaxSim']:.3f} with the head; best pooling "
            f"zero-shot {zs.idxmax()} ({zs.max():.3f}), with the head {hd.idxmax()} ({hd.max():.3f}); "
            f"Syn2Def poolings span {syn.min():.3f}-{syn.max():.3f}")
