"""Chapter 02 (notebook 02): gradient spikes in the synthetic world.

Training curves with intervals over seeds, where a document's gradient lands by patch kind, the calibration
of the world's open knobs, and the synthetic rows of claims 1-3 (PAPER.md section 5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from ..core.gradients import score_grad_documents
from ..core.pooling import parse_pooling
from ..profiles import POOLINGS_MAIN
from ..reporting.stats import claim_row, mean_ci, summarize
from ..runner.train import TrainConfig, train_stack
from ..worlds.model import StackedEncoder
from ..worlds.synthetic import KIND_NAMES, SyntheticConfig, SyntheticData, generate


def label(spec: str) -> str:
    """Human-readable pooling label ("MaxSim", "Top-4", "Softmax τ=1")."""
    return parse_pooling(spec).label


def curves(df: pd.DataFrame, metric: str, by: Sequence[str] = ("pooling", "epoch")) -> pd.DataFrame:
    """Mean and 95 % t-interval over seeds of ``metric`` per group (default: pooling x epoch)."""
    sub = df[(df["metric"] == metric) & df["value"].notna()]
    out = summarize(sub, list(by), "value")
    if "pooling" in out.columns:
        out.insert(0, "label", out["pooling"].map(label))
    return out


def final_values(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One value per (length, pooling, seed): ``metric`` at each run's last epoch."""
    sub = df[df["metric"] == metric]
    last = sub["epoch"] == sub.groupby(["length", "pooling", "seed"])["epoch"].transform("max")
    return sub[last][["length", "pooling", "seed", "value"]].reset_index(drop=True)


@torch.no_grad()
def gradient_by_kind(
    enc: StackedEncoder, poolings: Sequence[str], worlds: Mapping[int, SyntheticData], n_queries: int = 64
) -> tuple[pd.DataFrame, Tensor]:
    """Where a query's gradient lands inside its positive and its hard negative, for every run of a stack.

    g_j = || d score(q, x) / d x_j || for x = the positive (kinds support/filler) and the hard negative
    (kinds shared/spike/filler) of ``n_queries`` evaluation queries (its InfoNCE term scales all g_j of a
    document by one factor, so shares do not depend on the batch); run r uses ``worlds[seed of r]``.
    Returns (each kind's share of the document's gradient mass, mean over queries: run, pooling, seed, doc,
    kind, share, patches; g of run 0 [2, n_queries, M] for plotting one document).
    """
    rows = []
    g0 = None
    for r, spec in enumerate(poolings):
        ev = worlds[enc.seeds[r]].eval
        n = min(n_queries, len(ev))
        sub = enc.select([r])
        dev = sub.weights[0].device
        Q = sub(ev.queries[None, :n].to(dev))[0]
        gs = []
        for doc, X, kind in (("positive", ev.positives, ev.pos_kind), ("hard negative", ev.negatives, ev.neg_kind)):
            D = sub(X[None, :n].to(dev))[0]
            g = score_grad_documents(Q, D, spec).norm(dim=-1).cpu()  # [n, M]
            share = g / g.sum(-1, keepdim=True).clamp_min(1e-30)
            for k in sorted(set(kind[:n].flatten().tolist())):
                m = kind[:n] == k
                rows.append({"run": r, "pooling": spec, "seed": enc.seeds[r], "doc": doc, "kind": KIND_NAMES[k],
                             "share": float((share * m).sum(-1).mean()),
                             "patches": float(m.sum(-1).float().mean())})
            gs.append(g)
        if g0 is None:
            g0 = torch.stack(gs)
    return pd.DataFrame(rows), g0


