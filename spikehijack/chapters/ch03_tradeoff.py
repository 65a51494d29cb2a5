"""Chapter 03 (notebook 03): the sparsity-robustness tradeoff in the synthetic world.

Models trained at one length evaluated at every length, token-targeted spike injection against the Gaussian
control, the frontier of gradient concentration against robustness, claims 4-8 (synthetic side) and how the
conclusions move with the world's knobs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core import inject
from ..core.metrics import recall_at_k
from ..profiles import POOLINGS_MAIN, calibrated_world
from ..reporting.stats import claim_row, mean_ci
from ..runner.groups import load_group_models, world_of
from ..runner.train import TrainConfig, evaluate_stack, train_stack
from ..worlds.synthetic import SyntheticConfig, generate
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
    trained encoder. Rows: pooling, seed, kind, K, recall@1, hijack_rate, argmax_shift.
    """
    enc, pools, seeds = load_group_models(config, cache_dir, device)
    worlds = {s: world_of(config, s) for s in set(seeds)}
    kmax = max(ks)
    rows = []
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
                row = {"pooling": pools[r], "seed": seeds[r], "kind": kind, "K": K,
                       "recall@1": float(recall_at_k(scores, gold, 1))}
                if K > 0:
                    row["hijack_rate"] = float(inject.hijack_rate(Q, D, pools[r], inj, gold, scores=scores))
                    row["argmax_shift"] = float(inject.argmax_shift(Q, D, pools[r], inj, gold,
                                                                    scores=scores).to_injected.mean())
                else:
                    row["hijack_rate"] = row["argmax_shift"] = 0.0
                rows.append(row)
    out = pd.DataFrame(rows)
    base = out[out["K"] == 0].set_index(["pooling", "seed", "kind"])["recall@1"]
    b = [base[(row["pooling"], row["seed"], row["kind"])] for _, row in out.iterrows()]
    out["retained"] = [r / x if x > 0 else float("nan") for r, x in zip(out["recall@1"], b, strict=True)]
    return out


def frontier_table(train_df: pd.DataFrame, inj: pd.DataFrame, K: int = 100) -> pd.DataFrame:
    """Per pooling: final pair-Gini, clean Recall@1 and retained recall under spike injection at K (seed means)."""
    g = final_values(train_df, "gini_pair_mean").groupby("pooling")["value"].mean().rename("gini")
    r = final_values(train_df, "recall@1").groupby("pooling")["value"].mean().rename("recall@1")
    sub = inj[(inj["kind"] == "spike") & (inj["K"] == K)]
    ret = sub.groupby("pooling")["retained"].mean().rename(f"retained@K={K}")
    hij = sub.groupby("pooling")["hijack_rate"].mean().rename("hijack_rate")
    t = pd.concat([g, r, ret, hij], axis=1).reset_index()
    t.insert(1, "label", t["pooling"].map(label))
    t["family"] = t["pooling"].str.split(":").str[0]
    return t.sort_values(["family", "gini"]).reset_index(drop=True)


