"""Triton kernels of the GPU backend (see :mod:`gtlib.attention.backends.gpu`).

Loaded by :func:`gtlib.attention.backends.gpu.kernels` once per setting of Triton's interpreter
(``TRITON_INTERPRET``), which Triton reads when it decorates a kernel. Per-edge tensors are in the
pattern's receiver-sorted order; every index is an int64 tensor.
"""

# ruff: noqa: N803 - Triton's constexpr convention (BLOCK_E, SCORE, ...)
import triton
import triton.language as tl


@triton.jit
def _gather(base, rows, head, H, C, offs_c, row_mask, c_mask):
    # rows [BE] -> [BE, BC] of base[row, head, :C] in float32
    pointers = base + (rows[:, None] * H + head) * C + offs_c[None, :]
    return tl.load(pointers, mask=row_mask[:, None] & c_mask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _scores(q, a, k, scale, slope, bias_ptr, edges, head, H, e_mask,
            SCORE: tl.constexpr, HAS_SLOPE: tl.constexpr, HAS_BIAS: tl.constexpr):  # fmt: skip
    if SCORE == 0:
        s = tl.sum(q[None, :] * k, axis=1)
    else:
        pre = q[None, :] + k
        if HAS_SLOPE:
            pre = tl.where(pre > 0, pre, pre * slope)
        s = tl.sum(pre * a[None, :], axis=1)
    s = s * scale
    if HAS_BIAS:
        s += tl.load(bias_ptr + edges * H + head, mask=e_mask, other=0.0).to(tl.float32)
    return tl.where(e_mask, s, float("-inf"))


@triton.jit
def _keep(seed, edges, head, H, p_drop):
    return tl.rand(seed, (edges * H + head).to(tl.int32)) >= p_drop


@triton.jit
def _work_item(item_dst_ptr, item_start_ptr, item_end_ptr):
    # this program's work item (receiver i, edges start:end) and head
    item = tl.program_id(0)
    head = tl.program_id(1)
    i = tl.load(item_dst_ptr + item)
    start = tl.load(item_start_ptr + item)
    end = tl.load(item_end_ptr + item)
    return item, head, i, start, end


@triton.jit
def _receiver_terms(q_ptr, att_ptr, i, head, H, C, offs_c, c_mask, SCORE: tl.constexpr):
    # the receiver's query and (additive score) the head's attention vector, in float32
    q = tl.load(q_ptr + (i * H + head) * C + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    a = q
    if SCORE == 1:
        a = tl.load(att_ptr + head * C + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    return q, a


@triton.jit
def _tile_scores(
    q, a, k_ptr, ke_ptr, bias_ptr, col_ptr, e0, end, head, H, C, offs_c, c_mask, scale, slope,
    SCORE: tl.constexpr, HAS_SLOPE: tl.constexpr, HAS_KE: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_E: tl.constexpr,
):  # fmt: skip
    # the edges e0:e0+BLOCK_E (masked at end): senders, keys (+ edge terms), scores
    edges = e0 + tl.arange(0, BLOCK_E)
    e_mask = edges < end
    j = tl.load(col_ptr + edges, mask=e_mask, other=0)
    k = _gather(k_ptr, j, head, H, C, offs_c, e_mask, c_mask)
    if HAS_KE:
        k += _gather(ke_ptr, edges, head, H, C, offs_c, e_mask, c_mask)
    s = _scores(q, a, k, scale, slope, bias_ptr, edges, head, H, e_mask,
                SCORE, HAS_SLOPE, HAS_BIAS)  # fmt: skip
    return edges, e_mask, j, k, s


@triton.jit
def _tile_values(v_ptr, ve_ptr, j, edges, head, H, CV, offs_v, e_mask, v_mask,
                 HAS_VE: tl.constexpr):  # fmt: skip
    # the tile's values (+ edge terms) in float32
    v = _gather(v_ptr, j, head, H, CV, offs_v, e_mask, v_mask)
    if HAS_VE:
        v += _gather(ve_ptr, edges, head, H, CV, offs_v, e_mask, v_mask)
    return v


@triton.jit
def forward_kernel(
    q_ptr, k_ptr, v_ptr, att_ptr, ke_ptr, ve_ptr, bias_ptr, col_ptr,
    item_dst_ptr, item_start_ptr, item_end_ptr, out_ptr, lse_ptr,
    H, C, CV, scale, slope, seed, p_drop,
    SCORE: tl.constexpr, HAS_SLOPE: tl.constexpr, HAS_KE: tl.constexpr,
    HAS_VE: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CV: tl.constexpr,
):  # fmt: skip
    item, head, i, start, end = _work_item(item_dst_ptr, item_start_ptr, item_end_ptr)
    offs_c = tl.arange(0, BLOCK_C)
    offs_v = tl.arange(0, BLOCK_CV)
    c_mask = offs_c < C
    v_mask = offs_v < CV
    q, a = _receiver_terms(q_ptr, att_ptr, i, head, H, C, offs_c, c_mask, SCORE)
    running_max = tl.full([], float("-inf"), tl.float32)
    running_sum = tl.full([], 0.0, tl.float32)
    acc = tl.zeros([BLOCK_CV], tl.float32)
    for e0 in range(start, end, BLOCK_E):
        edges, e_mask, j, k, s = _tile_scores(
            q, a, k_ptr, ke_ptr, bias_ptr, col_ptr, e0, end, head, H, C, offs_c, c_mask, scale,
            slope, SCORE, HAS_SLOPE, HAS_KE, HAS_BIAS, BLOCK_E,
        )  # fmt: skip
        new_max = tl.maximum(running_max, tl.max(s, axis=0))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        rescale = tl.exp(running_max - safe_max)
        p = tl.exp(s - safe_max)
        running_sum = running_sum * rescale + tl.sum(p, axis=0)
        if DROPOUT:
            p = tl.where(_keep(seed, edges, head, H, p_drop), p / (1.0 - p_drop), 0.0)
        v = _tile_values(v_ptr, ve_ptr, j, edges, head, H, CV, offs_v, e_mask, v_mask, HAS_VE)
        acc = acc * rescale + tl.sum(p[:, None] * v, axis=0)
        running_max = new_max
    positive = running_sum > 0
    out = tl.where(positive, acc / tl.where(positive, running_sum, 1.0), 0.0)
    tl.store(out_ptr + (item * H + head) * CV + offs_v, out, mask=v_mask)
    lse = tl.where(positive, running_max + tl.log(tl.where(positive, running_sum, 1.0)),
                   float("-inf"))  # fmt: skip
    tl.store(lse_ptr + item * H + head, lse)


@triton.jit
def backward_kernel(
    q_ptr, k_ptr, v_ptr, att_ptr, ke_ptr, ve_ptr, bias_ptr, col_ptr,
    item_dst_ptr, item_start_ptr, item_end_ptr, lse_ptr, delta_ptr, dout_ptr,
    dq_ptr, dk_ptr, dv_ptr, datt_ptr, dke_ptr, dve_ptr, dbias_ptr, w_ptr,
    H, C, CV, scale, slope, seed, p_drop,
    SCORE: tl.constexpr, HAS_SLOPE: tl.constexpr, HAS_KE: tl.constexpr,
    HAS_VE: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr,
    WEIGHTS_ONLY: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CV: tl.constexpr,
):  # fmt: skip
    item, head, i, start, end = _work_item(item_dst_ptr, item_start_ptr, item_end_ptr)
    offs_c = tl.arange(0, BLOCK_C)
    offs_v = tl.arange(0, BLOCK_CV)
    c_mask = offs_c < C
    v_mask = offs_v < CV
    q, a = _receiver_terms(q_ptr, att_ptr, i, head, H, C, offs_c, c_mask, SCORE)
    lse = tl.load(lse_ptr + i * H + head)
    safe_lse = tl.where(lse == float("-inf"), 0.0, lse)
    dout = tl.zeros([BLOCK_CV], tl.float32)
    delta = tl.full([], 0.0, tl.float32)
    if not WEIGHTS_ONLY:
        dout = tl.load(dout_ptr + (i * H + head) * CV + offs_v, mask=v_mask, other=0.0).to(
            tl.float32
        )
        delta = tl.load(delta_ptr + i * H + head)
    dq = tl.zeros([BLOCK_C], tl.float32)
    datt = tl.zeros([BLOCK_C], tl.float32)
    for e0 in range(start, end, BLOCK_E):
        edges, e_mask, j, k, s = _tile_scores(
            q, a, k_ptr, ke_ptr, bias_ptr, col_ptr, e0, end, head, H, C, offs_c, c_mask, scale,
            slope, SCORE, HAS_SLOPE, HAS_KE, HAS_BIAS, BLOCK_E,
        )  # fmt: skip
        p = tl.where(e_mask, tl.exp(s - safe_lse), 0.0)
        if WEIGHTS_ONLY:
            tl.store(w_ptr + edges * H + head, p, mask=e_mask)
        else:
            v = _tile_values(v_ptr, ve_ptr, j, edges, head, H, CV, offs_v, e_mask, v_mask, HAS_VE)
            dp = tl.sum(dout[None, :] * v, axis=1)
            pv = p
            if DROPOUT:
                kept = _keep(seed, edges, head, H, p_drop)
                dp = tl.where(kept, dp / (1.0 - p_drop), 0.0)
                pv = tl.where(kept, p / (1.0 - p_drop), 0.0)
            ds = p * (dp - delta)  # gradient of the score after scale and bias
            if HAS_BIAS:
                tl.store(dbias_ptr + edges * H + head, ds, mask=e_mask)
            dss = ds * scale
            if SCORE == 0:
                dq += tl.sum(dss[:, None] * k, axis=0)
                dk = dss[:, None] * q[None, :]
            else:
                pre = q[None, :] + k
                act = pre
                slope_grad = tl.full([], 1.0, tl.float32)
                if HAS_SLOPE:
                    act = tl.where(pre > 0, pre, pre * slope)
                    slope_grad = slope
                datt += tl.sum(dss[:, None] * act, axis=0)
                dk = dss[:, None] * a[None, :] * tl.where(pre > 0, 1.0, slope_grad)
                dq += tl.sum(dk, axis=0)
            ck = e_mask[:, None] & c_mask[None, :]
            cv = e_mask[:, None] & v_mask[None, :]
            tl.atomic_add(dk_ptr + (j[:, None] * H + head) * C + offs_c[None, :], dk, mask=ck)
            dv = pv[:, None] * dout[None, :]
            tl.atomic_add(dv_ptr + (j[:, None] * H + head) * CV + offs_v[None, :], dv,
                          mask=cv)  # fmt: skip
            if HAS_KE:
                tl.store(dke_ptr + (edges[:, None] * H + head) * C + offs_c[None, :], dk,
                         mask=ck)  # fmt: skip
            if HAS_VE:
                tl.store(dve_ptr + (edges[:, None] * H + head) * CV + offs_v[None, :], dv,
                         mask=cv)  # fmt: skip
    if not WEIGHTS_ONLY:
        tl.atomic_add(dq_ptr + (i * H + head) * C + offs_c, dq, mask=c_mask)
        if SCORE == 1:
            tl.store(datt_ptr + (item * H + head) * C + offs_c, datt, mask=c_mask)