def kind_share_table(tab: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of each patch kind's share of a document's gradient, one column per pooling."""
    t = tab.groupby(["doc", "kind", "pooling"], sort=False)["share"].mean().unstack("pooling")
    return t[[p for p in POOLINGS_MAIN if p in t.columns] + [p for p in t.columns if p not in POOLINGS_MAIN]]


def _ordered(values: Mapping[str, float], order: Sequence[str]) -> bool:
    return all(values[a] > values[b] for a, b in zip(order[:-1], order[1:], strict=True))


#: Claim 1's Gini rows: "reproduced" needs the ordering in every seed and the level within this of the paper's
#: (ordering alone, with the level further off, is "partly reproduced").
GINI_LEVEL_TOLERANCE = 0.1


def claims_02(df: pd.DataFrame, reading: str = "pair") -> pd.DataFrame:
    """Claims 1-3 of PAPER.md section 5 (synthetic side) from a training table at one length."""
    order = list(POOLINGS_MAIN)
    metric = f"gini_{reading}_mean"
    fin = final_values(df, metric)
    per_seed = fin.pivot_table(index="seed", columns="pooling", values="value")
    paper = {"maxsim": 0.78, "topk:4": 0.45, "softmax:1": 0.18}
    ok = all(_ordered(row, order) for _, row in per_seed.iterrows())
    rows = []
    for p in order:  # the claim is the ordering; the paper's level is met within GINI_LEVEL_TOLERANCE
        m, lo, hi = mean_ci(per_seed[p].to_numpy())
        verdict = "not reproduced" if not ok else (
            "reproduced" if abs(m - paper[p]) <= GINI_LEVEL_TOLERANCE else "partly reproduced")
        rows.append(claim_row("1", f"final gradient Gini ({reading} reading), {label(p)}", f"~{paper[p]}", m, lo, hi,
                              verdict, "synthetic, notebook 02"))
    # Claim 2: share of evaluations (epoch >= 5) where the ordering holds in every seed.
    g = df[(df["metric"] == metric) & (df["epoch"] > 0)].pivot_table(index=["epoch", "seed"], columns="pooling",
                                                                       values="value")
    held = g.apply(lambda row: _ordered(row, order), axis=1).groupby(level="epoch").all()
    first = int(held.index[0])
    frac = float(held.mean())
    verdict2 = "reproduced" if frac == 1.0 else ("partly reproduced" if held.iloc[0] and frac >= 0.8 else
                                                 "not reproduced")
    rows.append(claim_row("2", f"share of evaluations (epoch {first}..{int(held.index[-1])}) with Gini ordering "
                          "in every seed", "stable from early epochs", frac, frac, frac, verdict2,
                          "synthetic, notebook 02"))
    r1 = final_values(df, "recall@1").pivot_table(index="seed", columns="pooling", values="value")
    d_mt = mean_ci((r1["maxsim"] - r1["topk:4"]).to_numpy())
    d_sm = mean_ci((r1["softmax:1"] - r1["maxsim"]).to_numpy())
    for p in order:
        m, lo, hi = mean_ci(r1[p].to_numpy())
        rows.append(claim_row("3", f"final Recall@1, {label(p)}",
                              "0.33-0.38" if p != "softmax:1" else "substantially lower", m, lo, hi,
                              "reproduced" if abs(d_mt[0]) < 0.05 and d_sm[2] < 0 else "not reproduced",
                              "synthetic, notebook 02"))
    rows.append(claim_row("3", "Recall@1 MaxSim - Top-4", "similar (~0)", *d_mt,
                          "reproduced" if abs(d_mt[0]) < 0.05 else "not reproduced", "synthetic, notebook 02"))
    rows.append(claim_row("3", "Recall@1 Softmax τ=1 - MaxSim", "clearly negative", *d_sm,
                          "reproduced" if d_sm[2] < 0 else "not reproduced", "synthetic, notebook 02"))
    return pd.DataFrame(rows)


#: Trainer settings of a calibration stack (one run per candidate world).
CALIBRATION_TRAIN = TrainConfig(eval_every=25, gini_pairs=64)


def calibrate(
    candidates: Sequence[Mapping[str, Any]],
    base: SyntheticConfig | None = None,
    tcfg: TrainConfig = CALIBRATION_TRAIN,
    seed: int = 0,
    pooling: str = "maxsim",
    device: str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Train ``pooling`` once per candidate setting of the open knobs (one stack) and report Recall@1.

    Each candidate is a dict of SyntheticConfig changes (e.g. ``{"n_support": 6}``) applied to ``base``
    (default: the paper's stated values at M = 64). Returns one row per candidate and evaluation epoch:
    the knobs, epoch, recall@1, mrr, gini_pair_mean.
    """
    base = base or SyntheticConfig()
    worlds = [generate(base.with_(seed=seed, **c)) for c in candidates]
    df, _ = train_stack(worlds, [pooling] * len(worlds), [seed] * len(worlds), tcfg, device, progress)
    # runs share seed and pooling: recover the candidate from the row order (R rows per evaluation block)
    keep = ["recall@1", "mrr", "gini_pair_mean"]
    df = df[df["metric"].isin(keep)].copy()
    df["candidate"] = df.groupby(["epoch", "metric"]).cumcount()
    wide = df.pivot_table(index=["candidate", "epoch"], columns="metric", values="value").reset_index()
    knobs = pd.DataFrame([{k: getattr(base.with_(**c), k) for k in ("n_support", "n_shared", "spike_size")}
                          for c in candidates])
    knobs["candidate"] = range(len(candidates))
    return knobs.merge(wide, on="candidate")
