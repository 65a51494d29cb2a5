"""The small GPU module: fused late-interaction scores (similarity and pooling in one pass, Triton).

``fused_scores(Q [G, Nq, T, d], D [G, N, M, d], pooling)`` -> [G, Nq, N] scores G independent runs (or one
query batch, G = 1) with the kernels of ``core.triton_kernels``: no similarity block [docs, tokens, patches]
reaches memory, only phi [G, N, Nq * T] and what the backward needs (the k kept indices, or the softmax's max
and normaliser). Differentiable in Q and D (``FusedScores``). Pooled in float32 for float32, bfloat16 and
float16 inputs (float32 products are exact IEEE unless ``torch.backends.cuda.matmul.allow_tf32`` is set, as for
the bare matmul); float64 and other poolings stay on the torch path.

Which poolings fuse is one table, ``FUSABLE`` (exact types: a subclass may pool differently): MaxSim and Top-k
(a running k-best, MaxSim = k 1) and softmax (an online log-sum-exp). ``scoring.score_matrix`` and
``runner.train.stacked_scores`` take ``backend="auto" | "torch" | "triton"``; ``resolve_backend`` says which
runs: "auto" is the fused kernel on CUDA where Triton imports and the case fuses, the torch path otherwise.
Triton is imported only here, only when a fused kernel is asked for: on CUDA, or on CPU tensors through
Triton's interpreter (``TRITON_INTERPRET=1``, for tests).

>>> resolve_backend("auto", "maxsim", torch.zeros(1, 2, 16))  # CPU tensors: the torch path
'torch'
>>> fused_spec("topk:4"), fused_spec("mean")
(Fused(kind=0, k=4, tau=1.0), None)
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import Tensor

from .pooling import MaxSim, Pooling, Softmax, TopK, parse_pooling

BACKENDS = ("auto", "torch", "triton")
#: Input dtypes the kernels take (similarities accumulate in float32).
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Largest embedding dim held in one tile (wider inputs stay on the torch path).
MAX_DIM = 256
#: Streaming multiprocessors assumed when the device does not say (sizes the dQ document split).
FALLBACK_SMS = 132


class Fused(NamedTuple):
    """A pooling as the kernels see it: ``kind`` 0 = mean of the k largest (MaxSim: k = 1), 1 = softmax at tau."""

    kind: int
    k: int = 1
    tau: float = 1.0


#: Exact pooling type -> its fused form.
FUSABLE: dict[type, Callable[[Pooling], Fused]] = {
    MaxSim: lambda p: Fused(0, 1),
    TopK: lambda p: Fused(0, p.k),
    Softmax: lambda p: Fused(1, tau=p.tau),
}


def fused_spec(pooling: str | Pooling) -> Fused | None:
    """The fused form of a pooling, None when it has none."""
    p = parse_pooling(pooling)
    make = FUSABLE.get(type(p))
    return None if make is None else make(p)


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_installed() -> bool:
    """Whether Triton can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def unfusable_reason(pooling: str | Pooling, Q: Tensor, D: Tensor | None = None) -> str | None:
    """Why the fused kernel cannot score this case (None: it can): device, Triton, pooling, dtype, dim."""
    if Q.device.type != "cuda" and not (Q.device.type == "cpu" and interpreting()):
        return f"device {Q.device.type} (the kernels run on CUDA, or on CPU with TRITON_INTERPRET=1)"
    if not triton_installed():
        return "Triton is not installed (pip install 'spikehijack[gpu]')"
    if fused_spec(pooling) is None:
        return f"pooling {parse_pooling(pooling).spec!r} has no fused kernel (fused: maxsim, topk:K, softmax:TAU)"
    if Q.dtype not in FUSED_DTYPES or (D is not None and D.dtype != Q.dtype):
        return f"dtype {Q.dtype}{'' if D is None else ' / ' + str(D.dtype)} (fused: one of float32, bfloat16, float16)"
    if Q.shape[-1] > MAX_DIM:
        return f"embedding dim {Q.shape[-1]} > {MAX_DIM}"
    return None


