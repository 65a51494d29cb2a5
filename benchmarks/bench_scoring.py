"""Late-interaction scoring benchmark (``make bench``): our poolings vs the matmul floor, einsum+amax, maxsim-cpu.

Sections, all float32 on identical inputs within one run:
  corpus  one query and a batch of 64 queries against (T, N, M, d) corpora; median and min over >= 7 timed runs
          after a warm-up, with ratios to maxsim-cpu and to the bare matmul (lower = faster), the similarity
          GEMM's flop count and the rate it implies
  memory  peak extra RSS of ``score_matrix`` with and without ``chunk_size`` (a fresh subprocess per row)
  train   steps/s of one synthetic InfoNCE training step (B=64, T=16, d=16), forward plus backward
  select  Top-k inside one cache-sized block: kernels.top_k_tournament (on the block stored patch-major) against
          torch.topk (the token-major kernel)
  poolings  every pooling, robust ones included, on the three paths scoring takes: score_matrix without and
          with a gradient, score_with_injection (``pooling_rows`` times any spec or Pooling object)
  sweep   an injection sweep (3 poolings x 2 kinds x 3 K) over a ragged corpus, side by side: every job scored
          block by block with core score_with_injection (the way before the one-pass sweep), every job alone
          (worlds.tasks.injection_scores) and all jobs in one corpus pass (injection_scores_many)
  grid    the paper-profile main grid (3 poolings x 4 lengths x 5 seeds, one stack per length) trained on the
          device the bench runs on (``--device``), timed per stack; ``--grid-epochs`` runs fewer epochs and
          extrapolates to 100, ``--grid-budget`` shortens the stacks that would not fit in that many seconds
  cuda    the corpus section on the GPU in float32 and bf16 (only when CUDA is available): our torch path
          ("ours"), the fused Triton kernels ("fused", core.fused, where Triton imports) and the floors; then
          the issue's GPU targets, one row each (cuda_targets.csv)
Tables are printed and written to build/bench/*.csv. ``--quick`` is a smoke run (< 30 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from spikehijack import io
from spikehijack.core.device import resolve_device
from spikehijack.core.fused import resolve_backend
from spikehijack.core.inject import gaussian_patches, injected_summary, score_with_injection, spike_patches
from spikehijack.core.kernels import block_budget, ragged_blocks, top_k_tournament
from spikehijack.core.pooling import Pooling, parse_pooling
from spikehijack.core.robust import robust_poolings
from spikehijack.core.scoring import auto_chunk_size, pad, score_matrix
from spikehijack.worlds.tasks import RealTask, injection_scores, injection_scores_many, relevance

CORPORA = [(32, 1000, 512, 128), (16, 2000, 256, 128), (32, 200, 1024, 128)]  # (T, N, M, d)
POOLINGS = ["maxsim", "topk:4", "softmax:0.1"]
OUT = io.REPO_ROOT / "build" / "bench"


def timed(fn: Callable[[], object], runs: int, sync: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """(median, min) wall seconds of ``fn`` over ``runs`` calls after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(min(times))


def unit_vectors(shape: tuple[int, ...], seed: int, device: str = "cpu") -> torch.Tensor:
    """Random l2-normalised float32 vectors (maxsim-cpu expects unit vectors), built in place."""
    x = torch.empty(shape).normal_(generator=torch.Generator().manual_seed(seed))
    return x.div_(x.norm(dim=-1, keepdim=True)).to(device)


def bare_matmul(Q: torch.Tensor, D: torch.Tensor) -> None:
    """The floor: the same similarity GEMMs as score_matrix (same cache-sized blocks, same buffer), no pooling."""
    Nq, T, d = Q.shape
    N, M, _ = D.shape
    q = Q.reshape(Nq * T, d)
    n = auto_chunk_size(N, M, Nq * T, Q.device)
    buf = torch.empty(n, Nq * T, M, dtype=Q.dtype, device=Q.device)
    for s in range(0, N, n):
        Dc = D[s : s + n]
        torch.bmm(q.expand(Dc.shape[0], -1, -1), Dc.transpose(1, 2), out=buf[: Dc.shape[0]])


