"""
Flash attention in Triton: forward and backward, causal or not, GQA and MQA, any sequence
length, head dims up to 256, and document masking for packed sequences.

    flash_attn(q, k, v, causal=True, softmax_scale=None, doc_ids=None)
    q: (B, T, Hq, D), k and v: (B, T, Hkv, D), Hq % Hkv == 0  ->  (B, T, Hq, D)

How it works (FlashAttention-2, Dao 2023):
- forward: a program owns BLOCK_M query rows of one head and streams the keys in blocks of
  BLOCK_N, keeping a running max and a running sum (online softmax), so the T x T scores are
  never stored. It saves the log-sum-exp of each row for the backward.
- backward: delta = rowsum(dO * O) first; then one program per key block computes dK and dV
  by streaming the queries, and one program per query block computes dQ by streaming the
  keys. Nothing is summed with atomics, so gradients are bitwise the same from run to run;
  under GQA a key block's program walks the query heads of its group in a fixed order.
- scores live in base 2 (s = q.k * scale * log2 e), so each exponential is one exp2.
- the causal loop is split: blocks wholly below the diagonal run without any mask, only the
  diagonal blocks (and the ragged end of the sequence) pay for one.
- head dims that are not a power of two (96, 192) are padded to the next one in registers
  by masked loads; tensors keep their (B, T, H, D) layout and any strides (no copies).
- document masking: doc_ids (B, T); a document is a run of equal ids, and a token sees only
  keys of its own run. The kernels get each token's run as [start, end) and skip whole
  blocks outside it.
- block sizes come from a fixed table, not from autotuning: autotuning picks by timing,
  timing differs between runs, and a different block size sums in a different order, which
  would break the bitwise replay of a run.

On CPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1 set before triton is
imported), which the tests use; its tl.dot on bf16 operands returns garbage (triton 3.9), so
there bf16 operands are multiplied in fp32.
"""
import math
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _dot(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # interpreter only: its bf16 dot is broken
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_ptr, v_ptr, skt, svt, lo, hi, rows, seg_lo, seg_hi, T, qk_scale,
               D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
               CAUSAL: tl.constexpr, DOC: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    offs_n, offs_d = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        kv_mask = (cols[:, None] < T) & (offs_d[None, :] < D)
        k = tl.load(k_ptr + cols[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
        s = _dot(q, tl.trans(k), tl.zeros([q.shape[0], BLOCK_N], tl.float32),
                 PREC, UPCAST) * qk_scale
        if MASK:  # the diagonal and the ragged end
            ok = cols[None, :] < T
            if CAUSAL:
                ok = ok & (cols[None, :] <= rows[:, None])
            s = tl.where(ok, s, float("-inf"))
        if DOC:
            s = tl.where((cols[None, :] >= seg_lo[:, None]) & (cols[None, :] < seg_hi[:, None]),
                         s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if DOC:  # a row may have seen no key of its document yet: keep exp2 away from -inf - -inf
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_use = m_new
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + cols[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], PREC, UPCAST)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _key_range(SEG_LO, SEG_HI, b64, rows, m0, T, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr, DOC: tl.constexpr):
    """The keys a block of queries may see, [lo, hi), of which those below mid are visible to
    every row (documents aside: no causal or length mask there); and each row's document."""
    lo, hi = 0, T
    if CAUSAL:
        hi = tl.minimum(T, m0 + BLOCK_M)
    seg_lo, seg_hi = rows, rows
    if DOC:
        seg_lo = tl.load(SEG_LO + b64 * T + rows, mask=rows < T, other=0)
        seg_hi = tl.load(SEG_HI + b64 * T + rows, mask=rows < T, other=0)
        lo = tl.load(SEG_LO + b64 * T + m0) // BLOCK_N * BLOCK_N
        hi = tl.minimum(hi, tl.load(SEG_HI + b64 * T + tl.minimum(T, m0 + BLOCK_M) - 1))
    if CAUSAL:
        mid = m0  # a multiple of BLOCK_N, as BLOCK_M is
    else:
        mid = T // BLOCK_N * BLOCK_N
    mid = lo + tl.maximum(0, tl.minimum(mid, hi) - lo) // BLOCK_N * BLOCK_N
    return lo, mid, hi, seg_lo, seg_hi


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, SEG_LO, SEG_HI,
                sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
                T, H, GROUP, qk_scale,
                D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DOC: tl.constexpr,
                PREC: tl.constexpr, UPCAST: tl.constexpr):
    m0 = tl.program_id(0) * BLOCK_M
    b, h = tl.program_id(1) // H, tl.program_id(1) % H
    b64, hk = b.to(tl.int64), h // GROUP
    rows, offs_d = m0 + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)
    q = tl.load(Q + b64 * sqb + h * sqh + rows[:, None] * sqt + offs_d[None, :],
                mask=(rows[:, None] < T) & (offs_d[None, :] < D), other=0.0)
    k_ptr, v_ptr = K + b64 * skb + hk * skh, V + b64 * svb + hk * svh
    lo, mid, hi, seg_lo, seg_hi = _key_range(SEG_LO, SEG_HI, b64, rows, m0, T, BLOCK_M, BLOCK_N,
                                             CAUSAL, DOC)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptr, v_ptr, skt, svt, lo, mid,
                               rows, seg_lo, seg_hi, T, qk_scale,
                               D, BLOCK_D, BLOCK_N, False, CAUSAL, DOC, PREC, UPCAST)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_ptr, v_ptr, skt, svt, mid, hi,
                               rows, seg_lo, seg_hi, T, qk_scale,
                               D, BLOCK_D, BLOCK_N, True, CAUSAL, DOC, PREC, UPCAST)
    if DOC:  # rows past T saw nothing: keep 0/0 out of the (discarded) result
        l_i = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_i[:, None]
    tl.store(O + b64 * sob + h * soh + rows[:, None] * sot + offs_d[None, :],
             o.to(O.dtype.element_ty), mask=(rows[:, None] < T) & (offs_d[None, :] < D))
    tl.store(LSE + (b64 * H + h) * T + rows, m_i + tl.math.log2(l_i), mask=rows < T)  # base 2