def claims_03(main_df: pd.DataFrame, inj: pd.DataFrame, inj_frontier: pd.DataFrame, K: int = 100) -> pd.DataFrame:
    """Claims 4-7 (synthetic side) from the length grid and the injection sweeps."""
    where = "synthetic, notebook 03"
    rows = []
    r1 = final_values(main_df, "recall@1").pivot_table(index="seed", columns=["pooling", "length"], values="value")
    lengths = sorted(main_df["length"].unique())
    lo_M, hi_M = lengths[0], lengths[-1]
    drops = {p: r1[p][hi_M] - r1[p][lo_M] for p in POOLINGS_MAIN}
    all_fall = all(mean_ci(d.to_numpy())[0] < 0 for d in drops.values())
    fastest = min(drops, key=lambda p: drops[p].mean())
    for p in POOLINGS_MAIN:
        rows.append(claim_row("4", f"Recall@1(M={hi_M}) - Recall@1(M={lo_M}), {label(p)}",
                              "negative; MaxSim most negative", *mean_ci(drops[p].to_numpy()),
                              "reproduced" if all_fall and fastest == "maxsim" else
                              ("partly reproduced" if all_fall else "not reproduced"), where))
    d = (r1["topk:4"][hi_M] - r1["maxsim"][hi_M]).to_numpy()
    m = mean_ci(d)
    rows.append(claim_row("4", f"Recall@1 Top-4 - MaxSim at M={hi_M}", "> 0", *m,
                          "reproduced" if m[1] > 0 else ("partly reproduced" if m[0] > 0 else "not reproduced"), where))
    sub = inj[(inj["K"] == K)]
    ret = sub.pivot_table(index="seed", columns=["kind", "pooling"], values="retained")
    paper5 = {"maxsim": "27.8 % (real)", "topk:4": "29.3 % (real)", "softmax:1": "67.6 % (real)"}
    soft_gain = mean_ci((ret["spike"]["softmax:1"] - ret["spike"][["maxsim", "topk:4"]].max(axis=1)).to_numpy())
    collapse = ret["spike"][["maxsim", "topk:4"]].mean().max() < 0.5
    v5 = "reproduced" if collapse and soft_gain[1] > 0.1 else ("partly reproduced" if collapse or soft_gain[0] > 0
                                                                else "not reproduced")
    for p in POOLINGS_MAIN:
        rows.append(claim_row("5", f"retained Recall@1 under spike injection K={K}, {label(p)}", paper5[p],
                              *mean_ci(ret["spike"][p].to_numpy()), v5, where))
    rows.append(claim_row("5", f"retained: Softmax τ=1 - best of MaxSim/Top-4 (K={K})", "far more (+~0.38 real)",
                          *soft_gain, v5, where))
    fk = inj_frontier[(inj_frontier["K"] == K) & (inj_frontier["kind"] == "spike")
                      & inj_frontier["pooling"].str.startswith("topk")]
    allk = pd.concat([fk, sub[(sub["kind"] == "spike") & (sub["pooling"] == "topk:4")]])
    byk = allk.groupby("pooling")["retained"].mean()
    ks = sorted(byk.index, key=lambda s: int(s.split(":")[1]))
    spread = float(byk[ks[-1]] - byk[ks[0]])
    for s in ks:
        vals = allk[allk["pooling"] == s]["retained"].to_numpy()
        rows.append(claim_row("6", f"retained under spike injection K={K}, {label(s)}", "~28-30 % for k=1,4,16 (real)",
                              *mean_ci(vals), "reproduced" if spread < 0.15 else "not reproduced", where))
    # One verdict for the claim, judged on MaxSim and Top-4: softmax tau=1 has near-zero clean recall here, so its
    # retained ratio is unstable and says nothing either way.
    worst7 = min(ret["gaussian"][p].mean() for p in ("maxsim", "topk:4"))
    v7 = "reproduced" if worst7 >= 0.9 else ("partly reproduced" if worst7 >= 0.75 else "not reproduced")
    for p in POOLINGS_MAIN:
        rows.append(claim_row("7", f"retained under Gaussian injection K={K}, {label(p)}", "~97 % (real)",
                              *mean_ci(ret["gaussian"][p].to_numpy()), v7, where))
    sh = sub[(sub["kind"] == "spike")].pivot_table(index="seed", columns="pooling", values="argmax_shift")
    shg = sub[(sub["kind"] == "gaussian")].pivot_table(index="seed", columns="pooling", values="argmax_shift")
    m8 = mean_ci(sh["maxsim"].to_numpy())
    rows.append(claim_row("8", f"argmax selections moved to injected spikes, MaxSim, K={K}", "~83 % (real)", *m8,
                          "reproduced" if m8[0] > 0.5 else "not reproduced", where))
    rows.append(claim_row("8", f"argmax selections moved to Gaussian patches, MaxSim, K={K}", "barely (real)",
                          *mean_ci(shg["maxsim"].to_numpy()), "reproduced" if shg["maxsim"].mean() < 0.15 else
                          "not reproduced", where))
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
        row["claim 3 pattern"] = bool(abs(r["maxsim"] - r["topk:4"]) < 0.05 and r["softmax:1"] < r["maxsim"])
        rows.append(row)
    return pd.DataFrame(rows)