def einsum_amax(Q: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """What most codebases write: materialise S [T, N, M] per query, amax over patches, sum over tokens."""
    return torch.stack([torch.einsum("td,nmd->tnm", q, D).amax(-1).sum(0) for q in Q])


def peer_scores(peer: Callable, Q: np.ndarray, D: np.ndarray) -> np.ndarray:
    """maxsim-cpu scores one query per call: Q [Nq, T, d], D [N, M, d] -> [Nq, N]."""
    return np.stack([peer(q, D) for q in Q])


def corpus_rows(corpora, batches, runs: int, device: str = "cpu", dtype=torch.float32) -> list[dict]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fused_ok = device == "cuda" and resolve_backend("auto", "maxsim", torch.zeros(1, 1, 16, device=device)) == "triton"
    peer = None
    if device == "cpu":
        import maxsim_cpu  # bench extra: pip install -e .[bench]

        peer = maxsim_cpu.maxsim_scores
    rows = []
    for T, N, M, d in corpora:
        D = unit_vectors((N, M, d), seed=1, device=device).to(dtype)
        for Nq in batches:
            Q = unit_vectors((Nq, T, d), seed=2, device=device).to(dtype)
            contenders: dict[str, Callable[[], object]] = {
                f"ours {spec}": partial(score_matrix, Q, D, spec, backend="torch") for spec in POOLINGS
            }
            if device == "cuda" and fused_ok:
                for spec in POOLINGS:
                    contenders[f"fused {spec}"] = partial(score_matrix, Q, D, spec, backend="triton")
                    gap = float((contenders[f"fused {spec}"]() - contenders[f"ours {spec}"]()).abs().max())
                    assert gap <= 2e-2 * T, f"fused {spec} differs from our torch path by {gap:.2e}"
            contenders["bare matmul"] = partial(bare_matmul, Q, D)
            contenders["einsum+amax"] = partial(einsum_amax, Q, D)
            if peer is not None:
                contenders["maxsim-cpu"] = partial(peer_scores, peer, Q.numpy(), D.numpy())
                gap = float((score_matrix(Q, D, "maxsim") - torch.from_numpy(contenders["maxsim-cpu"]())).abs().max())
                assert gap <= 1e-4, f"our MaxSim differs from maxsim-cpu by {gap:.2e} at {(T, N, M, d, Nq)}"
            for name, fn in contenders.items():
                with torch.no_grad():
                    med, best = timed(fn, runs, sync)
                gflop = 2 * Nq * T * N * M * d / 1e9  # the similarity GEMM, the floor's work
                rows.append(dict(device=device, dtype=str(dtype).removeprefix("torch."), T=T, N=N, M=M, d=d,
                                 Nq=Nq, contender=name, median_ms=1e3 * med, min_ms=1e3 * best, gflop=gflop,
                                 tflop_per_s=gflop / med / 1e3,
                                 load_1min=os.getloadavg()[0]))  # > threads: other processes contend
                print(f"  {device} T={T} N={N} M={M} Nq={Nq} {name}: {1e3 * med:.1f} ms", flush=True)
    df = pd.DataFrame(rows)
    key = ["device", "dtype", "T", "N", "M", "d", "Nq"]
    for ref, col in (("maxsim-cpu", "x_maxsim_cpu"), ("bare matmul", "x_matmul")):
        base = df[df.contender == ref].set_index(key).median_ms
        if len(base):
            df[col] = df.median_ms / df.set_index(key).index.map(base).to_numpy()
    return df


def memory_probe(N: int, M: int, d: int, T: int, Nq: int, chunk: int | None) -> dict:
    """Run in a fresh process: peak RSS added by one score_matrix call, in MiB (D is allocated before)."""
    g = torch.Generator().manual_seed(0)
    D = torch.empty(N, M, d).normal_(generator=g)  # no temporaries: the peak so far is the corpus itself
    Q = torch.empty(Nq, T, d).normal_(generator=g)
    score_matrix(Q, D[:2], "maxsim")  # load the kernels first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    score_matrix(Q, D, "maxsim", chunk_size=chunk)
    seconds = time.perf_counter() - t0
    extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # Linux: KiB
    n = auto_chunk_size(N, M, Nq * T) if chunk is None else min(chunk, N)
    return dict(N=N, M=M, d=d, T=T, Nq=Nq, chunk_size="auto" if chunk is None else chunk, docs_per_block=n,
                block_mib=n * M * Nq * T * 4 / 2**20, corpus_mib=N * M * d * 4 / 2**20, peak_extra_mib=extra,
                seconds=seconds)


def memory_rows(N: int, batch: int, threads: int, quick: bool = False) -> pd.DataFrame:
    cases = [(N, 1, None), (N, 1, N), (N // 4, 1, None)]  # auto chunk, one block, a quarter of the corpus
    cases += [] if quick else [(N, 1, 64), (N, batch, None), (N, batch, 16)]
    rows = []
    for n_docs, Nq, chunk in cases:
        cmd = [sys.executable, __file__, "--threads", str(threads), "--memory-probe",
               json.dumps([n_docs, 256, 128, 32, Nq, chunk])]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return pd.DataFrame(rows)


def _encoder() -> tuple[torch.nn.Module, str]:
    """The synthetic world's encoder (spikehijack.worlds.model) or, before it exists, an equivalent 3-layer MLP."""
    try:
        from spikehijack.worlds.model import Encoder

        return Encoder(in_dim=16, hidden=64, out_dim=16, seed=0), "spikehijack.worlds.model.Encoder"
    except ImportError:
        torch.manual_seed(0)
        mlp = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                  torch.nn.ReLU(), torch.nn.Linear(64, 16))
        return torch.nn.Sequential(mlp, _Normalize()), "stand-in MLP"


class _Normalize(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=-1)


def train_step(enc: torch.nn.Module, opt: torch.optim.Optimizer, xq: torch.Tensor, xd: torch.Tensor,
               spec: str | Pooling) -> None:
    """In-batch InfoNCE (positives on the diagonal, temperature 0.05): forward, backward, Adam step."""
    Z = score_matrix(enc(xq), enc(xd), spec)
    loss = torch.nn.functional.cross_entropy(Z / 0.05, torch.arange(Z.shape[0]))
    opt.zero_grad()
    loss.backward()
    opt.step()


def token_major(spec: str) -> Pooling:
    """The pooling of ``spec`` on token-major blocks (for Top-k: ``torch.topk``), the layout before the patch-major
    kernels: same numbers, the side-by-side baseline."""
    base = type(parse_pooling(spec))
    cls = type(f"TokenMajor{base.__name__}", (base,), {"patch_major": lambda self, grad: False})
    return cls(**{f.name: getattr(parse_pooling(spec), f.name) for f in dataclasses.fields(base)})


def train_rows(lengths, runs: int, B: int = 64, T: int = 16, d: int = 16) -> pd.DataFrame:
    """One training step per pooling and length; MaxSim and Top-k also on token-major blocks (``token_major``)."""
    rows = []
    for M in lengths:
        for spec in POOLINGS:
            for layout in ("own", "token-major") if parse_pooling(spec).patch_major(True) else ("own",):
                enc, which = _encoder()
                opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
                g = torch.Generator().manual_seed(M)
                xq, xd = torch.randn(B, T, d, generator=g), torch.randn(B, M, d, generator=g)
                p = parse_pooling(spec) if layout == "own" else token_major(spec)
                med, best = timed(partial(train_step, enc, opt, xq, xd, p), runs)
                rows.append(dict(B=B, T=T, M=M, d=d, pooling=spec, layout=layout, encoder=which,
                                 median_ms=1e3 * med, min_ms=1e3 * best, steps_per_s=1 / med))
    return pd.DataFrame(rows)


def _reference_top_k(S: torch.Tensor, k: int) -> torch.Tensor:
    return S.topk(k, dim=-1, sorted=False).values.mean(-1)


def _tournament_top_k(St: torch.Tensor, work: torch.Tensor, k: int) -> torch.Tensor:
    """The patch-major kernel's selection (St [n, M, rows] unchanged): amax for k = 1, else the tournament."""
    return St.amax(1) if k == 1 else top_k_tournament(St, k, work).sum(0) / k


def selection_rows(runs: int, lengths=(32, 64, 128, 256), ks=(1, 4, 16), rows: int = 1024) -> pd.DataFrame:
    """Mean of the top k per row, ns per similarity, in one cache-sized block (the size ``score_matrix`` gives it):
    ``torch.topk`` on S [n, rows, M] against ``top_k_tournament`` on the same block stored patch-major
    [n, M, rows] (amax for k = 1); speedup = topk / tournament."""
    out = []
    for M in lengths:
        S = torch.randn(max(1, block_budget("cpu") // (rows * M)), rows, M, generator=torch.Generator().manual_seed(M))
        St, work = S.transpose(1, 2).contiguous(), torch.empty_like(S)
        for k in (k for k in ks if k <= M):
            ns = {name: 1e9 * timed(fn, runs)[0] / S.numel() for name, fn in (
                ("tournament", partial(_tournament_top_k, St, work, k)), ("topk", partial(_reference_top_k, S, k)))}
            out.append(dict(M=M, k=k, entries=S.numel(), tournament_ns=ns["tournament"], topk_ns=ns["topk"],
                            speedup=ns["topk"] / ns["tournament"]))
    return pd.DataFrame(out)


def _train_scores(Q: torch.Tensor, D: torch.Tensor, pooling: Pooling) -> None:
    Q_, D_ = Q.detach().requires_grad_(True), D.detach().requires_grad_(True)
    score_matrix(Q_, D_, pooling).sum().backward()


def per_block_injection(task: RealTask, pooling: str | Pooling, injected: torch.Tensor) -> torch.Tensor:
    """The ragged injection before the one-pass sweep (the baseline): each length-sorted block scored by core
    ``score_with_injection`` with a one-patch placeholder document marked gold for every query, which pools the
    block's clean scores again (gold entries) beside the merged ones."""
    p, (Q, qm) = parse_pooling(pooling), pad(list(task.queries))
    out = torch.empty(len(task.queries), len(task.documents))
    placeholder, summary, R = torch.zeros(1, Q.shape[-1]), injected_summary(Q, p, injected), relevance(task)
    for idx in ragged_blocks(torch.tensor([len(x) for x in task.documents]), Q.shape[0] * Q.shape[1]):
        D, dm = pad([task.documents[int(i)] for i in idx] + [placeholder])
        rel = torch.cat([R[:, idx], torch.ones(len(Q), 1, dtype=torch.bool)], dim=1)
        out[:, idx] = score_with_injection(Q, D, p, injected, rel, qm, dm, summary=summary)[:, :-1]
    return out


def sweep_rows(runs: int, Nq: int = 32, Nd: int = 150, d: int = 128, Ks: Sequence[int] = (25, 100, 400),
               poolings: Sequence[str] = ("maxsim", "topk:4", "softmax:0.1")) -> pd.DataFrame:
    """An injection sweep (poolings x spikes and Gaussian patches x Ks) over a ragged corpus of unit vectors
    (queries of 8-39 tokens, documents of 4-199 patches), three ways: ``per block`` (``per_block_injection``),
    ``per job`` (``injection_scores`` for each job) and ``one pass`` (``injection_scores_many``).
    Median and min seconds for the whole sweep (seconds per call: ``make bench`` times one call after a warm-up);
    ``x_one_pass`` = time / one pass."""
    g = torch.Generator().manual_seed(5)
    lengths = lambda lo, hi, n: torch.randint(lo, hi, (n,), generator=g).tolist()  # noqa: E731
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)  # noqa: E731
    task = RealTask("bench", [unit(t) for t in lengths(8, 40, Nq)], [unit(m) for m in lengths(4, 200, Nd)],
                    torch.randperm(Nd, generator=g)[:Nq], [f"q{i}" for i in range(Nq)], [f"d{j}" for j in range(Nd)])
    Q, qm = pad(list(task.queries))
    patches = {"spike": spike_patches(Q, max(Ks), spike_size=4, q_mask=qm, generator=g),
               "gaussian": gaussian_patches(Nq, max(Ks), d, generator=g)}
    jobs = [(p, patches[kind][:, :K]) for kind in patches for K in Ks for p in poolings]
    ways = {"per block": lambda: [per_block_injection(task, p, x) for p, x in jobs],
            "per job": lambda: [injection_scores(task, p, x) for p, x in jobs],
            "one pass": lambda: injection_scores_many(task, jobs)}
    rows = [dict(way=w, jobs=len(jobs), Nq=Nq, Nd=Nd, d=d, patches=sum(map(len, task.documents)),
                 **dict(zip(("median_s", "min_s"), timed(fn, runs), strict=True))) for w, fn in ways.items()]
    df = pd.DataFrame(rows)
    return df.assign(x_one_pass=df.median_s / df.median_s.iloc[-1])


def pooling_rows(
    poolings: Sequence[str | Pooling],
    T: int = 32,
    N: int = 200,
    M: int = 256,
    d: int = 128,
    Nq: int = 4,
    K: int = 64,
    runs: int = 3,
    device: str = "cpu",
) -> pd.DataFrame:
    """Any pooling (a spec or a ``Pooling`` object, registered or not) on the three paths scoring takes:
    ``score`` (score_matrix without gradient), ``train`` (forward and backward) and ``inject``
    (score_with_injection with K spikes per query) for queries [Nq, T, d] against a corpus [N, M, d].
    One row per pooling and path: median and min milliseconds over ``runs`` timed calls after a warm-up."""
    D = unit_vectors((N, M, d), seed=1, device=device)
    Q = unit_vectors((Nq, T, d), seed=2, device=device)
    spikes = spike_patches(Q, K, spike_size=min(4, T), generator=torch.Generator().manual_seed(3))
    gold = torch.arange(Nq, device=device) % N
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for p in map(parse_pooling, poolings):
        clean = score_matrix(Q, D, p)
        paths = {"score": partial(score_matrix, Q, D, p), "train": partial(_train_scores, Q, D, p),
                 "inject": partial(score_with_injection, Q, D, p, spikes, gold, clean_scores=clean)}
        for path, fn in paths.items():
            med, best = timed(fn, runs, sync)
            rows.append(dict(pooling=p.label, spec=p.spec, path=path, T=T, N=N, M=M, d=d, Nq=Nq, K=K,
                             median_ms=1e3 * med, min_ms=1e3 * best))
    return pd.DataFrame(rows)


def _evaluations(epochs: int, every: int) -> int:
    """Evaluations of a training run (``train_stack`` records epoch 0, every ``every`` epochs and the last)."""
    return 1 + len({e for e in range(1, epochs + 1) if e % every == 0 or e == epochs})


def grid_rows(lengths=(32, 64, 128, 256), epochs: int = 100, device: str = "cpu",
              budget_s: float | None = None) -> pd.DataFrame:
    """The paper-profile main grid trained for real on ``device``: one stack (3 poolings x 5 seeds) per length,
    ``epochs`` epochs each (the profile's 100 by default), timed. A stack that would not fit in what is left of
    ``budget_s`` (projected from the previous stack) runs fewer epochs. ``seconds_full`` is the stack at the
    profile's epochs: measured when it ran them, else the run's time plus the missing epochs and evaluations,
    priced by one more evaluation timed on the trained stack (``eval_s``) and the rest of the time per epoch."""
    from spikehijack import profiles
    from spikehijack.runner import train
    from spikehijack.runner.groups import grid_configs, group, world_of

    grid = profiles.get("paper").synthetic.grid
    full, every = grid.train.epochs, grid.train.eval_every
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    out, tables, spent = [], [], 0.0
    for n, cfg in enumerate(grid_configs(grid, lengths)):
        run_epochs = epochs
        if budget_s is not None and out:
            per_epoch = out[-1]["seconds_full"] / full
            run_epochs = max(2, min(epochs, int((budget_s - spent) / (per_epoch * (len(lengths) - n)))))
        g = group({**cfg, "epochs": run_epochs})
        worlds = {s: world_of(cfg, s) for s in g.seeds}
        pairs = g.runs
        sync()
        t0 = time.perf_counter()
        table, enc = train.train_stack([worlds[s] for _, s in pairs], [p for p, _ in pairs], [s for _, s in pairs],
                                       g.train, device, progress=False)
        sync()
        seconds = time.perf_counter() - t0
        tables.append(table.assign(length=cfg["length"], epochs=run_epochs))
        row = dict(device=device, M=cfg["length"], runs=len(pairs), epochs=run_epochs, seconds=seconds,
                   eval_s=float("nan"), seconds_full=seconds, estimated=run_epochs != full)
        if run_epochs != full:
            w, dev = worlds[g.seeds[0]], enc.weights[0].device
            stack = [worlds[s] for _, s in pairs]
            eq, ed = (torch.stack(x).to(dev) for x in ([v.eval.queries for v in stack],
                                                         [v.eval.corpus()[0] for v in stack]))
            xq, xp = (torch.stack(x)[:, : g.train.gini_pairs].to(dev) for x in (
                [v.train.queries for v in stack], [v.train.positives for v in stack]))
            t1 = time.perf_counter()
            train.evaluate_stack(enc, eq.to(enc.weights[0].dtype), ed.to(enc.weights[0].dtype), w.eval.corpus()[1],
                                 [p for p, _ in pairs])
            train.gini_stack(enc, xq.to(enc.weights[0].dtype), xp.to(enc.weights[0].dtype), [p for p, _ in pairs],
                             g.train.batch_size)
            sync()
            row["eval_s"] = ev = time.perf_counter() - t1
            n_run, n_full = _evaluations(run_epochs, every), _evaluations(full, every)
            per_epoch = max(0.0, seconds - n_run * ev) / run_epochs
            row["seconds_full"] = n_full * ev + full * per_epoch
        spent += seconds
        out.append(row)
        print(f"  grid M={cfg['length']}: {seconds:.1f} s for {run_epochs} epochs "
              f"({row['seconds_full']:.1f} s for {full})", flush=True)
    df = pd.DataFrame(out)
    print(f"  paper main grid on {device}: {df.seconds_full.sum():.0f} s for {full} epochs"
          f"{' (partly estimated from fewer epochs)' if df.estimated.any() else ''}")
    return df, pd.concat(tables, ignore_index=True)


#: The committed paper-profile grid (CPU, float32) that a rerun elsewhere is compared with.
PAPER_GRID = io.REPO_ROOT / io.REPORTS["paper"] / "tables" / "synthetic_training_lengths.csv"
#: How far a stack's seed-mean may move on another device: trained float32 runs diverge (their numbers are
#: statistical, not bit-stable); 5 seeds of Recall@1 on 512 queries have a standard error near 0.01.
AGREEMENT = {"recall@1": 0.03, "gini_pair_mean": 0.01, "gini_infonce_mean": 0.01}


def grid_agreement(runs: pd.DataFrame, committed: pd.DataFrame) -> pd.DataFrame:
    """Final-epoch seed means per (length, pooling) of a grid rerun (full-epoch stacks only) against the
    committed table: one row per length, pooling and metric with both means and |difference|."""
    key = ["length", "pooling", "metric"]

    def final_means(df: pd.DataFrame) -> pd.Series:
        df = df[df.metric.isin(list(AGREEMENT)) & (df.epoch == df.epoch.max())]
        return df.groupby(key).value.mean()

    full = runs[runs.epochs == committed.epoch.max()]
    if full.empty:
        return pd.DataFrame(columns=[*key, "here", "committed", "abs_diff", "limit", "passed"])
    here = pd.concat([final_means(g) for _, g in full.groupby("length")])
    ref = final_means(committed)
    out = pd.DataFrame({"here": here, "committed": ref.reindex(here.index)}).dropna().reset_index()
    out["abs_diff"] = (out.here - out.committed).abs()
    out["limit"] = out.metric.map(AGREEMENT)
    out["passed"] = out.abs_diff <= out.limit
    return out


def targets(df: pd.DataFrame) -> pd.DataFrame:
    """The issue's CPU targets, one row per corpus shape and batch."""
    rows = []
    for key, g in df[df.device == "cpu"].groupby(["T", "N", "M", "d", "Nq"]):
        t = g.set_index("contender").median_ms
        row = dict(zip(["T", "N", "M", "d", "Nq"], key, strict=True))
        row["maxsim_speedup_vs_maxsim_cpu"] = t["maxsim-cpu"] / t["ours maxsim"]
        row["topk_over_maxsim"] = t["ours topk:4"] / t["ours maxsim"]
        row["softmax_over_maxsim"] = t["ours softmax:0.1"] / t["ours maxsim"]
        row["met"] = bool(row["maxsim_speedup_vs_maxsim_cpu"] >= 1.0 and row["topk_over_maxsim"] <= 1.5
                          and row["softmax_over_maxsim"] <= 1.5)
        rows.append(row)
    return pd.DataFrame(rows)


def cuda_targets(df: pd.DataFrame) -> pd.DataFrame:
    """The issue's GPU targets, one row each: target, shape, measured ratio or seconds, limit, pass."""
    t = df[df.device == "cuda"].set_index(["dtype", "T", "N", "M", "d", "Nq", "contender"]).median_ms
    rows = []

    def add(target: str, shape: str, measured: float, limit: float, at_most: bool = True) -> None:
        ok = measured <= limit if at_most else measured >= limit
        rows.append(dict(target=target, shape=shape, measured=round(measured, 3),
                         limit=("<= " if at_most else ">= ") + f"{limit:g}", passed=bool(ok)))

    for (dtype, T, N, M, d, Nq), g in t.groupby(level=[0, 1, 2, 3, 4, 5]):
        g = g.droplevel([0, 1, 2, 3, 4, 5])
        if "fused maxsim" not in g:
            continue
        shape = f"{dtype} T={T} N={N} M={M} d={d} Nq={Nq}"
        if Nq > 1:
            add("fused MaxSim / bare matmul", shape, g["fused maxsim"] / g["bare matmul"], 1.2)
        else:
            add("fused MaxSim / einsum+amax", shape, g["fused maxsim"] / g["einsum+amax"], 1.0)
        for spec in POOLINGS[1:]:
            add(f"fused {spec} / fused MaxSim", shape, g[f"fused {spec}"] / g["fused maxsim"], 1.5)
        if dtype == "bfloat16" and Nq > 1 and ("float32", T, N, M, d, Nq, "fused maxsim") in t.index:
            for spec in POOLINGS:
                fp32 = t[("float32", T, N, M, d, Nq, f"fused {spec}")]
                add(f"fused {spec}: float32 / bfloat16 time", shape, fp32 / g[f"fused {spec}"], 1.5, at_most=False)
    return pd.DataFrame(rows)


def show(title: str, df: pd.DataFrame, path) -> None:
    io.write_csv(df, path)
    print(f"\n== {title} ({path})")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny corpora, 3 runs (< 30 s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=None, help="timed runs per contender (default 7; quick 3)")
    ap.add_argument("--sections", default="corpus,memory,train,select,poolings,sweep,grid,cuda")
    ap.add_argument("--batches", default=None, help="query batch sizes, comma-separated (default 1,64; quick 1,8)")
    ap.add_argument("--out", default=str(OUT), help="folder for the CSV tables (default build/bench)")
    ap.add_argument("--device", default="auto", help="device of the grid section (auto: cuda when available)")
    ap.add_argument("--grid-epochs", type=int, default=None, help="epochs per grid stack (default 100; quick 2)")
    ap.add_argument("--grid-lengths", default=None, help="grid lengths, comma-separated (default 32,64,128,256)")
    ap.add_argument("--grid-budget", type=float, default=None, help="seconds the grid may take (then scaled)")
    ap.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))  # maxsim-cpu's thread pool, read on import
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(*json.loads(args.memory_probe))))
        return 0
    runs = args.runs or (3 if args.quick else 7)
    out = Path(args.out)
    sections = set(args.sections.split(","))
    corpora = [(T, N // 20, M, d) for T, N, M, d in CORPORA] if args.quick else CORPORA
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [1, 8] if args.quick else [1, 64]
    print(f"torch {torch.__version__}, {args.threads} threads, float32, {runs} timed runs after a warm-up, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (above {args.threads}: timings contended)")
    if "corpus" in sections:
        df = corpus_rows(corpora, batches, runs)
        show("corpus: time per call (x_* = time ratio, < 1 is faster)", df, out / "scoring.csv")
        show("targets: MaxSim >= 1.0x maxsim-cpu throughput; Top-k, softmax <= 1.5x our MaxSim time",
             targets(df), out / "targets.csv")
    if "memory" in sections:
        show("memory: peak extra RSS of score_matrix (maxsim), 256 patches x 128 dims, T = 32",
             memory_rows(1_000 if args.quick else 20_000, batches[-1], args.threads, args.quick), out / "memory.csv")
    if "train" in sections:
        show("train: one InfoNCE step, forward + backward + Adam (B = 64, T = 16, d = 16)",
             train_rows([32, 128] if args.quick else [32, 64, 128, 256], runs), out / "train.csv")
    if "select" in sections:
        show("select: mean of the top k per row in one cache-sized block (speedup = topk / kernel)",
             selection_rows(runs, (32, 256) if args.quick else (32, 64, 128, 256)), out / "select.csv")
    if "poolings" in sections:
        size = dict(T=16, N=40, M=64, Nq=2, K=16) if args.quick else {}
        show("poolings: every pooling on score_matrix (score, train = forward + backward) and score_with_injection",
             pooling_rows(POOLINGS + ["mean"] + robust_poolings(), runs=runs, **size), out / "poolings.csv")
    if "sweep" in sections:
        show("sweep: an injection sweep over a ragged corpus (x_one_pass = time / one corpus pass)",
             sweep_rows(1, **(dict(Nq=8, Nd=40, Ks=(25,)) if args.quick else {})), out / "sweep.csv")
    if "grid" in sections:
        device = str(resolve_device(args.device))
        lengths = [int(x) for x in args.grid_lengths.split(",")] if args.grid_lengths else (
            [32] if args.quick else [32, 64, 128, 256])
        grid, runs = grid_rows(lengths, args.grid_epochs or (2 if args.quick else 100), device, args.grid_budget)
        show(f"grid: the paper-profile main grid on {device}, one stack of 3 poolings x 5 seeds per length", grid,
             out / "grid.csv")
        io.write_csv(runs, out / "grid_runs.csv")
        if PAPER_GRID.exists():
            show("grid agreement: final-epoch seed means here vs the committed paper profile (full-epoch stacks)",
                 grid_agreement(runs, pd.read_csv(PAPER_GRID)), out / "grid_agreement.csv")
    if "cuda" in sections and torch.cuda.is_available():
        df = pd.concat([corpus_rows(corpora, batches, runs, "cuda", dt) for dt in (torch.float32, torch.bfloat16)])
        show("cuda: time per call (x_matmul = time / bare matmul)", df, out / "cuda.csv")
        show("cuda targets (the grid's are in grid.csv and grid_agreement.csv)", cuda_targets(df),
             out / "cuda_targets.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
