"""Chapter 05 (notebook 05), the experiments: retraining with each pooling, and every pooling on the
sparsity-robustness frontier (the tables and findings: ``ch05_findings``).

Two questions, in the synthetic world and on the real benchmark:

1. *Retraining* (the authors' future work). A model trained with pooling p and scored with p ("retrained")
   against the MaxSim-trained model scored with p ("swap", the paper's inference-time protocol): clean quality,
   gradient Gini, length robustness, spike-injection robustness and the Gaussian control.
2. *The frontier*. Every pooling, the new ones of ``spikehijack.core.robust`` included, on the MaxSim-trained model:
   Gini against clean quality and against quality retained under spike injection. Does any pooling keep
   MaxSim's discrimination while resisting spikes?

All evaluation goes through the core functions (``score_matrix``, ``inject.score_with_injection``,
``inject.hijack_rate``, ``metrics.patch_gradient_norms``, ``gini``); training reuses ``runner.groups.run_groups`` (the
synthetic grid, cached and shared with notebook 02) and ``runner.heads.train_head``.

Tidy tables: ``quality`` rows (world, length, train, pooling, mode, seed, condition, K, query, recall@1, rr)
and ``gini`` rows (world, length, train, pooling, mode, seed, pair, gini).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .. import io, profiles
from ..core import inject
from ..core.device import default_dtype
from ..core.metrics import gini, gold_rank, patch_gradient_norms
from ..core.pooling import parse_pooling
from ..core.scoring import score_matrix
from ..runner import heads
from ..runner.groups import grid_configs, group, load_group_models, run_groups, world_of
from ..runner.heads import train_head
from ..runner.sweeps import run_grid, run_key
from ..worlds import hpo as hpo_mod
from ..worlds import tasks
from ..worlds.encoders import MiniLMPhrases
from . import ch04_real as ch04

#: Key columns of the tidy tables: one model (world, length, train, seed) scored with one pooling.
KEYS = ["world", "length", "train", "pooling", "mode", "seed"]

# ----------------------------------------------------------------------------------------------------------
# Generic evaluation of one embedded retrieval problem
# ----------------------------------------------------------------------------------------------------------
def _per_query(scores: Tensor, gold: Tensor) -> tuple[np.ndarray, np.ndarray]:
    rank = gold_rank(scores, gold).cpu().numpy()
    return (rank == 1).astype(float), 1.0 / rank


def evaluate_quality(
    Q: Tensor,
    D: Tensor,
    gold: Tensor,
    poolings: Sequence[str],
    injected: Mapping[str, Tensor] | None = None,
    q_mask: Tensor | None = None,
    d_mask: Tensor | None = None,
    hijack: bool = True,
) -> pd.DataFrame:
    """Per-query Recall@1 and reciprocal rank of every pooling, clean and under each injection.

    Q [Nq, T, d], D [Nd, M, d] (embedded), gold LongTensor [Nq]; ``injected`` maps a condition name to
    patches [Nq, K, d] appended to every non-gold document (``inject.score_with_injection``). With ``hijack``
    the injected rows also carry the hijack rate (share of query tokens whose arg-max patch is injected, in the
    top non-gold document). Rows: pooling, condition, K, query, recall@1, rr (, hijack).
    """
    rows = []
    for spec in poolings:
        p = parse_pooling(spec)
        with torch.no_grad():
            clean = score_matrix(Q, D, p, q_mask, d_mask)
        r1, rr = _per_query(clean, gold)
        rows.append(pd.DataFrame({"pooling": p.spec, "condition": "clean", "K": 0, "query": np.arange(len(r1)),
                                  "recall@1": r1, "rr": rr}))
        for cond, patches in (injected or {}).items():
            with torch.no_grad():
                S = inject.score_with_injection(Q, D, p, patches, gold, q_mask, d_mask, clean_scores=clean)
                r1, rr = _per_query(S, gold)
                df = pd.DataFrame({"pooling": p.spec, "condition": cond, "K": patches.shape[1],
                                   "query": np.arange(len(r1)), "recall@1": r1, "rr": rr})
                if hijack:
                    h = inject.hijack_rate(Q, D, p, patches, gold, q_mask, d_mask, scores=S, reduction="none")
                    df["hijack"] = h.cpu().numpy()
            rows.append(df)
    return pd.concat(rows, ignore_index=True)


def evaluate_gini(
    Q: Tensor,
    D: Tensor,
    poolings: Sequence[str],
    batch_size: int = 64,
    q_mask: Tensor | None = None,
    d_mask: Tensor | None = None,
    loss: str = "pair",
) -> pd.DataFrame:
    """Patch-gradient Gini of aligned positive pairs (Q [N, T, d], D [N, M, d]) in in-batch groups.

    Rows: pooling, pair, gini (``metrics.patch_gradient_norms`` with ``loss``; masked patches excluded).
    """
    rows = []
    N = Q.shape[0]
    for spec in poolings:
        p = parse_pooling(spec)
        for s in range(0, N, batch_size):
            sl = slice(s, min(N, s + batch_size))
            qm = None if q_mask is None else q_mask[sl]
            dm = None if d_mask is None else d_mask[sl]
            g = patch_gradient_norms(Q[sl], D[sl], p, qm, dm, loss=loss)  # type: ignore[arg-type]
            G = gini(g, mask=dm).cpu().numpy()
            rows.append(pd.DataFrame({"pooling": p.spec, "pair": np.arange(s, s + len(G)), "gini": G}))
    return pd.concat(rows, ignore_index=True)


# ----------------------------------------------------------------------------------------------------------
# Synthetic world
# ----------------------------------------------------------------------------------------------------------
def _tag(df: pd.DataFrame, world: str, length: int, train: str, seed: int) -> pd.DataFrame:
    """Add the key columns; mode is "retrained" when the model was trained with the pooling it is scored with
    (for MaxSim both readings coincide: "retrained"), else "swap"."""
    train = parse_pooling(train).spec
    mode = ["retrained" if p == train else "swap" for p in df["pooling"]]
    return df.assign(world=world, length=length, train=train, seed=seed, mode=mode)


def synthetic_run(
    enc: Any,
    world: Any,
    train: str,
    poolings: Sequence[str],
    n_queries: int | None,
    K: int,
    spike_size: int,
    gini_pairs: int,
    with_injection: bool = True,
    with_gini: bool = True,
    batch_size: int = 64,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate one trained synthetic encoder (a 1-run ``StackedEncoder``) on its world with several poolings.

    Same protocol as ``ch03_tradeoff.injection_sweep`` (notebook 03), so MaxSim's numbers agree with it: the first
    ``n_queries`` evaluation queries against the whole evaluation corpus; K spikes per query built in raw space
    from the query's concepts (``inject.spike_patches``) and K unit Gaussian patches (same generator and draw
    order), both passed through the encoder. Returns (quality rows, gini rows of ``gini_pairs`` training pairs).
    """
    ev, cfg = world.eval, world.config
    n = len(ev) if n_queries is None else min(n_queries, len(ev))
    encode = lambda x: enc(x.unsqueeze(0)).squeeze(0)  # noqa: E731
    docs, gold_all = ev.corpus()
    with torch.no_grad():
        Q, D = encode(ev.queries[:n]), encode(docs)
        injected = {}
        if with_injection and K > 0:
            g = torch.Generator().manual_seed(int(cfg.seed) * 13 + 5)  # train.injection_sweep's draw
            spikes = inject.spike_patches(world.concepts[ev.query_concepts[:n]], K, spike_size, generator=g)
            gauss = inject.gaussian_patches(n, K, cfg.dim, generator=g)
            injected = {"spike": encode(spikes), "gaussian": encode(gauss)}
    quality = evaluate_quality(Q, D, gold_all[:n], poolings, injected)
    quality = _tag(quality, "synthetic", cfg.length, train, cfg.seed)
    if not with_gini:
        return quality, pd.DataFrame(columns=[*KEYS, "pair", "gini"])
    with torch.no_grad():
        m = min(gini_pairs, len(world.train))
        Qg, Dg = encode(world.train.queries[:m]), encode(world.train.positives[:m])
    g = evaluate_gini(Qg, Dg, poolings, batch_size)
    return quality, _tag(g, "synthetic", cfg.length, train, cfg.seed)


