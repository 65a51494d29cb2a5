"""Instrumented training in the synthetic world: in-batch InfoNCE, Adam, periodic evaluation.

A *stack* of R independent runs (one per (pooling, seed) pair, all at one document length M) trains at
once with ``StackedEncoder``: the loss is the sum of the runs' InfoNCE losses, so each run's gradient is
its own and Adam (elementwise) keeps the runs independent; run r gives the same numbers whatever else
shares its stack.

``stacked_scores`` is the training-time score ``Z_ab = sum_i phi(S_i)`` for every run of a stack:
``scoring.score_matrix`` run by run.

Every ``eval_every`` epochs a run records: training loss (mean over the epoch), Recall@1/5/10, MRR and
nDCG@5 on the evaluation corpus, and the patch-level gradient Gini over a fixed set of training pairs
(``gini_pairs``, in-batch groups of ``batch_size``) for both readings of PAPER.md section 2: ``pair`` (the
pair's own loss term) and ``infonce`` (the whole batch loss), each as mean and quartiles.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import io
from ..core.device import PRECISION, default_dtype, resolve_device
from ..core.metrics import gini, infonce_loss, retrieval_metrics
from ..core.pooling import Pooling, parse_pooling
from ..core.scoring import score_matrix
from ..worlds.model import StackedEncoder
from ..worlds.synthetic import SyntheticConfig, SyntheticData, generate
from . import sweeps

# ---------------------------------------------------------------------------------------------------------
# Stacked scoring


def stacked_scores(Q: Tensor, D: Tensor, pooling: str | Pooling, chunk_size: int | None = None) -> Tensor:
    """Late-interaction scores of R runs at once: Q [R, Nq, T, d], D [R, Nd, M, d] -> [R, Nq, Nd].

    Run r is ``score_matrix(Q[r], D[r], pooling, chunk_size=chunk_size)``: its cache-sized chunks and
    sparse / closed-form gradients make a loop over runs faster than one stacked block (``make bench``).
    """
    p = parse_pooling(pooling)
    if Q.ndim != 4 or D.ndim != 4 or Q.shape[0] != D.shape[0] or Q.shape[-1] != D.shape[-1]:
        raise ValueError(f"need Q [R, Nq, T, d] and D [R, Nd, M, d], got {tuple(Q.shape)} and {tuple(D.shape)}")
    return torch.stack([score_matrix(Q[r], D[r], p, chunk_size=chunk_size) for r in range(Q.shape[0])])


def stacked_infonce(Z: Tensor) -> Tensor:
    """Sum over runs of the in-batch InfoNCE loss: Z [R, B, B] -> scalar (each run's term is its mean)."""
    R, B, _ = Z.shape
    target = torch.arange(B, device=Z.device).repeat(R)
    return torch.nn.functional.cross_entropy(Z.reshape(R * B, B), target, reduction="sum") / B


def stacked_patch_gradient_norms(Q: Tensor, D: Tensor, pooling: str | Pooling, loss: str = "pair") -> Tensor:
    """``metrics.patch_gradient_norms`` for R runs at once: Q [R, B, T, d], D [R, B, M, d] -> g [R, B, M].

    Row (r, a) is the positive pair (q_a, d_a) of run r's in-batch group; ``loss`` is "pair" or "infonce".
    """
    if loss not in ("pair", "infonce"):
        raise ValueError(f"loss must be 'pair' or 'infonce', got {loss!r}")
    with torch.enable_grad():
        Dd = D.detach().requires_grad_(True)
        Z = stacked_scores(Q.detach(), Dd, pooling)
        if loss == "infonce":
            objective = stacked_infonce(Z)  # per-run means; runs do not interact
        else:
            coef = torch.softmax(Z.detach(), dim=-1).diagonal(dim1=1, dim2=2) - 1  # [R, B]
            objective = (coef * Z.diagonal(dim1=1, dim2=2)).sum()
        (g,) = torch.autograd.grad(objective, Dd)
    return g.norm(dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and instrumentation knobs (PAPER.md section 3 defaults)."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    eval_every: int = 5
    hidden: int = 64
    out_dim: int = 16
    gini_pairs: int = 256  # fixed training pairs for the gradient Gini (multiple of batch_size)
    dtype: str = "float32"  # data, weights and scores ("float64": bit-stable across code paths, device.PRECISION)


METRICS = ("loss", "recall@1", "recall@5", "recall@10", "mrr", "ndcg@5")


@torch.no_grad()
def evaluate_stack(
    enc: StackedEncoder, queries: Tensor, docs: Tensor, gold: Tensor, poolings: Sequence[str]
) -> list[dict[str, float]]:
    """Retrieval metrics of every run: raw queries [R, Nq, T, d], raw docs [R, Nd, M, d], gold [Nq]."""
    dev = enc.weights[0].device
    Q, D = enc(queries.to(dev)), enc(docs.to(dev))
    out: list[dict[str, float]] = [{} for _ in poolings]
    for spec, runs in _by_pooling(poolings).items():
        idx = torch.as_tensor(runs, device=Q.device)
        Z = stacked_scores(Q[idx], D[idx], spec)
        for j, r in enumerate(runs):
            out[r] = retrieval_metrics(Z[j].cpu(), gold)
    return out


def _by_pooling(poolings: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for r, p in enumerate(poolings):
        groups.setdefault(p, []).append(r)
    return groups


@torch.no_grad()
def gini_stack(
    enc: StackedEncoder, queries: Tensor, docs: Tensor, poolings: Sequence[str], batch_size: int
) -> dict[str, Tensor]:
    """Per-pair gradient Gini of every run for both readings: raw pairs [R, N, ...] -> {"pair": [R, N], ...}."""
    dev = enc.weights[0].device
    Q, D = enc(queries.to(dev)), enc(docs.to(dev))
    R, N = Q.shape[:2]
    out = {k: torch.zeros(R, N, dtype=torch.float32) for k in ("pair", "infonce")}
    for spec, runs in _by_pooling(poolings).items():
        idx = torch.as_tensor(runs, device=Q.device)
        for s in range(0, N, batch_size):
            for reading in out:
                g = stacked_patch_gradient_norms(Q[idx, s : s + batch_size], D[idx, s : s + batch_size], spec, reading)
                out[reading][idx.cpu(), s : s + batch_size] = gini(g).cpu()
    return out


def _gini_summary(g: Tensor) -> dict[str, float]:
    q = torch.quantile(g.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return {"mean": float(g.mean()), "q25": float(q[0]), "q50": float(q[1]), "q75": float(q[2])}


def train_stack(
    worlds: Sequence[SyntheticData],
    poolings: Sequence[str],
    seeds: Sequence[int],
    tcfg: TrainConfig = TrainConfig(),
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[pd.DataFrame, StackedEncoder]:
    """Train R = len(poolings) runs at once; run r uses world ``worlds[r]``, pooling ``poolings[r]``, seed ``seeds[r]``.

    All worlds must share length and sizes. Returns (tidy table: seed, pooling, length, epoch, metric, value;
    the trained stack). The seed fixes the encoder init and the batch order.
    """
    with default_dtype(tcfg.dtype):
        return _train_stack(worlds, poolings, seeds, tcfg, device, progress)


def _train_stack(
    worlds: Sequence[SyntheticData], poolings: Sequence[str], seeds: Sequence[int], tcfg: TrainConfig,
    device: str | torch.device, progress: bool,
) -> tuple[pd.DataFrame, StackedEncoder]:
    R = len(poolings)
    if not (len(worlds) == len(seeds) == R) or R == 0:
        raise ValueError(f"worlds, poolings, seeds need one entry per run, got {len(worlds)}, {R}, {len(seeds)}")
    poolings = [parse_pooling(p).spec for p in poolings]
    dev = resolve_device(device)
    cfg0 = worlds[0].config
    for w in worlds:
        if (w.config.length, w.config.n_train, w.config.n_eval, w.config.dim) != (
            cfg0.length, cfg0.n_train, cfg0.n_eval, cfg0.dim):
            raise ValueError("all worlds of a stack must share length, n_train, n_eval and dim")
    B, N = tcfg.batch_size, cfg0.n_train
    if N < B:
        raise ValueError(f"n_train={N} must be >= batch_size={B}")
    dt = torch.get_default_dtype()  # tcfg.dtype (train_stack)
    Xq = torch.stack([w.train.queries for w in worlds]).to(dev, dt)
    Xp = torch.stack([w.train.positives for w in worlds]).to(dev, dt)
    Eq = torch.stack([w.eval.queries for w in worlds]).to(dev, dt)
    Ed = torch.stack([w.eval.corpus()[0] for w in worlds]).to(dev, dt)
    gold = worlds[0].eval.corpus()[1]
    n_gini = min(tcfg.gini_pairs, N)
    torch.manual_seed(int(seeds[0]))
    enc = StackedEncoder(seeds, cfg0.dim, tcfg.hidden, tcfg.out_dim).to(dev)
    opt = torch.optim.Adam(enc.parameters(), lr=tcfg.lr)
    gens = [torch.Generator().manual_seed(int(s) * 31 + 7) for s in seeds]
    steps = N // B
    groups = _by_pooling(poolings)
    rows: list[dict[str, Any]] = []

    def record(epoch: int, losses: Tensor | None) -> None:
        enc.eval()
        ret = evaluate_stack(enc, Eq, Ed, gold, poolings)
        gin = gini_stack(enc, Xq[:, :n_gini], Xp[:, :n_gini], poolings, B)
        for r in range(R):
            vals = dict(ret[r])
            if losses is not None:
                vals["loss"] = float(losses[r])
            for reading, g in gin.items():
                for stat, v in _gini_summary(g[r]).items():
                    vals[f"gini_{reading}_{stat}"] = v
            base = {"seed": int(seeds[r]), "pooling": poolings[r], "length": cfg0.length, "epoch": epoch}
            rows.extend({**base, "metric": k, "value": v} for k, v in vals.items())
        enc.train()

    record(0, None)
    bar = tqdm(range(1, tcfg.epochs + 1), desc=f"train M={cfg0.length} R={R}", disable=not progress)
    for epoch in bar:
        perm = torch.stack([torch.randperm(N, generator=g) for g in gens]).to(dev)  # [R, N]
        ridx = torch.arange(R, device=dev)[:, None]
        epoch_loss = torch.zeros(R, device=dev)
        for s in range(steps):
            b = perm[:, s * B : (s + 1) * B]
            Q, D = enc(Xq[ridx, b]), enc(Xp[ridx, b])  # [R, B, T, d], [R, B, M, d]
            losses = []
            total = Q.new_zeros(())
            for spec, runs in groups.items():
                idx = torch.as_tensor(runs, device=dev)
                Z = stacked_scores(Q[idx], D[idx], spec)
                per_run = torch.stack([infonce_loss(Z[j]) for j in range(len(runs))])
                losses.append((idx, per_run.detach()))
                total = total + per_run.sum()
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            for idx, lv in losses:
                epoch_loss[idx] += lv
        if epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs:
            record(epoch, (epoch_loss / steps).cpu())
    return pd.DataFrame(rows), enc


# ---------------------------------------------------------------------------------------------------------
# Groups: the cache unit of sweeps.run_grid (one length x several poolings x several seeds)

_WORLD_KEYS = [f.name for f in fields(SyntheticConfig) if f.name != "seed"]
_TRAIN_KEYS = [f.name for f in fields(TrainConfig)]


def group_config(
    world: SyntheticConfig, poolings: Sequence[str], seeds: Sequence[int], tcfg: TrainConfig
) -> dict[str, Any]:
    """A flat JSON-able config for one stack (its hash is the cache key): world knobs, train knobs, runs."""
    cfg = {k: v for k, v in asdict(world).items() if k != "seed"}
    cfg.update(asdict(tcfg))
    cfg["poolings"] = ",".join(parse_pooling(p).spec for p in poolings)
    cfg["seeds"] = ",".join(str(int(s)) for s in seeds)
    return cfg


def _unpack(config: Mapping[str, Any]) -> tuple[SyntheticConfig, list[str], list[int], TrainConfig]:
    world = SyntheticConfig(**{k: config[k] for k in _WORLD_KEYS})
    tcfg = TrainConfig(**{k: config[k] for k in _TRAIN_KEYS})
    return world, config["poolings"].split(","), [int(s) for s in str(config["seeds"]).split(",")], tcfg


def run_group(
    config: Mapping[str, Any], weights_dir: str | Path | None = None, device: str = "cpu", progress: bool = False
) -> pd.DataFrame:
    """Train every (pooling, seed) of a group config as one stack; optionally save weights to
    ``weights_dir/<run_key>.npz`` (the same key as the cached table)."""
    world, poolings, seeds, tcfg = _unpack(config)
    pairs = [(p, s) for p in poolings for s in seeds]
    worlds = {s: world_of(config, s) for s in seeds}
    df, enc = train_stack([worlds[s] for _, s in pairs], [p for p, _ in pairs], [s for _, s in pairs], tcfg,
                          device, progress)
    if weights_dir is not None:
        arrays = {k: v.numpy() for k, v in enc.state_arrays().items()}
        io.write_npz(Path(weights_dir) / f"{sweeps.run_key(config)}.npz", **arrays)
    return df


def run_groups(
    configs: Sequence[Mapping[str, Any]],
    cache_dir: str | Path,
    device: str = "cpu",
    executor: str = "local",
    address: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or load from ``cache_dir``) every group config; the weights go to ``cache_dir/weights``."""
    fn = functools.partial(run_group, weights_dir=Path(cache_dir) / "weights", device=device)
    opts = {"address": address} if executor == "ray" and address is not None else {}
    res = sweeps.run_grid(list(configs), fn, cache_dir, executor=executor, progress=progress, desc="groups", **opts)
    return res.raise_for_failures().table


def load_group_models(
    config: Mapping[str, Any], cache_dir: str | Path, device: str = "cpu"
) -> tuple[StackedEncoder, list[str], list[int]]:
    """The trained stack of a cached group: (encoder, pooling per run, seed per run)."""
    world, poolings, seeds, tcfg = _unpack(config)
    path = Path(cache_dir) / "weights" / f"{sweeps.run_key(config)}.npz"
    if not path.exists():
        raise FileNotFoundError(f"no weights for this group at {path}: run it with run_groups first")
    pairs = [(p, s) for p in poolings for s in seeds]
    with default_dtype(tcfg.dtype):
        enc = StackedEncoder([s for _, s in pairs], world.dim, tcfg.hidden, tcfg.out_dim)
    return enc.load_arrays(io.read_npz(path)).to(resolve_device(device)), [p for p, _ in pairs], [s for _, s in pairs]


def summary_table(df: pd.DataFrame, metrics: Sequence[str] = ("recall@1", "mrr", "gini_pair_mean",
                                                                "gini_infonce_mean")) -> pd.DataFrame:
    """Final-epoch mean over seeds per (length, pooling) and metric, one column per metric."""
    last = df[df["epoch"] == df.groupby(["length", "pooling"])["epoch"].transform("max")]
    last = last[last["metric"].isin(metrics)]
    return last.pivot_table(index=["length", "pooling"], columns="metric", values="value", aggfunc="mean").round(4)


# ---------------------------------------------------------------------------------------------------------
# Profiles and the CLI


POOLINGS_MAIN = ("maxsim", "topk:4", "softmax:1")
LENGTHS = (32, 64, 128, 256)
INJECTION_K = (0, 25, 50, 100, 200, 400)
FRONTIER_POOLINGS = ("topk:1", "topk:2", "topk:8", "topk:16", "softmax:0.01", "softmax:0.03", "softmax:0.1",
                     "softmax:0.3")


def main_grid(profile: str, world: SyntheticConfig | None = None, sweep: bool = False) -> list[dict[str, Any]]:
    """The group configs of Fig 1 (3 poolings x 4 lengths x seeds) for a profile.

    ``sweep=True`` applies the profile's "sweep" overrides (smaller stacks for the quick length sweep).
    """
    p = PROFILES[profile]
    world = world or calibrated_world()
    over = p.get("sweep", {}) if sweep else {}
    tcfg = TrainConfig(**{**p["train"], **over.get("train", {})})
    wk = {**p["world"], **over.get("world", {})}
    lengths = over.get("lengths", p["lengths"])
    return [group_config(world.with_(length=M, **wk), POOLINGS_MAIN, p["seeds"], tcfg) for M in lengths]


#: Sizes per profile (quick: the committed notebooks; paper: PAPER.md settings).
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "seeds": (0, 1),
        "lengths": LENGTHS,
        "world": {"n_train": 512, "n_eval": 256},
        "train": {"epochs": 15, "eval_every": 5, "gini_pairs": 64, "dtype": PRECISION["quick"]},
        # the length sweep (Fig 1C, notebook 03; reused by notebook 05) trains smaller stacks, up to M = 128, in
        # the quick profile (float64 on 2 cores: make test must stay under 25 min on the slowest CPU code path)
        "sweep": {"world": {"n_train": 256, "n_eval": 128}, "train": {"epochs": 10, "eval_every": 10},
                  "lengths": (32, 64, 128)},
        "frontier": {"poolings": ("topk:1", "topk:16", "softmax:0.1", "softmax:0.3"),
                     "seeds": (0,), "train": {"epochs": 10, "eval_every": 10}},
        "n_cross": 64,  # evaluation queries per corpus in the cross-length table
        "n_inject": 64,  # evaluation queries in the injection sweeps
    },
    "paper": {
        "seeds": (0, 1, 2, 3, 4),
        "lengths": LENGTHS,
        "world": {},
        "train": {"epochs": 100, "eval_every": 5, "gini_pairs": 256, "dtype": PRECISION["paper"]},
        "sweep": {},  # same configs as notebook 02: its M = 64 stack is reused
        "frontier": {"poolings": FRONTIER_POOLINGS, "seeds": (0, 1, 2)},
        "n_cross": 512,
        "n_inject": 512,
    },
}


def calibrated_world() -> SyntheticConfig:
    """The frozen world after calibration (notebook 02 shows the search; see CALIBRATED)."""
    return SyntheticConfig(**CALIBRATED)


#: Open knobs chosen by the calibration of notebook 02 (MaxSim clean Recall@1 at M = 64 in 0.33-0.38).
CALIBRATED: dict[str, Any] = {"n_support": 11, "n_shared": 2, "spike_size": 4}


def _cli(args: argparse.Namespace) -> int:
    cache = Path(args.out) if args.out else io.cache_dir("synthetic")
    configs = main_grid(args.profile, sweep=True)
    df = run_groups(configs, cache, device=args.device, executor=args.executor, address=args.ray_address)
    print(summary_table(df).to_string())
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    sp = subparsers.add_parser("synthetic", help="train the synthetic grid (Fig 1) and print a summary")
    sp.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--out", default=None, help="cache folder (default results/cache/synthetic)")
    sp.add_argument("--executor", choices=["local", "ray"], default="local")
    sp.add_argument("--ray-address", default=None)
    sp.set_defaults(func=_cli)


# ---------------------------------------------------------------------------------------------------------
# Analysis helpers used by notebooks 02 and 03


def label(spec: str) -> str:
    """Human-readable pooling label ("MaxSim", "Top-4", "Softmax τ=1")."""
    return parse_pooling(spec).label


def curves(df: pd.DataFrame, metric: str, by: Sequence[str] = ("pooling", "epoch")) -> pd.DataFrame:
    """Mean and 95 % t-interval over seeds of ``metric`` per group (default: pooling x epoch)."""
    from ..reporting.stats import summarize

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
    from ..core.gradients import score_grad_documents
    from ..worlds.synthetic import KIND_NAMES

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
    from ..reporting.stats import claim_row, mean_ci

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


def calibrate(
    candidates: Sequence[Mapping[str, Any]],
    base: SyntheticConfig | None = None,
    tcfg: TrainConfig = TrainConfig(eval_every=25, gini_pairs=64),
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


# ---------------------------------------------------------------------------------------------------------
# Notebook 03: length, injection and the sparsity-robustness frontier



def frontier_config(profile: str, world: SyntheticConfig | None = None) -> dict[str, Any]:
    """The group of extra poolings (Top-k, softmax tau) at M = 64 that, with Fig 1's three, trace the frontier."""
    p = PROFILES[profile]
    f = p["frontier"]
    world = (world or calibrated_world()).with_(length=64, **p["world"])
    tcfg = TrainConfig(**{**p["train"], **f.get("train", {})})
    return group_config(world, f["poolings"], f["seeds"], tcfg)


def world_of(config: Mapping[str, Any], seed: int, **changes: Any) -> SyntheticData:
    """The world a group config trains on for ``seed`` (with optional knob changes, e.g. another length)."""
    world, _, _, tcfg = _unpack(config)
    with default_dtype(tcfg.dtype):
        return generate(world.with_(seed=seed, **changes))


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
    config: Mapping[str, Any], cache_dir: str | Path, ks: Sequence[int] = INJECTION_K, n_queries: int = 128,
    spike_size: int = 4, device: str = "cpu", progress: bool = True,
) -> pd.DataFrame:
    """Token-targeted spike injection vs the Gaussian control for every run of a cached group.

    For each run: the first ``n_queries`` evaluation queries are ranked against the whole evaluation corpus
    after query a's K injected patches go into every non-gold document (``inject.score_with_injection``).
    Spikes are built in raw space from the query's own concepts (normalize(mean of ``spike_size`` of them),
    the hard negatives' construction) and Gaussian patches are unit Gaussian vectors; both pass through the
    trained encoder. Rows: pooling, seed, kind, K, recall@1, hijack_rate, argmax_shift.
    """
    from ..core import inject
    from ..core.metrics import recall_at_k

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
    from ..reporting.stats import claim_row, mean_ci

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


def sensitivity(
    variations: Sequence[tuple[str, Any]],
    base: SyntheticConfig | None = None,
    tcfg: TrainConfig = TrainConfig(epochs=15, gini_pairs=64),
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
