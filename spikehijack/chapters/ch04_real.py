"""Chapter 04 (notebook 04): the real benchmark, offline (HPO-Dx and HPO-Syn2Def with all-MiniLM-L6-v2).

On the tasks of ``spikehijack.worlds.tasks``: the evaluation protocol (Recall@1/5/10, MRR, nDCG@5 per
pooling), the per-query document-patch gradient Gini of gold pairs, quality against the gold document's length,
a neutral length sweep, spike / Gaussian injection (``spikehijack.core.inject``) and the real-benchmark rows of
the claims (PAPER.md section 5).
"""

from __future__ import annotations

from collections.abc import Sequence

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
from ..reporting.stats import claim_row, mean_ci, paired_test
from ..worlds.tasks import (
    RealTask,
    injection_scores,
    neutral_pool,
    pad_task,
    relevance,
    score_ragged,
    score_ragged_many,
)


def evaluate(task: RealTask, poolings: Sequence[str], ks: tuple[int, ...] = (1, 5, 10)) -> pd.DataFrame:
    """Tidy table (task, pooling, metric, value) of Recall@k, MRR and nDCG@5 for each pooling."""
    rows = []
    scores = score_ragged_many(task.queries, task.documents, poolings)
    for spec in poolings:
        p = parse_pooling(spec)
        for metric, value in retrieval_metrics(scores[p.spec], relevance(task), ks).items():
            rows.append({"task": task.name, "pooling": p.label, "spec": p.spec, "metric": metric, "value": value})
    return pd.DataFrame(rows)


def per_query(task: RealTask, poolings: Sequence[str]) -> pd.DataFrame:
    """Per-query gold rank, Recall@1 and reciprocal rank with the gold document's length and the length of
    the top-1 document (for length-bias readings)."""
    rows = []
    lengths = task.doc_lengths
    scores = score_ragged_many(task.queries, task.documents, poolings)
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


def length_sweep(task: RealTask, poolings: Sequence[str], factors: Sequence[int] = (1, 2, 4, 8), seed: int = 0,
                 progress: bool = False) -> pd.DataFrame:
    """Retrieval quality when every document is padded to factor x its length with neutral real patches.

    Rows: factor, pooling, metric, value (tidy)."""
    pool = neutral_pool(task)
    frames = []
    for f in tqdm(factors, desc="length sweep", disable=not progress):
        t = pad_task(task, int(f), pool, seed=seed + int(f))
        ev = evaluate(t, poolings)
        frames.append(ev.assign(factor=int(f), task=task.name))
    return pd.concat(frames, ignore_index=True)


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
    hit@1 (gold ranked first), reciprocal rank, hijack rate and arg-max shift to injected patches (both in the
    top non-gold document after injection, as in inject.hijack_rate / argmax_shift with documents="top").

    Spikes: inject.spike_patches of the query's own vectors (normalised mean of ``spike_size`` of them); the
    control: inject.gaussian_patches (unit-norm Gaussian). Patches are drawn once with max(Ks) and sliced
    (nested). Tidy rows: kind, K, pooling, query, hit, rr, hijack, argmax_shift.
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
    clean = score_ragged_many(task.queries, task.documents, poolings)
    rows = []
    jobs = [(kind, K, spec) for kind in kinds for K in Ks for spec in poolings]
    for kind, K, spec in tqdm(jobs, desc="injection", disable=not progress):
        p = parse_pooling(spec)
        inj = patches[kind][:, :K]
        S = clean[p.spec] if K == 0 else injection_scores(task, p, inj)
        rank = gold_rank(S, relevance(task))
        if K == 0:
            hij = torch.zeros(len(Q))
            shift = torch.zeros(len(Q))
        else:
            D, dm, rel, sub, _ = _top_subcorpus(task, S)
            hij = inject.hijack_rate(Q, D, p, inj, rel, qm, dm, scores=sub, reduction="none")
            shift = inject.argmax_shift(Q, D, p, inj, rel, qm, dm, scores=sub, reduction="none").to_injected
        for i in range(len(Q)):
            rows.append({"task": task.name, "kind": kind, "K": int(K), "pooling": p.label, "spec": p.spec,
                         "query": i, "hit": float(rank[i] == 1), "rr": float(1.0 / rank[i]),
                         "hijack": float(hij[i]), "argmax_shift": float(shift[i])})
    return pd.DataFrame(rows)