def resolve_backend(backend: str, pooling: str | Pooling, Q: Tensor, D: Tensor | None = None) -> str:
    """"torch" or "triton" for ``backend`` in ``BACKENDS``: "auto" takes the fused kernel on CUDA when it can,
    "triton" insists (ValueError saying why it cannot)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and Q.device.type != "cuda"):
        return "torch"
    reason = unfusable_reason(pooling, Q, D)
    if reason is None:
        return "triton"
    if backend == "triton":
        raise ValueError(f"backend='triton' cannot score this case: {reason}")
    return "torch"


class Blocks(NamedTuple):
    """Tile sizes (rows of Q, patches of D) and launch options of the kernels."""

    rows: int = 64
    patches: int = 64
    warps: int = 4
    stages: int = 2


def default_blocks(R: int, M: int, device: torch.device) -> Blocks:
    """Small tiles for small problems (and the interpreter), 64 x 64 otherwise."""
    if device.type != "cuda":
        return Blocks(16 if R <= 16 else 32, 16 if M <= 16 else 32, 1, 1)
    return Blocks(32 if R <= 32 else 64, 32 if M <= 32 else 64)


def _precision(dtype: torch.dtype) -> str | None:
    if dtype != torch.float32:
        return None
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 and not interpreting() else "ieee"


def _launch_args(Q: Tensor, D: Tensor, mask: Tensor | None, spec: Fused) -> tuple[list, dict]:
    """Scalar arguments shared by the three kernels (sizes, strides, softmax scales) and their constexprs."""
    G, R, d = Q.shape
    _, N, M, _ = D.shape
    sm = (0, 0) if mask is None else (mask.stride(0), mask.stride(1))
    scale, inv_tau = math.log2(math.e) / spec.tau, 1.0 / spec.tau
    sizes = [R, M, d, N, Q.stride(0), Q.stride(1), D.stride(0), D.stride(1), D.stride(2), *sm]
    meta = dict(KIND=spec.kind, KP=max(1, 1 << (spec.k - 1).bit_length()), HAS_MASK=mask is not None,
                PREC=_precision(Q.dtype), WIDEN=Q.dtype == torch.bfloat16 and interpreting(),
                BLOCK_D=max(16, 1 << (d - 1).bit_length()))
    return sizes + [scale, inv_tau], meta


class FusedScores(torch.autograd.Function):
    """phi [G, N, R] of rows Q [G, R, d] against documents D [G, N, M, d] (mask [G or 1, N, M] uint8 or None)."""

    @staticmethod
    def forward(ctx, Q: Tensor, D: Tensor, mask: Tensor | None, spec: Fused, blocks: Blocks) -> Tensor:
        from . import triton_kernels as tk

        G, R, _ = Q.shape
        _, N, M, _ = D.shape
        args, meta = _launch_args(Q, D, mask, spec)
        phi = torch.empty(G, N, R, dtype=torch.float32, device=Q.device)
        idx = torch.empty(G, N, R, meta["KP"], dtype=torch.int32, device=Q.device) if spec.kind == tk.TOPK else phi
        mx, z = (torch.empty_like(phi), torch.empty_like(phi)) if spec.kind == tk.SOFTMAX else (phi, phi)
        m = phi if mask is None else mask
        with torch.cuda.device(Q.device) if Q.device.type == "cuda" else nullcontext():
            tk.fwd[(triton_grid(R, blocks.rows) * N, G)](
                Q, D, m, phi, idx, mx, z, *args[:-1], K=spec.k, **meta, BLOCK_R=blocks.rows,
                BLOCK_M=blocks.patches, num_warps=blocks.warps, num_stages=blocks.stages)
        ctx.save_for_backward(Q, D, mask, phi, idx, mx, z)
        ctx.spec, ctx.blocks = spec, blocks
        return phi

    @staticmethod
    def backward(ctx, g: Tensor):
        from . import triton_kernels as tk

        Q, D, mask, phi, idx, mx, z = ctx.saved_tensors
        spec, blocks = ctx.spec, ctx.blocks
        G, R, d = Q.shape
        _, N, M, _ = D.shape
        args, meta = _launch_args(Q, D, mask, spec)
        g = g.contiguous().float()
        m = phi if mask is None else mask
        launch = dict(**meta, BLOCK_R=blocks.rows, BLOCK_M=blocks.patches, num_warps=blocks.warps,
                      num_stages=blocks.stages)
        dQ = dD = None
        with torch.cuda.device(Q.device) if Q.device.type == "cuda" else nullcontext():
            if ctx.needs_input_grad[1]:
                dD = torch.empty_like(D)
                tk.bwd_docs[(triton_grid(M, blocks.patches) * N, G)](
                    Q, D, m, g, phi, idx, mx, z, dD, *args, **launch)
            if ctx.needs_input_grad[0]:
                split = document_split(R, N, G, blocks.rows, Q.device)
                part = torch.empty(G, split, R, d, dtype=torch.float32, device=Q.device)
                tk.bwd_rows[(triton_grid(R, blocks.rows) * split, G)](
                    Q, D, m, g, phi, idx, mx, z, part, *args, split, **launch)
                dQ = part.sum(1).to(Q.dtype)
        return dQ, dD, None, None, None


def triton_grid(n: int, block: int) -> int:
    """Programs along one axis: ceil(n / block)."""
    return -(-n // block)


def document_split(R: int, N: int, G: int, block_rows: int, device: torch.device) -> int:
    """Document slices of the dQ kernel: enough programs for about four per multiprocessor, at most N."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else FALLBACK_SMS
    return max(1, min(N, (4 * sms) // max(1, triton_grid(R, block_rows) * G)))


def fused_scores(
    Q: Tensor,
    D: Tensor,
    pooling: str | Pooling,
    q_mask: Tensor | None = None,
    d_mask: Tensor | None = None,
    blocks: Blocks | None = None,
) -> Tensor:
    """Scores of G runs at once: Q [G, Nq, T, d], D [G, N, M, d] -> [G, Nq, N] (float32), by the fused kernels.

    q_mask [G or 1, Nq, T], d_mask [G or 1, N, M] (bool, True = real; every document needs a real patch: callers
    validate, this function does not read tensors back so that CUDA graphs can capture it). Raises ValueError
    when the case does not fuse (``unfusable_reason``) or shapes disagree.
    """
    if Q.ndim != 4 or D.ndim != 4 or Q.shape[0] != D.shape[0] or Q.shape[-1] != D.shape[-1]:
        raise ValueError(f"need Q [G, Nq, T, d] and D [G, N, M, d], got {tuple(Q.shape)} and {tuple(D.shape)}")
    reason = unfusable_reason(pooling, Q, D)
    if reason is not None:
        raise ValueError(f"fused_scores cannot score this case: {reason}")
    G, Nq, T, d = Q.shape
    _, N, M, _ = D.shape
    for name, mask, shape in (("q_mask", q_mask, (Nq, T)), ("d_mask", d_mask, (N, M))):
        if mask is not None and (mask.dtype != torch.bool or mask.ndim != 3 or mask.shape[0] not in (1, G)
                                 or tuple(mask.shape[1:]) != shape):
            raise ValueError(f"{name} must be bool [{G} or 1, {shape[0]}, {shape[1]}], got {mask.dtype} "
                             f"{tuple(mask.shape)}")
    mask = None
    if d_mask is not None:
        mask = d_mask.contiguous().view(torch.uint8)
        if mask.shape[0] == 1 and G > 1:
            mask = mask.expand(G, N, M)  # stride 0 over runs
    blocks = blocks or default_blocks(Nq * T, M, Q.device)
    phi = FusedScores.apply(Q.reshape(G, Nq * T, d).contiguous(), D.contiguous(), mask, fused_spec(pooling), blocks)
    phi = phi.view(G, N, Nq, T)
    if q_mask is not None:
        phi = torch.where(q_mask.view(q_mask.shape[0], 1, Nq, T), phi, torch.zeros((), device=phi.device))
    return phi.sum(-1).transpose(1, 2)
