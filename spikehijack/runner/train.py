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

import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.device import default_dtype, resolve_device
from ..core.fused import fused_scores, resolve_backend
from ..core.metrics import gini, infonce_loss, retrieval_metrics
from ..core.pooling import Pooling, parse_pooling
from ..core.scoring import score_matrix
from ..worlds.model import StackedEncoder
from ..worlds.synthetic import SyntheticData

# ---------------------------------------------------------------------------------------------------------
# Stacked scoring


def stacked_scores(
    Q: Tensor, D: Tensor, pooling: str | Pooling, chunk_size: int | None = None, backend: str = "auto"
) -> Tensor:
    """Late-interaction scores of R runs at once: Q [R, Nq, T, d], D [R, Nd, M, d] -> [R, Nq, Nd].

    On the torch path run r is ``score_matrix(Q[r], D[r], pooling, chunk_size=chunk_size)``: its cache-sized
    chunks and sparse / closed-form gradients make a loop over runs faster than one stacked block (``make
    bench``). The fused path (``backend``, as in ``score_matrix``) scores every run in one launch.
    """
    p = parse_pooling(pooling)
    if Q.ndim != 4 or D.ndim != 4 or Q.shape[0] != D.shape[0] or Q.shape[-1] != D.shape[-1]:
        raise ValueError(f"need Q [R, Nq, T, d] and D [R, Nd, M, d], got {tuple(Q.shape)} and {tuple(D.shape)}")
    if resolve_backend(backend, p, Q, D) == "triton":
        return fused_scores(Q, D, p)
    return torch.stack([score_matrix(Q[r], D[r], p, chunk_size=chunk_size, backend="torch")
                        for r in range(Q.shape[0])])


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
    dtype: str = "float32"  # data, weights and scores ("float64": bit-stable across code paths, profiles)


METRICS = ("loss", "recall@1", "recall@5", "recall@10", "mrr", "ndcg@5")


@torch.no_grad()
def evaluate_stack(
    enc: StackedEncoder, queries: Tensor, docs: Tensor, gold: Tensor, poolings: Sequence[str]
) -> list[dict[str, float]]:
    """Retrieval metrics of every run: raw queries [R, Nq, T, d], raw docs [R, Nd, M, d], gold [Nq]."""
    dev = enc.weights[0].device
    Q, D = enc(queries.to(dev)), enc(docs.to(dev))
    out: list[dict[str, float]] = [{} for _ in poolings]
    for spec, runs in runs_by_pooling(poolings).items():
        idx = torch.as_tensor(runs, device=Q.device)
        Z = stacked_scores(Q[idx], D[idx], spec)
        for j, r in enumerate(runs):
            out[r] = retrieval_metrics(Z[j].cpu(), gold)
    return out


def runs_by_pooling(poolings: Sequence[str]) -> dict[str, list[int]]:
    """Run indices of a stack grouped by pooling spec (first-seen order): runs sharing a pooling score together."""
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
    for spec, runs in runs_by_pooling(poolings).items():
        idx = torch.as_tensor(runs, device=Q.device)
        for s in range(0, N, batch_size):
            for reading in out:
                g = stacked_patch_gradient_norms(Q[idx, s : s + batch_size], D[idx, s : s + batch_size], spec, reading)
                out[reading][idx.cpu(), s : s + batch_size] = gini(g).cpu()
    return out


