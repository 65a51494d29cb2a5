"""Chapter 03 (notebook 03): the sparsity-robustness tradeoff in the synthetic world.

Models trained at one length evaluated at every length, token-targeted spike injection against the Gaussian
control, the frontier of gradient concentration against robustness, claims 4-8 (synthetic side) and how the
conclusions move with the world's knobs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core import inject
from ..core.metrics import recall_at_k
from ..profiles import POOLINGS_MAIN, SOFTMAX_WORKING, calibrated_world
from ..reporting import claims, evidence
from ..reporting.stats import mean_ci
from ..runner.groups import load_group_models, world_of
from ..runner.train import TrainConfig, evaluate_stack, train_stack
from ..worlds.synthetic import SyntheticConfig, expected_recall_at_1, generate, oracle_scores
from .ch02_spikes import final_values, label


@torch.no_grad()
def cross_length(
    configs: Sequence[Mapping[str, Any]], cache_dir: str | Path, lengths: Sequence[int], n_eval: int,
    device: str = "cpu", progress: bool = True,
) -> pd.DataFrame:
    """Recall@1 of every cached model (trained at its length) on evaluation corpora of every length.

    Evaluation worlds use ``n_eval`` queries (corpus 2 n_eval) for every pair of lengths, so the diagonal is
    recomputed in the same setting. Returns rows: train_length, eval_length, pooling, seed, recall@1.
    """
    rows = []
    todo = [(c, L) for c in configs for L in lengths]
    for config, L in tqdm(todo, desc="cross-length", disable=not progress):
        enc, pools, seeds = load_group_models(config, cache_dir, device)
        worlds = {s: world_of(config, s, length=L, n_eval=n_eval) for s in set(seeds)}
        q = torch.stack([worlds[s].eval.queries for s in seeds])
        docs = torch.stack([worlds[s].eval.corpus()[0] for s in seeds])
        res = evaluate_stack(enc, q, docs, torch.arange(n_eval), pools)
        for r, m in enumerate(res):
            rows.append({"train_length": config["length"], "eval_length": L, "pooling": pools[r],
                         "seed": seeds[r], "recall@1": m["recall@1"]})
    return pd.DataFrame(rows)


@torch.no_grad()
def injection_sweep(
    config: Mapping[str, Any], cache_dir: str | Path, ks: Sequence[int], n_queries: int = 128,
    spike_size: int = 4, device: str = "cpu", progress: bool = True,
) -> pd.DataFrame:
    """Token-targeted spike injection vs the Gaussian control for every run of a cached group.

    For each run: the first ``n_queries`` evaluation queries are ranked against the whole evaluation corpus
    after query a's K injected patches go into every non-gold document (``inject.score_with_injection``).
    Spikes are built in raw space from the query's own concepts (normalize(mean of ``spike_size`` of them),
    the hard negatives' construction) and Gaussian patches are unit Gaussian vectors; both pass through the
    trained encoder. Per-query rows (``reporting.evidence``): pooling, seed, kind, K, query, hit (gold ranked
    first), hijack_rate (share of the query's tokens whose arg-max patch is injected) and selection_mass (the
    pooling's weight on injected patches), both in the query's top non-gold document; 0 at K = 0.
    """
    enc, pools, seeds = load_group_models(config, cache_dir, device)
    worlds = {s: world_of(config, s) for s in set(seeds)}
    kmax = max(ks)
    parts = []
    for r in tqdm(range(len(pools)), desc="injection", disable=not progress):
        w, sub = worlds[seeds[r]], enc.select([r])
        n = min(n_queries, len(w.eval))
        docs, gold_all = w.eval.corpus()
        dev = sub.weights[0].device
        Q = sub(w.eval.queries[None, :n].to(dev))[0]
        D = sub(docs[None].to(dev))[0]
        gold = gold_all[:n].to(dev)
        g = torch.Generator().manual_seed(int(seeds[r]) * 13 + 5)
        raw = {"spike": inject.spike_patches(w.concepts[w.eval.query_concepts[:n]], kmax, spike_size, generator=g),
               "gaussian": inject.gaussian_patches(n, kmax, w.config.dim, generator=g)}
        clean = inject.score_with_injection(Q, D, pools[r], Q.new_zeros(n, 0, Q.shape[-1]), gold)
        for kind, patches in raw.items():
            enc_patches = sub(patches[None].to(dev))[0]
            for K in ks:
                inj = enc_patches[:, :K]
                scores = clean if K == 0 else inject.score_with_injection(Q, D, pools[r], inj, gold,
                                                                           clean_scores=clean)
                zero = torch.zeros(n)
                part = {"pooling": pools[r], "seed": seeds[r], "kind": kind, "K": K, "query": np.arange(n),
                        "hit": recall_at_k(scores, gold, 1, reduction="none").cpu().numpy(),
                        "hijack_rate": (zero if K == 0 else inject.hijack_rate(
                            Q, D, pools[r], inj, gold, scores=scores, reduction="none")).cpu().numpy(),
                        "selection_mass": (zero if K == 0 else inject.selection_mass(
                            Q, D, pools[r], inj, gold, scores=scores, reduction="none")).cpu().numpy()}
                parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True)


def injection_summary(inj: pd.DataFrame) -> pd.DataFrame:
    """Per (kind, pooling, seed, K): Recall@1, its share of the clean value ("retained"; NaN without clean
    hits), the hijack rate and the selection mass, from ``injection_sweep``'s per-query rows."""
    m = (inj.groupby(["kind", "pooling", "seed", "K"], sort=False)[["hit", "hijack_rate", "selection_mass"]].mean()
         .rename(columns={"hit": "recall@1"}).reset_index())
    base = m[m["K"] == 0].set_index(["kind", "pooling", "seed"])["recall@1"]
    b = base.reindex(pd.MultiIndex.from_frame(m[["kind", "pooling", "seed"]])).to_numpy()
    m["retained"] = np.where(b > 0, m["recall@1"] / np.where(b > 0, b, 1), np.nan)
    return m


def frontier_table(train_df: pd.DataFrame, inj: pd.DataFrame, K: int = 100) -> pd.DataFrame:
    """Per pooling: final pair-Gini, clean Recall@1, retained recall under K spikes and under K Gaussian
    patches, and the hijack rate (seed means; ``inj``: ``injection_summary`` rows)."""
    g = final_values(train_df, "gini_pair_mean").groupby("pooling")["value"].mean().rename("gini")
    r = final_values(train_df, "recall@1").groupby("pooling")["value"].mean().rename("recall@1")
    sub = inj[(inj["kind"] == "spike") & (inj["K"] == K)]
    ret = sub.groupby("pooling")["retained"].mean().rename(f"retained@K={K}")
    gsub = inj[(inj["kind"] == "gaussian") & (inj["K"] == K)]
    gret = gsub.groupby("pooling")["retained"].mean().rename(f"Gaussian retained@K={K}")
    hij = sub.groupby("pooling")["hijack_rate"].mean().rename("hijack_rate")
    t = pd.concat([g, r, ret, gret, hij], axis=1).reset_index()
    t.insert(1, "label", t["pooling"].map(label))
    t["family"] = t["pooling"].str.split(":").str[0]
    return t.sort_values(["family", "gini"]).reset_index(drop=True)


def frontier_intervals(train_df: pd.DataFrame, inj: pd.DataFrame, K: int = 100) -> pd.DataFrame:
    """95 % intervals for the frontier figure, one row per pooling of ``frontier_table``: gini and recall@1 by
    t over seeds (clipped to [0, 1]); retained@K by the hierarchical bootstrap of ``evidence.curves`` over the
    per-query injection table ``inj`` (``injection_sweep`` rows). Columns pooling, ``m_low``, ``m_high``."""
    out = []
    for metric, name in (("gini_pair_mean", "gini"), ("recall@1", "recall@1")):
        per_seed = final_values(train_df, metric)
        rows = {p: mean_ci(g["value"].to_numpy(), bounds=(0, 1)) for p, g in per_seed.groupby("pooling")}
        out.append(pd.DataFrame({f"{name}_low": {p: r[1] for p, r in rows.items()},
                                 f"{name}_high": {p: r[2] for p, r in rows.items()}}))
    sub = inj[(inj["kind"] == "spike") & inj["K"].isin([0, K])]
    c = evidence.curves(sub, ("retained",))
    c = c[c["K"] == K].set_index("pooling")
    out.append(c[["retained_low", "retained_high"]].rename(columns=lambda n: n.replace("retained", f"retained@K={K}")))
    return pd.concat(out, axis=1).rename_axis("pooling").reset_index()


def oracle_by_length(configs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Recall@1 of the concept-counting oracle (``synthetic.oracle_scores``, ties at random) on each config's
    evaluation world, per length and seed: what concept identities allow at that length. Rows: length, seed,
    recall@1."""
    rows = []
    for config in configs:
        for s in config["seeds"]:
            w = world_of(config, s)
            gold = torch.arange(len(w.eval))  # query a's positive is document a (``Split.corpus`` order)
            r = expected_recall_at_1(oracle_scores(w.eval, w.concepts), gold).mean()
            rows.append({"length": config["length"], "seed": s, "recall@1": float(r)})
    return pd.DataFrame(rows)


def claims_03(main_df: pd.DataFrame, oracle: pd.DataFrame, inj: pd.DataFrame, inj_frontier: pd.DataFrame,
              K: int = 100) -> pd.DataFrame:
    """Evidence for claims 4-8 (synthetic side), one row per link, judged by ``reporting.claims``: claim 4 by
    ``claims_length``, claims 5-8 by ``claims_injection``."""
    return pd.concat([claims_length(main_df, oracle), claims_injection(inj, inj_frontier, K)], ignore_index=True)


def claims_length(main_df: pd.DataFrame, oracle: pd.DataFrame) -> pd.DataFrame:
    """Claim 4 from the length grid (t-intervals over seeds) beside the concept-counting oracle per length
    (``oracle_by_length``)."""
    where, world, rows = "synthetic, notebook 03", "synthetic", []
    r1 = final_values(main_df, "recall@1").pivot_table(index="seed", columns=["pooling", "length"], values="value")
    lengths = sorted(main_df["length"].unique())
    lo_M, hi_M = lengths[0], lengths[-1]
    n = r1.shape[0]
    orc = oracle.groupby("length")["recall@1"]
    o_lo, o_hi = float(orc.mean()[lo_M]), float(orc.mean()[hi_M])
    m, lo, hi = mean_ci(oracle[oracle["length"] == hi_M]["recall@1"].to_numpy(), bounds=(0, 1))
    rows.append(claims.row("4", "oracle ceiling", world, f"concept-counting oracle Recall@1 at M={hi_M} (M={lo_M}: "
                           f"{o_lo:.3f}): what concept identities allow", "n/a (ours)", m, lo, hi, "mechanism",
                           where, n_seeds=len(orc.get_group(hi_M))))
    for p in POOLINGS_MAIN:  # claim 4: recall falls with M for every pooling
        m, lo, hi = mean_ci((r1[p][hi_M] - r1[p][lo_M]).to_numpy(), bounds=(-1, 1))
        rows.append(claims.row("4", f"falls with M, {label(p)}", world, f"Recall@1(M={hi_M}) - Recall@1(M={lo_M})",
                               "< 0", m, lo, hi, claims.direction(lo, hi, above=False, n_seeds=n), where, n_seeds=n))
    rel = {p: 1 - r1[p][hi_M] / r1[p][lo_M].where(r1[p][lo_M] > 0) for p in POOLINGS_MAIN}  # relative drops
    m, lo, hi = mean_ci((rel["maxsim"] - pd.concat([rel["topk:4"], rel["softmax:1"]], axis=1).max(axis=1)).to_numpy(),
                        bounds=(-1, 1))
    rows.append(claims.row("4", "MaxSim falls fastest", world, f"relative Recall@1 drop M={lo_M} -> {hi_M}, MaxSim - "
                           f"largest other (oracle falls {1 - o_hi / o_lo:.0%})", "> 0", m, lo, hi,
                           claims.direction(lo, hi, n_seeds=n), where, n_seeds=n))
    m, lo, hi = mean_ci((r1["topk:4"][hi_M] - r1["maxsim"][hi_M]).to_numpy(), bounds=(-1, 1))
    rows.append(claims.row("4", "Top-4 > MaxSim at large M", world, f"Recall@1 Top-4 - MaxSim at M={hi_M}", "> 0",
                           m, lo, hi, claims.direction(lo, hi, n_seeds=n), where, n_seeds=n))
    return pd.DataFrame(rows)


def claims_injection(inj: pd.DataFrame, inj_frontier: pd.DataFrame, K: int = 100) -> pd.DataFrame:
    """Claims 5-8 from the per-query injection tables (``injection_sweep``) by ``reporting.evidence``
    (hierarchical bootstrap, seeds then queries): the main stack (MaxSim, Top-4, softmax tau=1) and the frontier
    stack (Top-1 = MaxSim, larger k, the softmax with working clean recall, ``SOFTMAX_WORKING``, with its Gaussian
    control at the same K)."""
    where, world, rows = "synthetic, notebook 03", "synthetic", []
    main = evidence.Injection(inj, world, where)
    front = evidence.Injection(inj_frontier, world, f"{where} (frontier stack)")
    paper5 = "+0.38 (real, tau unstated)"
    rows += evidence.collapse(main, ["maxsim", "topk:4"], K, {"maxsim": "0.278 (real)", "topk:4": "0.293 (real)"})
    rows += evidence.keeps_more(main, "softmax:1", ["maxsim", "topk:4"], K, paper5)
    rows += evidence.keeps_more(front, SOFTMAX_WORKING, ["topk:1"], K, paper5)  # Top-1 is MaxSim
    topks = sorted((p for p in inj_frontier["pooling"].unique() if p.startswith("topk")),
                   key=lambda s: int(s.split(":")[1]))
    rows += evidence.larger_k(front, topks, K, "0.28-0.30 for k=1,4,16 (real)")
    rows += evidence.length_neutral(main, list(POOLINGS_MAIN), K, "~0.97 (real)")
    rows += evidence.length_neutral(front, [SOFTMAX_WORKING], K, "~0.97 (real)")
    rows += evidence.argmax_moves(main, ["maxsim", "topk:4"], K, "~0.70 (sec. 4.2), ~0.83 (Fig 2) (real)")
    return pd.DataFrame(rows)


#: Trainer settings of the sensitivity stack (every setting x pooling, one seed).
SENSITIVITY_TRAIN = TrainConfig(epochs=15, gini_pairs=64)


def sensitivity(
    variations: Sequence[tuple[str, Any]],
    base: SyntheticConfig | None = None,
    tcfg: TrainConfig = SENSITIVITY_TRAIN,
    seed: int = 0,
    poolings: Sequence[str] = POOLINGS_MAIN,
    device: str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """How the chapter's conclusions move when one calibrated knob moves (one stack for all settings).

    ``variations`` lists (knob, value) changes of ``base`` (default: the calibrated world), e.g.
    ``[("n_support", 10), ("spike_size", 8)]``; the unchanged base is added first. Returns one row per
    setting: knob, value, final Recall@1 and pair-Gini per pooling, and whether the Gini ordering
    MaxSim > Top-4 > Softmax and the Recall@1 pattern of claim 3 hold.
    """
    base = base or calibrated_world()
    settings = [("base", None)] + list(variations)
    runs = [(i, p) for i in range(len(settings)) for p in poolings]
    worlds = [generate(base.with_(seed=seed) if k == "base" else base.with_(seed=seed, **{k: v}))
              for k, v in settings]
    df, _ = train_stack([worlds[i] for i, _ in runs], [p for _, p in runs], [seed] * len(runs), tcfg, device,
                        progress)
    df = df[df["epoch"] == df["epoch"].max()].copy()
    df["setting"] = df.groupby(["pooling", "metric"]).cumcount()
    rows = []
    for i, (k, v) in enumerate(settings):
        sub = df[df["setting"] == i].pivot_table(index="pooling", columns="metric", values="value")
        row: dict[str, Any] = {"knob": k, "value": v}
        for p in poolings:
            row[f"R@1 {label(p)}"] = sub.loc[p, "recall@1"]
            row[f"Gini {label(p)}"] = sub.loc[p, "gini_pair_mean"]
        g, r = sub["gini_pair_mean"], sub["recall@1"]
        row["Gini ordering"] = bool(g["maxsim"] > g["topk:4"] > g["softmax:1"])
        row["claim 3 pattern"] = bool(abs(r["maxsim"] - r["topk:4"]) < claims.SIMILAR_MARGIN
                                    and r["softmax:1"] < r["maxsim"])
        rows.append(row)
    return pd.DataFrame(rows)


def cross_length_reading(cross: pd.DataFrame) -> str:
    """One sentence from the cross-length table: the largest Recall@1 gap between training lengths at one
    evaluation length, against the largest gap between evaluation lengths for one trained model."""
    t = cross.groupby(["pooling", "train_length", "eval_length"])["recall@1"].mean()
    by_train = t.groupby(["pooling", "eval_length"]).agg(lambda s: s.max() - s.min())
    by_eval = t.groupby(["pooling", "train_length"]).agg(lambda s: s.max() - s.min())
    (p1, L1), (p2, L2) = by_train.idxmax(), by_eval.idxmax()
    return (f"largest gap between training lengths at one evaluation length: {by_train.max():.3f} ({label(p1)}, "
            f"evaluated at M={L1}); largest gap between evaluation lengths for one model: {by_eval.max():.3f} "
            f"({label(p2)}, trained at M={L2})")


def frontier_reading(front: pd.DataFrame, K: int) -> str:
    """One sentence from the frontier table: which pooling retains most Recall@1 under K spikes, at what clean
    Recall@1, next to MaxSim's."""
    col = f"retained@K={K}"
    best, mx = front.loc[front[col].idxmax()], front.set_index("pooling").loc["maxsim"]
    return (f"most retained under K={K} spikes: {best['label']} {best[col]:.3f} (clean Recall@1 "
            f"{best['recall@1']:.3f}); MaxSim {mx[col]:.3f} (clean {mx['recall@1']:.3f})")