def retained(inj: pd.DataFrame, value: str = "hit") -> pd.DataFrame:
    """Mean ``value`` per (kind, K, pooling) and its share of the K = 0 value ("retained")."""
    m = inj.groupby(["kind", "pooling", "K"], sort=False)[[value, "hijack", "argmax_shift"]].mean().reset_index()
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


def retained_ci(inj: pd.DataFrame, kind: str, pooling: str, K: int, value: str = "hit", n_boot: int = 2000,
                seed: int = 0) -> tuple[float, float, float]:
    """Retained share mean(value at K) / mean(value at K = 0) with a paired percentile bootstrap over queries."""
    base = inj[(inj.kind == kind) & (inj.pooling == pooling) & (inj.K == 0)].sort_values("query")[value].to_numpy()
    after = inj[(inj.kind == kind) & (inj.pooling == pooling) & (inj.K == K)].sort_values("query")[value].to_numpy()
    if len(base) == 0 or len(base) != len(after):
        raise ValueError(f"no paired rows for kind={kind!r}, pooling={pooling!r}, K={K}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), size=(n_boot, len(base)))
    b, a = base[idx].mean(1), after[idx].mean(1)
    ratios = np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)
    lo, hi = np.nanquantile(ratios, [0.025, 0.975])
    return float(after.mean() / base.mean()) if base.mean() > 0 else float("nan"), float(lo), float(hi)


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