def _gini_summary(g: Tensor) -> dict[str, float]:
    q = torch.quantile(g.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return {"mean": float(g.mean()), "q25": float(q[0]), "q50": float(q[1]), "q75": float(q[2])}


# ---------------------------------------------------------------------------------------------------------
# One optimisation step: eager, or captured once as a CUDA graph and replayed


def batch_loss(enc: StackedEncoder, Xq: Tensor, Xp: Tensor, b: Tensor, groups: dict[str, Tensor]) -> tuple[Tensor,
                                                                                                          Tensor]:
    """(sum of the runs' InfoNCE losses, each run's loss [R] detached) of the batch b [R, B] (indices into the
    training pairs Xq [R, N, T, in], Xp [R, N, M, in]); ``groups``: pooling spec -> run indices (a tensor)."""
    ridx = torch.arange(b.shape[0], device=b.device)[:, None]
    Q, D = enc(Xq[ridx, b]), enc(Xp[ridx, b])  # [R, B, T, d], [R, B, M, d]
    per = []
    total = Q.new_zeros(())
    for spec, idx in groups.items():
        Z = stacked_scores(Q[idx], D[idx], spec)
        per_run = torch.stack([infonce_loss(Z[j]) for j in range(len(idx))])
        per.append(per_run.detach())
        total = total + per_run.sum()
    order = torch.argsort(torch.cat(list(groups.values())))  # run r's place among the groups (no sync, no scatter)
    return total, torch.cat(per)[order]


def eager_step(enc: StackedEncoder, opt: torch.optim.Optimizer, Xq: Tensor, Xp: Tensor, b: Tensor,
               groups: dict[str, Tensor]) -> Tensor:
    """One Adam step on the batch b [R, B] (``batch_loss``); returns each run's loss [R]."""
    total, per = batch_loss(enc, Xq, Xp, b, groups)
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return per


class GraphedStep:
    """``eager_step`` as one CUDA graph: captured on the first batch, then replayed with the batch indices copied
    into a static buffer, so a step costs one launch instead of hundreds (``graph_reason`` says when it applies:
    CUDA, and every pooling on the fused kernels, which never read tensors back).

    Capture needs the kernels compiled and Adam's state allocated, so ``warmup`` steps run first and are then
    undone (parameters and Adam's state restored in place): step one of the graph is step one of training.
    ``capture=False`` keeps every part but the capture (the CPU test of this bookkeeping).
    """

    def __init__(self, enc: StackedEncoder, opt: torch.optim.Optimizer, Xq: Tensor, Xp: Tensor, b: Tensor,
                 groups: dict[str, Tensor], capture: bool = True, warmup: int = 2) -> None:
        self.b = b.clone()
        self.run = lambda: batch_loss(enc, Xq, Xp, self.b, groups)
        self.opt, self.graph, self.losses = opt, None, None
        saved = [p.detach().clone() for p in enc.parameters()]
        stream = torch.cuda.Stream(b.device) if capture else None
        try:
            if stream is not None:
                stream.wait_stream(torch.cuda.current_stream(b.device))
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                for _ in range(warmup):
                    eager_step(enc, opt, Xq, Xp, self.b, groups)
        finally:  # undone even when a warm-up step fails: the caller may go on eagerly
            if stream is not None:
                torch.cuda.current_stream(b.device).wait_stream(stream)
            with torch.no_grad():
                for p, v in zip(enc.parameters(), saved, strict=True):
                    p.copy_(v)
                for state in opt.state.values():
                    for t in state.values():
                        if isinstance(t, Tensor):
                            t.zero_()  # exp_avg, exp_avg_sq, step: as before the first step
            opt.zero_grad(set_to_none=True)
        if capture:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.losses = self._step()

    def _step(self) -> Tensor:
        total, per = self.run()
        total.backward()
        self.opt.step()
        return per

    def __call__(self, b: Tensor) -> Tensor:
        """One step on the batch b [R, B]: each run's loss [R] (valid until the next call)."""
        self.b.copy_(b)
        if self.graph is None:
            self.opt.zero_grad(set_to_none=True)
            return self._step()
        self.graph.replay()
        return self.losses


def graph_reason(poolings: Sequence[str], dev: torch.device, dtype: torch.dtype) -> str | None:
    """Why a training step cannot be a CUDA graph here (None: it can)."""
    if dev.type != "cuda":
        return f"device {dev.type} (CUDA graphs need CUDA)"
    probe = torch.zeros(1, 1, 1, 16, dtype=dtype, device=dev)
    for p in poolings:
        if resolve_backend("auto", p, probe, probe) != "triton":
            return f"pooling {p!r} in {dtype} is not on the fused kernels"
    return None


def train_stack(
    worlds: Sequence[SyntheticData],
    poolings: Sequence[str],
    seeds: Sequence[int],
    tcfg: TrainConfig = TrainConfig(),
    device: str | torch.device = "cpu",
    progress: bool = True,
    graph: bool | None = None,
) -> tuple[pd.DataFrame, StackedEncoder]:
    """Train R = len(poolings) runs at once; run r uses world ``worlds[r]``, pooling ``poolings[r]``, seed ``seeds[r]``.

    All worlds must share length and sizes. Returns (tidy table: seed, pooling, length, epoch, metric, value;
    the trained stack). The seed fixes the encoder init and the batch order. ``graph``: replay each step as a
    CUDA graph (``GraphedStep``); None does so wherever ``graph_reason`` allows, True insists (ValueError).
    """
    with default_dtype(tcfg.dtype):
        return _train_stack(worlds, poolings, seeds, tcfg, device, progress, graph)


def _train_stack(
    worlds: Sequence[SyntheticData], poolings: Sequence[str], seeds: Sequence[int], tcfg: TrainConfig,
    device: str | torch.device, progress: bool, graph: bool | None,
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
    reason = graph_reason(poolings, dev, dt) if graph is not False else None
    if graph and reason is not None:
        raise ValueError(f"graph=True: the training step cannot be a CUDA graph: {reason}")
    graph = graph is not False and reason is None
    opt = torch.optim.Adam(enc.parameters(), lr=tcfg.lr, capturable=graph)
    gens = [torch.Generator().manual_seed(int(s) * 31 + 7) for s in seeds]
    steps = N // B
    groups = {spec: torch.as_tensor(runs, device=dev) for spec, runs in runs_by_pooling(poolings).items()}
    step: GraphedStep | None = None
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
        epoch_loss = torch.zeros(R, device=dev)
        for s in range(steps):
            b = perm[:, s * B : (s + 1) * B]
            if graph and step is None:
                try:
                    step = GraphedStep(enc, opt, Xq, Xp, b, groups)
                except RuntimeError as exc:  # capture refused (driver, allocator): the same steps, eagerly
                    warnings.warn(f"training eagerly: the step could not be captured as a CUDA graph ({exc})",
                                  stacklevel=2)
                    graph = False
            epoch_loss += step(b) if step is not None else eager_step(enc, opt, Xq, Xp, b, groups)
        if epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs:
            record(epoch, (epoch_loss / steps).cpu())
    return pd.DataFrame(rows), enc
