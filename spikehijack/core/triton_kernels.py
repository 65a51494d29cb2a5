"""Triton kernels of the fused late-interaction scores; ``core.fused`` launches them, nothing else imports this.

Each program of ``fwd`` holds a block of query-token rows q [BLOCK_R, d] of one run and walks one document's
patches in blocks: S = q D_blk^T [BLOCK_R, BLOCK_M] lives in registers only, masked patches become -inf, and the
pooling state is updated per block. No [docs, tokens, patches] tensor is ever written to memory.

* ``KIND == TOPK`` (MaxSim is K = 1): a running k-best per row, ``vals`` / ``idx`` [BLOCK_R, KP] (KP = K rounded
  up to a power of two; the padding slots hold +inf and are never replaced). A block enters by passes: each pass
  takes every row's block maximum (its first index on ties) and puts it in place of the row's current minimum
  when larger; passes stop once no row's block maximum beats its k-th best, at most K passes.
* ``KIND == SOFTMAX``: flash-style running max ``m``, Z = sum_j e^{(S_j - m) / tau} and N = sum_j e^{..} S_j;
  phi = N / Z.

The backward pair routes g = dL/dphi [G, N, R] into the inputs with dS = g dphi/dS, which is one-hot / 1/k on
the kept indices (Top-k) or w (1 + (S - phi) / tau) recomputed from the saved (m, Z) (softmax):
``bwd_docs`` writes dD (one program per patch block of a document, over all rows) and ``bwd_rows`` writes
partial dQ sums over a slice of the documents (gathering the k kept patches for Top-k). Both are deterministic
(no atomics). Similarities accumulate in float32 for float32, bfloat16 and float16 inputs.

Importing this module does not need Triton (the CPU test suite collects its doctests); the kernels only exist
where Triton is installed.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU install: core.fused never calls in here
    triton = tl = None

#: KIND of the pooling a kernel computes.
TOPK, SOFTMAX = 0, 1


def _jit(fn):
    return triton.jit(fn) if triton is not None else fn


@_jit
def _load_rows(ptr, offs_r, offs_k, R, d, stride_r, WIDEN: tl.constexpr):
    """A [BLOCK_R, BLOCK_D] tile of a row-major [R, d] matrix (zeros outside), float32 when ``WIDEN`` (the
    interpreter, whose bfloat16 ``tl.dot`` is wrong: products of bfloat16 values are exact in float32)."""
    x = tl.load(ptr + offs_r[:, None] * stride_r + offs_k[None, :],
                mask=(offs_r < R)[:, None] & (offs_k < d)[None, :], other=0.0)
    return x.to(tl.float32) if WIDEN else x


@_jit
def _similarities(q, d_base, mask_base, offs_m, offs_k, M, d, stride_m, HAS_MASK: tl.constexpr, PREC: tl.constexpr,
                 WIDEN: tl.constexpr):
    """(S [BLOCK_R, BLOCK_M] float32 with -inf on masked patches, the patch tile, valid [BLOCK_M])."""
    dblk = _load_rows(d_base, offs_m, offs_k, M, d, stride_m, WIDEN)
    s = tl.dot(q, tl.trans(dblk), input_precision=PREC)
    valid = offs_m < M
    if HAS_MASK:
        valid = valid & (tl.load(mask_base + offs_m, mask=offs_m < M, other=0) != 0)
    return tl.where(valid[None, :], s, float("-inf")), dblk, valid


@_jit
def _topk_update(s, offs_m, vals, idx, K: tl.constexpr, KP: tl.constexpr):
    """Merge a block S [BLOCK_R, BLOCK_M] into the running k-best (vals, idx) [BLOCK_R, KP] of every row."""
    slot = tl.arange(0, KP)[None, :]
    vmin = tl.min(vals, axis=1)
    bm = tl.max(s, axis=1)
    go = tl.max((bm > vmin).to(tl.int32), axis=0)
    p = 0
    while (p < K) & (go > 0):
        first = tl.min(tl.where(s == bm[:, None], offs_m[None, :], 2147483647), axis=1)
        weakest = tl.min(tl.where(vals == vmin[:, None], slot, KP), axis=1)
        put = (bm > vmin)[:, None] & (slot == weakest[:, None])
        vals = tl.where(put, bm[:, None], vals)
        idx = tl.where(put, first[:, None], idx)
        s = tl.where(offs_m[None, :] == first[:, None], float("-inf"), s)
        vmin = tl.min(vals, axis=1)
        bm = tl.max(s, axis=1)
        go = tl.max((bm > vmin).to(tl.int32), axis=0)
        p += 1
    return vals, idx


@_jit
def fwd(q_ptr, d_ptr, mask_ptr, phi_ptr, idx_ptr, mx_ptr, z_ptr,
        R, M, d, N, sq_g, sq_r, sd_g, sd_n, sd_m, sm_g, sm_n, scale,
        KIND: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, HAS_MASK: tl.constexpr, PREC: tl.constexpr,
        WIDEN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """phi [G, N, R] (and idx [G, N, R, KP] or mx, z [G, N, R]); grid (cdiv(R, BLOCK_R) * N, G), rows fastest."""
    n_rb = tl.cdiv(R, BLOCK_R)
    pid_r, pid_n, pid_g = tl.program_id(0) % n_rb, tl.program_id(0) // n_rb, tl.program_id(1)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr + pid_g * sq_g, offs_r, offs_k, R, d, sq_r, WIDEN)
    d_base = d_ptr + pid_g * sd_g + pid_n * sd_n
    mask_base = mask_ptr + pid_g * sm_g + pid_n * sm_n
    out = (pid_g * N + pid_n) * R + offs_r  # into [G, N, R]
    rows = offs_r < R
    if KIND == 0:
        slot = tl.arange(0, KP)[None, :]
        vals = tl.where(slot < K, float("-inf"), float("inf")) + tl.zeros([BLOCK_R, KP], tl.float32)
        idx = tl.full([BLOCK_R, KP], -1, tl.int32)
        for j0 in range(0, M, BLOCK_M):
            offs_m = j0 + tl.arange(0, BLOCK_M)
            s, _, _ = _similarities(q, d_base, mask_base, offs_m, offs_k, M, d, sd_m, HAS_MASK, PREC, WIDEN)
            vals, idx = _topk_update(s, offs_m, vals, idx, K, KP)
        take = (slot < K) & (vals > float("-inf"))
        count = tl.maximum(tl.sum(take.to(tl.float32), axis=1), 1.0)
        tl.store(phi_ptr + out, tl.sum(tl.where(take, vals, 0.0), axis=1) / count, mask=rows)
        tl.store(idx_ptr + out[:, None] * KP + slot, idx, mask=rows[:, None])
    else:
        m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
        z_i = tl.zeros([BLOCK_R], tl.float32)
        n_i = tl.zeros([BLOCK_R], tl.float32)
        for j0 in range(0, M, BLOCK_M):
            offs_m = j0 + tl.arange(0, BLOCK_M)
            s, _, valid = _similarities(q, d_base, mask_base, offs_m, offs_k, M, d, sd_m, HAS_MASK, PREC, WIDEN)
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2((m_i - m_safe) * scale)
            e = tl.exp2((s - m_safe[:, None]) * scale)
            z_i = z_i * alpha + tl.sum(e, axis=1)
            n_i = n_i * alpha + tl.sum(e * tl.where(valid[None, :], s, 0.0), axis=1)
            m_i = m_new
        tl.store(phi_ptr + out, n_i / z_i, mask=rows)
        tl.store(mx_ptr + out, m_i, mask=rows)
        tl.store(z_ptr + out, z_i, mask=rows)


@_jit
def _routed(s, valid, offs_m, out, rows, g_ptr, phi_ptr, idx_ptr, mx_ptr, z_ptr, scale, inv_tau,
            KIND: tl.constexpr, KP: tl.constexpr):
    """dS = g dphi/dS for a block [BLOCK_R, BLOCK_M] (float32): 1/k on the kept patches, or softmax-weighted."""
    g = tl.load(g_ptr + out, mask=rows, other=0.0)
    if KIND == 0:
        hit = tl.zeros(s.shape, tl.int32)
        count = tl.zeros(g.shape, tl.float32)
        for kk in tl.static_range(KP):
            col = tl.load(idx_ptr + out * KP + kk, mask=rows, other=-1)
            hit += (offs_m[None, :] == col[:, None]).to(tl.int32)
            count += (col >= 0).to(tl.float32)
        ds = tl.where(hit > 0, (g / tl.maximum(count, 1.0))[:, None], 0.0)
    else:
        mx = tl.load(mx_ptr + out, mask=rows, other=0.0)
        z = tl.load(z_ptr + out, mask=rows, other=1.0)
        phi = tl.load(phi_ptr + out, mask=rows, other=0.0)
        w = tl.exp2((s - tl.where(mx == float("-inf"), 0.0, mx)[:, None]) * scale) / z[:, None]
        ds = g[:, None] * w * (1.0 + (tl.where(valid[None, :], s, 0.0) - phi[:, None]) * inv_tau)
    return ds


@_jit
def bwd_docs(q_ptr, d_ptr, mask_ptr, g_ptr, phi_ptr, idx_ptr, mx_ptr, z_ptr, dd_ptr,
             R, M, d, N, sq_g, sq_r, sd_g, sd_n, sd_m, sm_g, sm_n, scale, inv_tau,
             KIND: tl.constexpr, KP: tl.constexpr, HAS_MASK: tl.constexpr, PREC: tl.constexpr, WIDEN: tl.constexpr,
             BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """dD [G, N, M, d] (contiguous) = sum over rows of dS^T q; grid (cdiv(M, BLOCK_M) * N, G)."""
    n_mb = tl.cdiv(M, BLOCK_M)
    pid_m, pid_n, pid_g = tl.program_id(0) % n_mb, tl.program_id(0) // n_mb, tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_D)
    d_base = d_ptr + pid_g * sd_g + pid_n * sd_n
    mask_base = mask_ptr + pid_g * sm_g + pid_n * sm_n
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        rows = offs_r < R
        q = _load_rows(q_ptr + pid_g * sq_g, offs_r, offs_k, R, d, sq_r, WIDEN)
        if KIND == 0:
            s = tl.zeros([BLOCK_R, BLOCK_M], tl.float32)
            valid = offs_m < M
        else:
            s, _, valid = _similarities(q, d_base, mask_base, offs_m, offs_k, M, d, sd_m, HAS_MASK, PREC, WIDEN)
        ds = _routed(s, valid, offs_m, (pid_g * N + pid_n) * R + offs_r, rows, g_ptr, phi_ptr, idx_ptr, mx_ptr,
                     z_ptr, scale, inv_tau, KIND, KP)
        acc += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    dst = dd_ptr + ((pid_g * N + pid_n) * M + offs_m[:, None]) * d + offs_k[None, :]
    tl.store(dst, acc.to(dd_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_k < d)[None, :])


@_jit
def bwd_rows(q_ptr, d_ptr, mask_ptr, g_ptr, phi_ptr, idx_ptr, mx_ptr, z_ptr, part_ptr,
             R, M, d, N, sq_g, sq_r, sd_g, sd_n, sd_m, sm_g, sm_n, scale, inv_tau, SPLIT,
             KIND: tl.constexpr, KP: tl.constexpr, HAS_MASK: tl.constexpr, PREC: tl.constexpr, WIDEN: tl.constexpr,
             BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Partial dQ [G, SPLIT, R, d] (float32): documents split::SPLIT of each run; grid (cdiv(R, BLOCK_R) * SPLIT, G)."""
    n_rb = tl.cdiv(R, BLOCK_R)
    pid_r, split, pid_g = tl.program_id(0) % n_rb, tl.program_id(0) // n_rb, tl.program_id(1)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_D)
    rows = offs_r < R
    q = _load_rows(q_ptr + pid_g * sq_g, offs_r, offs_k, R, d, sq_r, WIDEN)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for n in range(split, N, SPLIT):
        out = (pid_g * N + n) * R + offs_r
        d_base = d_ptr + pid_g * sd_g + n * sd_n
        if KIND == 0:  # gather the k kept patches of every row
            g = tl.load(g_ptr + out, mask=rows, other=0.0)
            count = tl.zeros([BLOCK_R], tl.float32)
            for kk in tl.static_range(KP):
                count += (tl.load(idx_ptr + out * KP + kk, mask=rows, other=-1) >= 0).to(tl.float32)
            share = g / tl.maximum(count, 1.0)
            for kk in tl.static_range(KP):
                col = tl.load(idx_ptr + out * KP + kk, mask=rows, other=-1)
                kept = col >= 0
                patch = tl.load(d_base + tl.maximum(col, 0)[:, None] * sd_m + offs_k[None, :],
                                mask=kept[:, None] & (offs_k < d)[None, :], other=0.0)
                acc += tl.where(kept, share, 0.0)[:, None] * patch.to(tl.float32)
        else:
            mask_base = mask_ptr + pid_g * sm_g + n * sm_n
            for j0 in range(0, M, BLOCK_M):
                offs_m = j0 + tl.arange(0, BLOCK_M)
                s, dblk, valid = _similarities(q, d_base, mask_base, offs_m, offs_k, M, d, sd_m, HAS_MASK, PREC, WIDEN)
                ds = _routed(s, valid, offs_m, out, rows, g_ptr, phi_ptr, idx_ptr, mx_ptr, z_ptr, scale, inv_tau,
                             KIND, KP)
                acc += tl.dot(ds.to(dblk.dtype), dblk, input_precision=PREC)
    dst = part_ptr + ((pid_g * SPLIT + split) * R + offs_r[:, None]) * d + offs_k[None, :]
    tl.store(dst, acc, mask=rows[:, None] & (offs_k < d)[None, :])