def _split(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A cached evaluation table (``table`` column "quality" / "gini") -> (quality rows, gini rows)."""
    q = table[table["table"] == "quality"].dropna(axis=1, how="all")
    g = table[table["table"] == "gini"].dropna(axis=1, how="all")
    drop = ["table", "run_key", "profile", "group", "evals", "run", "n_queries", "K", "spike_size", "gini_pairs",
            "with_injection", "steps", "n_train", "n_distractors", "factors", "head_key", "length_poolings",
            "hijack_definition"]
    q = q.drop(columns=[c for c in drop if c in q.columns and c != "K"])
    g = g.drop(columns=[c for c in drop if c in g.columns])
    if "K" in q.columns:
        q["K"] = q["K"].astype(int)
    for df in (q, g):
        for c in ("length", "seed"):
            if c in df.columns:
                df[c] = df[c].astype(int)
    return q.reset_index(drop=True), g.reset_index(drop=True)


def _join(quality: pd.DataFrame, gini_rows: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([quality.assign(table="quality"), gini_rows.assign(table="gini")], ignore_index=True)


#: The definition of the hijack column, part of every evaluation's cache key: cached evaluations under another
#: definition (the selection mass, before one definition for every pooling) are recomputed, never reused.
HIJACK = "argmax"


def synthetic_eval_run(config: Mapping[str, Any], cache_dir: str | Path) -> pd.DataFrame:
    """``sweeps.run_grid`` run: evaluate run ``config["run"]`` of the cached training group ``config["group"]``."""
    sweep = profiles.get(config["profile"]).synthetic.sweep
    (group,) = grid_configs(sweep, lengths=[config["length"]])
    enc, _, _ = load_group_models(group, cache_dir)
    world = world_of(group, int(config["seed"]))
    q, g = synthetic_run(enc.select([int(config["run"])]), world, config["train"], config["evals"],
                         config["n_queries"], config["K"], config["spike_size"], config["gini_pairs"],
                         with_injection=bool(config["with_injection"]), with_gini=bool(config["with_injection"]))
    return _join(q, g)


def synthetic_experiment(
    profile: str = "quick", cache_dir: str | Path | None = None, device: str = "cpu", progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sections 1 and 2 in the synthetic world: (quality, gini) tidy tables with a ``mode`` column.

    Trains (or loads from the shared cache) notebook 03's length-sweep grid: MaxSim, Top-4 and softmax tau=1
    encoders at each length and seed (``profiles.Synthetic.sweep``; in the paper profile notebook 02's). At the
    default length M = 64 every frontier pooling is evaluated on the MaxSim encoder (swap) and each trained pooling
    on its own encoder (retrained), clean, under spike injection and under the Gaussian control, with Gini. At
    the other lengths: clean quality only.
    Each model's evaluation is one cached ``sweeps.run_grid`` run (``<cache>/beyond/``).
    """
    prof = profiles.get(profile).beyond
    cache = Path(cache_dir) if cache_dir is not None else io.cache_dir("synthetic", profile)
    groups = grid_configs(profiles.get(profile).synthetic.sweep, lengths=prof.lengths)
    run_groups(groups, cache, device=device, progress=progress)
    runs = []
    for config in groups:
        M = config["length"]
        for r, (train, seed) in enumerate(group(config).runs):  # the stack's run order
            train = parse_pooling(train).spec
            if train == "maxsim":
                evals = prof.frontier if M == prof.length else prof.length_poolings
            else:
                evals = [train]
            runs.append({"profile": profile, "group": run_key(config), "length": M, "run": r, "train": train,
                         "seed": int(seed), "evals": [parse_pooling(e).spec for e in evals],
                         "n_queries": prof.n_queries, "K": prof.K, "spike_size": prof.spike_size,
                         "gini_pairs": prof.gini_pairs, "with_injection": M == prof.length,
                         "hijack_definition": HIJACK})
    res = run_grid(runs, partial(synthetic_eval_run, cache_dir=cache), cache / "beyond", progress=progress,
                   desc="synthetic evaluations").raise_for_failures()
    return _split(res.table)


# ----------------------------------------------------------------------------------------------------------
# Real benchmark (HPO-Dx with all-MiniLM-L6-v2 phrase vectors; spikehijack.worlds.tasks)
# ----------------------------------------------------------------------------------------------------------
_WORLDS: dict[tuple[int, int | None], Any] = {}


def real_world(n_queries: int, n_distractors: int | None, seed: int = 0) -> tuple[Any, Any, Any]:
    """(hpo, phrase encoder, HPO-Dx task) for the given corpus size, built once per process (embeddings are
    cached on disk by ``encoders.EmbeddingCache``)."""
    key = (n_queries, n_distractors, seed, torch.get_default_dtype())
    if key not in _WORLDS:
        H = hpo_mod.load_hpo()
        enc = MiniLMPhrases(release=H.release)
        _WORLDS[key] = (H, enc, tasks.build_hpo_dx(H, enc, n_queries=n_queries, n_distractors=n_distractors, seed=seed))
    return _WORLDS[key]


def head_run(config: Mapping[str, Any], weights_dir: str | Path) -> pd.DataFrame:
    """``sweeps.run_grid`` run: train one projection head (``runner.heads.train_head``) with ``config["pooling"]`` on
    diseases outside the corpus; save its weight to ``weights_dir/<run_key>.npz``; return the loss history."""
    with default_dtype(config["dtype"]):
        H, enc, task = real_world(config["n_queries"], config["n_distractors"])
        diseases = tasks.train_diseases(H, task, config["n_train"], seed=config["seed"])
        head, hist = train_head(H, enc, diseases, pooling=config["pooling"], steps=config["steps"],
                                seed=config["seed"])
    heads.save_head(head, Path(weights_dir) / f"{run_key(config)}.npz")
    return hist


def head_configs(profile: str) -> list[dict[str, Any]]:
    """One head run per trained pooling and seed of the profile (``profiles.BeyondReal``)."""
    prof = profiles.get(profile)
    real = prof.beyond_real
    return [{"pooling": parse_pooling(p).spec, "seed": s, "steps": real.steps, "n_train": real.n_train,
             "n_queries": real.n_queries, "n_distractors": real.n_distractors, "dtype": prof.precision}
            for p in real.trained for s in real.seeds]


def load_head(key: str, weights_dir: str | Path) -> torch.nn.Module:
    """The trained ``runner.heads.ProjectionHead`` of the cached head run with run key ``key``."""
    return heads.load_head(Path(weights_dir) / f"{key}.npz")


def real_eval_run(config: Mapping[str, Any], weights_dir: str | Path) -> pd.DataFrame:
    """``sweeps.run_grid`` run: evaluate one trained head (``config["head_key"]``) with ``config["evals"]``."""
    with default_dtype(config["dtype"]):
        return _real_eval(config, weights_dir)


def _real_eval(config: Mapping[str, Any], weights_dir: str | Path) -> pd.DataFrame:
    _, _, task = real_world(config["n_queries"], config["n_distractors"])
    train, seed = config["train"], int(config["seed"])
    t = task.project(load_head(config["head_key"], weights_dir))
    evals = list(config["evals"])
    inj = ch04.injection_experiment(t, evals, Ks=(0, int(config["K"])), kinds=("spike", "gaussian"), seed=seed)
    inj = inj[(inj["K"] > 0) | (inj["kind"] == "spike")]
    q = pd.DataFrame({"pooling": inj["spec"], "condition": np.where(inj["K"] == 0, "clean", inj["kind"]),
                      "K": inj["K"], "query": inj["query"], "recall@1": inj["hit"], "rr": inj["rr"],
                      "hijack": np.where(inj["K"] == 0, np.nan, inj["hijack_rate"])})
    quality = [_tag(q, "real", 1, train, seed)]
    lens = [p for p in config["length_poolings"] if p in evals]
    for f in config["factors"]:
        if f == 1 or not lens:
            continue
        padded = tasks.pad_task(t, f, tasks.neutral_pool(t), seed=seed + f)
        for spec in lens:
            r1, rr = _per_query(tasks.score_ragged(padded.queries, padded.documents, spec), padded.gold)
            q = pd.DataFrame({"pooling": spec, "condition": "clean", "K": 0, "query": np.arange(len(r1)),
                              "recall@1": r1, "rr": rr})
            quality.append(_tag(q, "real", f, train, seed))
    g = ch04.gold_pair_gini(t, evals, losses=("pair",), batch_size=64)
    g = _tag(pd.DataFrame({"pooling": g["spec"], "pair": g["query"], "gini": g["gini"]}), "real", 1, train, seed)
    return _join(pd.concat(quality, ignore_index=True), g)


def real_experiment(
    profile: str = "quick", cache_dir: str | Path | None = None, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sections 1 and 2 on the real benchmark: (quality, gini) tables in the synthetic tables' format.

    Heads are trained with MaxSim, Top-4 and softmax (tau 0.05) per seed (cached with ``sweeps.run_grid``).
    The MaxSim head is scored with every frontier pooling (swap), each other head with its own pooling
    (retrained): clean, K spikes (``inject.spike_patches`` of the query's vectors) and K Gaussian patches
    (``ch04_real.injection_experiment``), Gini of gold pairs (``ch04_real.gold_pair_gini``, pair reading) and the
    neutral length sweep (``tasks.pad_task``; ``length`` = padding factor, clean rows only). Each head's
    evaluation is a cached run too (``<cache>/eval/``).
    """
    prof = profiles.get(profile).beyond_real
    cache = Path(cache_dir) if cache_dir is not None else io.cache_dir("beyond_real", profile)
    heads = head_configs(profile)
    run_grid(heads, partial(head_run, weights_dir=cache / "weights"), cache, progress=progress,
             desc="heads").raise_for_failures()
    runs = []
    for h in heads:
        evals = prof.frontier if h["pooling"] == "maxsim" else [h["pooling"]]
        runs.append({"head_key": run_key(h), "train": h["pooling"], "seed": h["seed"], "dtype": h["dtype"],
                     "n_queries": h["n_queries"], "n_distractors": h["n_distractors"], "K": prof.K,
                     "evals": [parse_pooling(e).spec for e in evals], "factors": list(prof.factors),
                     "length_poolings": [parse_pooling(e).spec for e in prof.length_poolings],
                     "hijack_definition": HIJACK})
    res = run_grid(runs, partial(real_eval_run, weights_dir=cache / "weights"), cache / "eval", progress=progress,
                   desc="real evaluations").raise_for_failures()
    return _split(res.table)