def claims_table(gi: pd.DataFrame, gini_order: Sequence[str], sweep: pd.DataFrame, inj: pd.DataFrame,
                 maxsim: str, topk: str, softmax: str, topks: Sequence[str], K: int = 100,
                 loss: str = "pair", where: str = "04 real") -> pd.DataFrame:
    """Claims 1 and 4-8 of PAPER.md section 5 on the real benchmark, with pre-stated verdict rules:

    1. per-query Gini ordering gini_order[0] > [1] > [2] (both paired t-tests p < 0.05, in that direction;
       only the first above both others: partly);
    4. Recall@1 falls from x1 to the largest padding factor for every pooling, MaxSim falls most and Top-k beats
       MaxSim at the largest factor (all three: reproduced; the fall alone: partly);
    5. spike injection at K: MaxSim and Top-k keep < 50 % of Recall@1 and softmax keeps >= 20 points more;
    6. the Top-k family (``topks``) retains within 10 points of each other at K;
    7. Gaussian patches at K keep >= 90 % of MaxSim Recall@1 with a hijack rate < 0.15;
    8. under spikes at K > 50 % of MaxSim arg-max selections move to injected patches (Gaussian < 15 %).
    """
    rows = []
    g = gi[gi.loss == loss]
    tests = gini_tests(gi, gini_order, loss)
    ordered = bool(((tests.mean_diff > 0) & (tests.p < 0.05)).all())
    top = pd.concat([gini_tests(gi, [gini_order[0], b], loss) for b in gini_order[1:]])
    first = bool(((top.mean_diff > 0) & (top.p < 0.05)).all())  # MaxSim above both others
    v1 = "reproduced" if ordered else ("partly reproduced" if first else "not reproduced")
    for lab, paper in zip(gini_order, ("0.983", "0.951", "0.883"), strict=False):
        m, lo, hi = mean_ci(g[g.pooling == lab].gini)
        rows.append(claim_row("1", f"gold-pair patch-gradient Gini, {lab} ({loss} loss)", paper, m, lo, hi, v1, where))
    r1 = sweep[sweep.metric == "recall@1"].pivot_table(index="factor", columns="pooling", values="value")
    f0, f1 = r1.index.min(), r1.index.max()
    drop = r1.loc[f0] - r1.loc[f1]
    falls = bool((drop > 0).all())
    fastest = bool(drop[maxsim] >= drop.max() - 1e-12)
    topk_wins = bool(r1.loc[f1, topk] > r1.loc[f1, maxsim])
    v4 = "reproduced" if falls and fastest and topk_wins else ("partly reproduced" if falls else "not reproduced")
    for lab in (maxsim, topk, softmax):
        rows.append(claim_row("4", f"Recall@1 drop x{f0} -> x{f1} neutral padding, {lab}",
                              "falls for all; MaxSim fastest; Top-4 > MaxSim at large M",
                              float(drop[lab]), float(drop[lab]), float(drop[lab]), v4, where))
    ret = {lab: retained_ci(inj, "spike", lab, K) for lab in (maxsim, topk, softmax)}
    collapse = ret[maxsim][0] < 0.5 and ret[topk][0] < 0.5
    keeps = ret[softmax][0] - max(ret[maxsim][0], ret[topk][0]) >= 0.2
    v5 = "reproduced" if collapse and keeps else ("partly reproduced" if collapse else "not reproduced")
    for lab, paper in zip((maxsim, topk, softmax), ("0.278", "0.293", "0.676"), strict=True):
        rows.append(claim_row("5", f"Recall@1 retained, spikes K={K}, {lab}", paper, *ret[lab], v5, where))
    for lab in (maxsim, topk):
        h = inj[(inj.kind == "spike") & (inj.pooling == lab) & (inj.K == K)].hijack
        rows.append(claim_row("5", f"hijack rate, spikes K={K}, {lab}", "~0.70", *mean_ci(h), v5, where))
    rk = {lab: retained_ci(inj, "spike", lab, K) for lab in topks}
    spread = max(v[0] for v in rk.values()) - min(v[0] for v in rk.values())
    v6 = "reproduced" if spread <= 0.1 and max(v[0] for v in rk.values()) < 0.5 else "not reproduced"
    for lab in topks:
        rows.append(claim_row("6", f"Recall@1 retained, spikes K={K}, {lab}", "0.28-0.30", *rk[lab], v6, where))
    gret = retained_ci(inj, "gaussian", maxsim, K)
    ghij = inj[(inj.kind == "gaussian") & (inj.pooling == maxsim) & (inj.K == K)].hijack
    v7 = "reproduced" if gret[0] >= 0.9 and ghij.mean() < 0.15 else "not reproduced"
    rows.append(claim_row("7", f"Recall@1 retained, Gaussian K={K}, {maxsim}", "~0.97", *gret, v7, where))
    rows.append(claim_row("7", f"hijack rate, Gaussian K={K}, {maxsim}", "< 0.15", *mean_ci(ghij), v7, where))
    sh = inj[(inj.kind == "spike") & (inj.pooling == maxsim) & (inj.K == K)].argmax_shift
    gsh = inj[(inj.kind == "gaussian") & (inj.pooling == maxsim) & (inj.K == K)].argmax_shift
    v8 = "reproduced" if sh.mean() > 0.5 and gsh.mean() < 0.15 else "not reproduced"
    rows.append(claim_row("8", f"arg-max selections moved to spikes, K={K}, {maxsim}", "~0.83", *mean_ci(sh), v8,
                          where))
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
    clean = score_ragged(task.queries, task.documents, pooling)
    after = injection_scores(task, pooling, spikes)
    lost = (gold_rank(clean, relevance(task)) == 1) & (gold_rank(after, relevance(task)) > 1)
    q = int(torch.nonzero(lost)[0]) if bool(lost.any()) else 0
    out = {"spike": selection_example(task, q, spikes[q], after)}
    out["gaussian"] = selection_example(task, q, gauss[q], injection_scores(task, pooling, gauss))
    return out