@triton.jit
def _bwd_delta(O, DO, DELTA, sob, sot, soh, sdb, sdt, sdh, T, H,
               D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    rows, offs_d = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)
    b, h = tl.program_id(1) // H, tl.program_id(1) % H
    b64 = b.to(tl.int64)
    mask = (rows[:, None] < T) & (offs_d[None, :] < D)
    o = tl.load(O + b64 * sob + h * soh + rows[:, None] * sot + offs_d[None, :],
                mask=mask, other=0.0)
    do = tl.load(DO + b64 * sdb + h * sdh + rows[:, None] * sdt + offs_d[None, :],
                 mask=mask, other=0.0)
    tl.store(DELTA + (b64 * H + h) * T + rows, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1),
             mask=rows < T)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, sqt, sdt, lo, hi,
                cols, seg_lo, seg_hi, T, qk_scale,
                D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, MASK: tl.constexpr,
                DOC: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    # queries past T load as zeros with lse = delta = 0, which adds exactly zero to dK and dV
    offs_m, offs_d = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)
    for start in range(lo, hi, BLOCK_M):
        rows = start + offs_m
        mask = (rows[:, None] < T) & (offs_d[None, :] < D)
        q = tl.load(q_ptr + rows[:, None] * sqt + offs_d[None, :], mask=mask, other=0.0)
        do = tl.load(do_ptr + rows[:, None] * sdt + offs_d[None, :], mask=mask, other=0.0)
        lse = tl.load(lse_ptr + rows, mask=rows < T, other=0.0)
        delta = tl.load(delta_ptr + rows, mask=rows < T, other=0.0)
        # transposed, (keys, queries), so that P^T and dS^T need no transpose before their dots
        pT = tl.math.exp2(_dot(k, tl.trans(q), tl.zeros([k.shape[0], BLOCK_M], tl.float32),
                               PREC, UPCAST)
                          * qk_scale - lse[None, :])
        if MASK:  # causal diagonal
            pT = tl.where(rows[None, :] >= cols[:, None], pT, 0.0)
        if DOC:
            pT = tl.where((rows[None, :] >= seg_lo[:, None]) & (rows[None, :] < seg_hi[:, None]),
                          pT, 0.0)
        dv = _dot(pT.to(do.dtype), do, dv, PREC, UPCAST)
        dpT = _dot(v, tl.trans(do), tl.zeros([k.shape[0], BLOCK_M], tl.float32), PREC, UPCAST)
        dsT = pT * (dpT - delta[None, :])
        dk = _dot(dsT.to(q.dtype), q, dk, PREC, UPCAST)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, SEG_LO, SEG_HI,
                     sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh, sgb, sgt, sgh,
                     T, H, HK, GROUP, sm_scale, qk_scale,
                     D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DOC: tl.constexpr,
                     PREC: tl.constexpr, UPCAST: tl.constexpr):
    n0 = tl.program_id(0) * BLOCK_N
    b, hk = tl.program_id(1) // HK, tl.program_id(1) % HK
    b64 = b.to(tl.int64)
    cols, offs_d = n0 + tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    kv_mask = (cols[:, None] < T) & (offs_d[None, :] < D)
    k = tl.load(K + b64 * skb + hk * skh + cols[:, None] * skt + offs_d[None, :],
                mask=kv_mask, other=0.0)
    v = tl.load(V + b64 * svb + hk * svh + cols[:, None] * svt + offs_d[None, :],
                mask=kv_mask, other=0.0)
    # the queries that may see this block of keys: [lo, hi), the first ones through the causal mask
    lo, hi = 0, T
    if CAUSAL:
        lo = n0  # a multiple of BLOCK_M, as BLOCK_N is
    seg_lo, seg_hi = cols, cols
    if DOC:
        seg_lo = tl.load(SEG_LO + b64 * T + cols, mask=cols < T, other=0)
        seg_hi = tl.load(SEG_HI + b64 * T + cols, mask=cols < T, other=0)
        lo = tl.maximum(lo, tl.load(SEG_LO + b64 * T + n0) // BLOCK_M * BLOCK_M)
        hi = tl.load(SEG_HI + b64 * T + tl.minimum(T, n0 + BLOCK_N) - 1)
    if CAUSAL:
        mid = tl.maximum(lo, tl.minimum(hi, n0 + BLOCK_N))
    else:
        mid = lo
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(GROUP):  # the query heads sharing this key head, in a fixed order
        h = hk * GROUP + g
        q_ptr, do_ptr = Q + b64 * sqb + h * sqh, DO + b64 * sdb + h * sdh
        lse_ptr, delta_ptr = LSE + (b64 * H + h) * T, DELTA + (b64 * H + h) * T
        dk, dv = _dkdv_inner(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, sqt, sdt, lo, mid,
                             cols, seg_lo, seg_hi, T, qk_scale,
                             D, BLOCK_D, BLOCK_M, True, DOC, PREC, UPCAST)
        dk, dv = _dkdv_inner(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, sqt, sdt, mid, hi,
                             cols, seg_lo, seg_hi, T, qk_scale,
                             D, BLOCK_D, BLOCK_M, False, DOC, PREC, UPCAST)
    tl.store(DK + b64 * sgb + hk * sgh + cols[:, None] * sgt + offs_d[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b64 * sgb + hk * sgh + cols[:, None] * sgt + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_ptr, v_ptr, skt, svt, lo, hi,
              rows, seg_lo, seg_hi, T, qk_scale,
              D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
              CAUSAL: tl.constexpr, DOC: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    offs_n, offs_d = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        kv_mask = (cols[:, None] < T) & (offs_d[None, :] < D)
        k = tl.load(k_ptr + cols[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + cols[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
        p = tl.math.exp2(_dot(q, tl.trans(k), tl.zeros([q.shape[0], BLOCK_N], tl.float32),
                              PREC, UPCAST)
                         * qk_scale - lse[:, None])
        if MASK:  # the diagonal and the ragged end (where exp2 of a large -lse could overflow)
            ok = cols[None, :] < T
            if CAUSAL:
                ok = ok & (cols[None, :] <= rows[:, None])
            p = tl.where(ok, p, 0.0)
        if DOC:
            p = tl.where((cols[None, :] >= seg_lo[:, None]) & (cols[None, :] < seg_hi[:, None]),
                         p, 0.0)
        dp = _dot(do, tl.trans(v), tl.zeros([q.shape[0], BLOCK_N], tl.float32), PREC, UPCAST)
        ds = p * (dp - delta[:, None])
        dq = _dot(ds.to(k.dtype), k, dq, PREC, UPCAST)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, SEG_LO, SEG_HI,
                   sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh, sgb, sgt, sgh,
                   T, H, GROUP, sm_scale, qk_scale,
                   D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DOC: tl.constexpr,
                   PREC: tl.constexpr, UPCAST: tl.constexpr):
    m0 = tl.program_id(0) * BLOCK_M
    b, h = tl.program_id(1) // H, tl.program_id(1) % H
    b64, hk = b.to(tl.int64), h // GROUP
    rows, offs_d = m0 + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < T) & (offs_d[None, :] < D)
    q = tl.load(Q + b64 * sqb + h * sqh + rows[:, None] * sqt + offs_d[None, :],
                mask=mask, other=0.0)
    do = tl.load(DO + b64 * sdb + h * sdh + rows[:, None] * sdt + offs_d[None, :],
                 mask=mask, other=0.0)
    lse = tl.load(LSE + (b64 * H + h) * T + rows, mask=rows < T, other=0.0)
    delta = tl.load(DELTA + (b64 * H + h) * T + rows, mask=rows < T, other=0.0)
    k_ptr, v_ptr = K + b64 * skb + hk * skh, V + b64 * svb + hk * svh
    lo, mid, hi, seg_lo, seg_hi = _key_range(SEG_LO, SEG_HI, b64, rows, m0, T, BLOCK_M, BLOCK_N,
                                             CAUSAL, DOC)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dq = _dq_inner(dq, q, do, lse, delta, k_ptr, v_ptr, skt, svt, lo, mid,
                   rows, seg_lo, seg_hi, T, qk_scale,
                   D, BLOCK_D, BLOCK_N, False, CAUSAL, DOC, PREC, UPCAST)
    dq = _dq_inner(dq, q, do, lse, delta, k_ptr, v_ptr, skt, svt, mid, hi,
                   rows, seg_lo, seg_hi, T, qk_scale,
                   D, BLOCK_D, BLOCK_N, True, CAUSAL, DOC, PREC, UPCAST)
    tl.store(DQ + b64 * sgb + h * sgh + rows[:, None] * sgt + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launch

def block_sizes(D, interpret=INTERPRET):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the forward, dK/dV and dQ kernels. Forward
    and dQ need BLOCK_M % BLOCK_N == 0, dK/dV BLOCK_N % BLOCK_M == 0 (the causal diagonal).
    GPU sizes: the largest tiles that compile for sm_90 without register spills and within
    shared memory (`python benchmarks/kernel_bench.py compile` prints that table)."""
    if interpret:  # small blocks, so that short test sequences still cross several of them
        return dict(fwd=(32, 16, 4, 1), dkdv=(16, 32, 4, 1), dq=(32, 16, 4, 1))
    if D <= 64:
        return dict(fwd=(128, 64, 8, 3), dkdv=(64, 128, 8, 2), dq=(128, 64, 8, 3))
    if D <= 128:
        return dict(fwd=(128, 64, 8, 3), dkdv=(32, 64, 8, 2), dq=(128, 64, 8, 2))
    return dict(fwd=(128, 32, 8, 2), dkdv=(32, 32, 8, 2), dq=(64, 32, 8, 3))


def _meta(q, D):
    # constexprs shared by every kernel: padded head dim, dot precision, the interpreter's bf16
    # workaround
    return dict(D=D, BLOCK_D=max(16, triton.next_power_of_2(D)),
                PREC="ieee" if q.dtype == torch.float32 else "tf32",
                UPCAST=INTERPRET and q.dtype == torch.bfloat16)


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


def _forward(q, k, v, causal, scale, seg_lo, seg_hi):
    B, T, H, D = q.shape
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    BM, BN, warps, stages = block_sizes(D)["fwd"]
    doc = seg_lo is not None
    _fwd_kernel[(triton.cdiv(T, BM), B * H)](
        q, k, v, o, lse, seg_lo if doc else lse, seg_hi if doc else lse,
        *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        T, H, H // k.size(2), scale * LOG2E,
        BLOCK_M=BM, BLOCK_N=BN, CAUSAL=causal, DOC=doc, num_warps=warps, num_stages=stages,
        **_meta(q, D))
    return o, lse


def _backward(do, q, k, v, o, lse, causal, scale, seg_lo, seg_hi):
    B, T, H, D = q.shape
    HK = k.size(2)
    if do.stride(-1) != 1:
        do = do.contiguous()
    meta, doc = _meta(q, D), seg_lo is not None
    seg = (seg_lo, seg_hi) if doc else (lse, lse)
    delta = torch.empty_like(lse)
    _bwd_delta[(triton.cdiv(T, 64), B * H)](o, do, delta, *_strides(o), *_strides(do), T, H,
                                            D=D, BLOCK_D=meta["BLOCK_D"], BLOCK_M=64)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    blocks = block_sizes(D)
    BM, BN, warps, stages = blocks["dkdv"]
    _bwd_dkdv_kernel[(triton.cdiv(T, BN), B * HK)](
        q, k, v, do, lse, delta, dk, dv, *seg,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk),
        T, H, HK, H // HK, scale, scale * LOG2E,
        BLOCK_M=BM, BLOCK_N=BN, CAUSAL=causal, DOC=doc, num_warps=warps, num_stages=stages, **meta)
    BM, BN, warps, stages = blocks["dq"]
    _bwd_dq_kernel[(triton.cdiv(T, BM), B * H)](
        q, k, v, do, lse, delta, dq, *seg,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq),
        T, H, H // HK, scale, scale * LOG2E,
        BLOCK_M=BM, BLOCK_N=BN, CAUSAL=causal, DOC=doc, num_warps=warps, num_stages=stages, **meta)
    return dq, dk, dv


# custom ops, so that torch.compile sees one opaque node and never traces into the launches

@torch.library.custom_op("nano360::flash_attn_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
            seg_lo: torch.Tensor | None, seg_hi: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, causal, scale, seg_lo, seg_hi)


@_fwd_op.register_fake
def _(q, k, v, causal, scale, seg_lo, seg_hi):
    B, T, H, _ = q.shape
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((B, H, T), dtype=torch.float32))


@torch.library.custom_op("nano360::flash_attn_bwd", mutates_args=())
def _bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
            lse: torch.Tensor, causal: bool, scale: float, seg_lo: torch.Tensor | None,
            seg_hi: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(do, q, k, v, o, lse, causal, scale, seg_lo, seg_hi)


@_bwd_op.register_fake
def _(do, q, k, v, o, lse, causal, scale, seg_lo, seg_hi):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, causal, scale, seg_lo, seg_hi = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], seg_lo, seg_hi)
    ctx.causal, ctx.scale = causal, scale


def _backward_op(ctx, do, dlse):
    q, k, v, o, lse, seg_lo, seg_hi = ctx.saved_tensors
    dq, dk, dv = _bwd_op(do, q, k, v, o, lse, ctx.causal, ctx.scale, seg_lo, seg_hi)
    return dq, dk, dv, None, None, None, None


_fwd_op.register_autograd(_backward_op, setup_context=_setup_context)


# ----------------------------------------------------------------------------- interface

def doc_segments(doc_ids):
    """doc_ids (B, T) -> (start, end) int32 (B, T): the run of equal ids each token lies in."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    first = torch.ones_like(doc_ids, dtype=torch.bool)
    first[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    last = torch.ones_like(first)
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, idx, 0).cummax(1).values
    end = torch.where(last, idx + 1, T).flip(1).cummin(1).values.flip(1)
    return start.int().contiguous(), end.int().contiguous()


def flash_attn(q, k, v, causal=True, softmax_scale=None, doc_ids=None):
    """Softmax attention of q (B, T, Hq, D) over k, v (B, T, Hkv, D) -> (B, T, Hq, D).

    causal: token t sees keys 0..t. softmax_scale: defaults to 1/sqrt(D). doc_ids: optional
    (B, T) integers; a run of equal ids is one document and no token sees keys outside its own.
    Differentiable in q, k and v; the backward is deterministic."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"flash_attn wants q, k, v of shape (B, T, H, D); got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    B, T, H, D = q.shape
    if k.shape != v.shape or k.shape[:2] != (B, T) or k.size(3) != D or H % k.size(2):
        raise ValueError("flash_attn: k and v must be (B, T, Hkv, D) with the B, T and D of q "
                         f"and Hq a multiple of Hkv; got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if D > 256:
        raise ValueError(f"flash_attn supports head dims up to 256; got q {tuple(q.shape)} (D={D})")
    if (not q.dtype == k.dtype == v.dtype
            or q.dtype not in (torch.float16, torch.bfloat16, torch.float32)):
        raise ValueError("flash_attn wants q, k, v all float16, bfloat16 or float32; "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if not INTERPRET and not (q.is_cuda and k.is_cuda and v.is_cuda):
        raise ValueError(f"flash_attn needs CUDA tensors (got q on {q.device}); on a CPU use "
                         "attn_impl='sdpa', or set TRITON_INTERPRET=1 before triton is imported "
                         "to run the kernels (slowly) in the interpreter")
    if doc_ids is not None and tuple(doc_ids.shape) != (B, T):
        raise ValueError(f"flash_attn: doc_ids must be (B, T) = {(B, T)}; "
                         f"got {tuple(doc_ids.shape)}")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    seg_lo, seg_hi = doc_segments(doc_ids) if doc_ids is not None else (None, None)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(D)
    return _fwd_op(q, k, v, bool(causal), scale, seg_lo, seg_hi)[0]
