"""Projection heads for the real benchmark: a linear map 384 -> 128 as ColBERT's, trained with in-batch
InfoNCE on simulated patients of diseases disjoint from the evaluation corpus, under any pooling."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import io
from ..core.checks import check_positive_int
from ..core.metrics import infonce_loss
from ..core.scoring import pad, score_matrix
from ..worlds import hpo as hpo_mod
from .sweeps import run_key


class ProjectionHead(nn.Module):
    """x [..., 384] -> l2-normalised [..., 128]: a linear map as ColBERT's, trained with MaxSim InfoNCE."""

    def __init__(self, in_dim: int = 384, out_dim: int = 128, seed: int = 0):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # orthonormal rows: a random isometry-like start
            w = torch.linalg.qr(torch.randn(in_dim, out_dim, generator=g))[0].T
            self.linear.weight.copy_(w)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x), dim=-1)


def train_head(
    hpo: hpo_mod.HPO,
    encoder,
    diseases: Sequence[str],
    pooling: str = "maxsim",
    out_dim: int = 128,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 2e-3,
    temperature: float = 0.1,
    n_views: int = 4,
    n_gold: int = 5,
    n_noise: int = 2,
    p_imprecise: float = 0.3,
    seed: int = 0,
    progress: bool = False,
) -> tuple[ProjectionHead, pd.DataFrame]:
    """Train a projection head with in-batch InfoNCE on Z_ab = score(q_a, d_b) / temperature.

    ``diseases`` must be disjoint from the evaluation corpus (the caller's job; see ``train_diseases``).
    ``n_views`` simulated patients per disease (seeds seed+1..seed+n_views) are drawn once; each step samples
    ``batch_size`` distinct diseases and one view each. Returns the head and the loss history (step, loss).
    """
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size, minimum=2)
    diseases = list(diseases)
    if len(diseases) < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} training diseases, got {len(diseases)}")
    views = [hpo_mod.simulate_patients(hpo, diseases, n_gold, n_noise, p_imprecise, seed=seed + 1 + v)
             for v in range(n_views)]
    docs = encoder.encode_documents([hpo_mod.disease_phrases(hpo, d) for d in diseases])
    qs = [encoder.encode_queries([list(p.phrases) for p in view]) for view in views]
    head = ProjectionHead(docs[0].shape[-1], out_dim, seed=seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    history = []
    for step in tqdm(range(steps), desc="train head", disable=not progress):
        idx = rng.choice(len(diseases), size=batch_size, replace=False)
        v = rng.integers(n_views, size=batch_size)
        Q, qm = pad([qs[int(vi)][int(i)] for i, vi in zip(idx, v, strict=True)])
        D, dm = pad([docs[int(i)] for i in idx])
        Z = score_matrix(head(Q), head(D), pooling, qm, dm) / temperature
        loss = infonce_loss(Z)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({"step": step, "loss": float(loss.detach())})
    head.eval()
    return head, pd.DataFrame(history)


def save_head(head: ProjectionHead, path: str | Path) -> Path:
    """Write a head's weight [out_dim, in_dim] to an npz file (atomically)."""
    return io.write_npz(path, weight=head.linear.weight.detach().cpu().numpy())


def load_head(path: str | Path) -> ProjectionHead:
    """The ``ProjectionHead`` whose weight ``save_head`` wrote to ``path`` (never unpickles)."""
    w = torch.as_tensor(io.read_npz(path)["weight"])
    head = ProjectionHead(w.shape[1], w.shape[0])
    with torch.no_grad():
        head.linear.weight.copy_(w)
    return head.eval()


def cached_head(cache: str | Path, config: Mapping[str, Any],
                train: Callable[[], tuple[ProjectionHead, pd.DataFrame]]) -> tuple[ProjectionHead, pd.DataFrame]:
    """(head, loss history) of ``train()``, trained once per ``config``: the weight is kept at
    ``cache/<run_key(config)>.npz`` and the history beside it (.csv), both written atomically; a later call with
    the same config loads them, so a change of analysis re-evaluates the same head (the paper profile commits
    its cache, ``io.cache_dir``)."""
    base = Path(cache) / run_key(config)
    npz, csv = base.with_suffix(".npz"), base.with_suffix(".csv")
    if npz.exists() and csv.exists():
        return load_head(npz), pd.read_csv(csv)
    head, history = train()
    Path(cache).mkdir(parents=True, exist_ok=True)
    save_head(head, npz)
    io.write_csv(history, csv)
    return head, history
