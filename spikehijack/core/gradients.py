"""Closed-form gradients of the late-interaction score.

For a pair (q, d): score = sum_i phi(S_i), S_ij = q_i . d_j, so

    d score / d d_j = sum_i J_ij q_i,   J_ij = d phi / d S_ij,

with J one-hot per token for MaxSim, k-sparse (1/k) for Top-k and w_ij (1 + (S_ij - phi_i) / tau) for
softmax pooling. Hence under MaxSim a pair's gradient reaches at most T of the M patches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .pooling import Pooling, parse_pooling
from .scoring import check_queries_documents


def pooling_jacobian(
    Q: Tensor, D: Tensor, pooling: str | Pooling, q_mask: Tensor | None = None, d_mask: Tensor | None = None
) -> Tensor:
    """J [N, T, M] for aligned pairs Q [N, T, d], D [N, M, d]; rows of padded query tokens are zero."""
    p = parse_pooling(pooling)
    check_queries_documents(Q, D, q_mask, d_mask)
    if Q.shape[0] != D.shape[0]:
        raise ValueError(f"Q and D must be aligned pairs, got {Q.shape[0]} queries and {D.shape[0]} documents")
    S = torch.bmm(Q, D.transpose(1, 2))
    J = p.jacobian(S, None if d_mask is None else d_mask.unsqueeze(1))
    if q_mask is not None:
        J = J * q_mask.unsqueeze(-1).to(J.dtype)
    return J


def score_grad_documents(
    Q: Tensor, D: Tensor, pooling: str | Pooling, q_mask: Tensor | None = None, d_mask: Tensor | None = None
) -> Tensor:
    """d score(q_n, d_n) / d d_nj = sum_i J_nij q_ni: aligned pairs -> [N, M, d]."""
    return torch.bmm(pooling_jacobian(Q, D, pooling, q_mask, d_mask).transpose(1, 2), Q)


def score_grad_queries(
    Q: Tensor, D: Tensor, pooling: str | Pooling, q_mask: Tensor | None = None, d_mask: Tensor | None = None
) -> Tensor:
    """d score(q_n, d_n) / d q_ni = sum_j J_nij d_nj: aligned pairs -> [N, T, d]."""
    return torch.bmm(pooling_jacobian(Q, D, pooling, q_mask, d_mask), D)
