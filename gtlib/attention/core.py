"""``sparse_attention``: per-edge scores, segment softmax and weighted aggregation."""

from __future__ import annotations

from torch import Tensor

from gtlib.attention.engine import MODES, SPARSE_THRESHOLD, attend
from gtlib.attention.pattern import Pattern

__all__ = ["MODES", "SCORES", "SPARSE_THRESHOLD", "sparse_attention"]

SCORES = ("dot", "gatv2")


def sparse_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    pattern: Pattern,
    *,
    score: str = "dot",
    att: Tensor | None = None,
    negative_slope: float = 0.2,
    key_edge: Tensor | None = None,
    value_edge: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
    mode: str = "auto",
    chunk_size: int | None = None,
    return_attention: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Multi-head attention restricted to a sparsity pattern.

    For every receiver :math:`i` and head :math:`h`:

    .. math::
        s_{ij} &= \text{scale} \cdot \begin{cases}
            q_i \cdot (k_j + e^k_{ij}) & \text{score="dot"} \\
            a \cdot \mathrm{LeakyReLU}(q_i + k_j + e^k_{ij}) & \text{score="gatv2"}
        \end{cases} \; + \; b_{ij} \\
        \alpha_{ij} &= \operatorname{softmax}_{j \in N(i)}(s_{ij}), \qquad
        o_i = \sum_{j \in N(i)} \operatorname{dropout}(\alpha_{ij}) \, (v_j + e^v_{ij})

    Receivers without senders get zeros. The softmax subtracts each receiver's max.

    Modes:
        - ``"scatter"``: gathers per-edge tensors and differentiates with autograd; compiles under
          ``torch.compile(fullgraph=True)``.
        - ``"sparse"``: sparse-matrix kernels (``torch.sparse`` CSR: sampled dense-dense products
          for dot-product scores, sparse-dense products for aggregation) with a hand-written
          backward; keeps ``[E, H]`` per-edge state and nothing of size ``E x H x C``.
        - ``"stream"``: walks receiver-sorted edges in chunks of ``chunk_size`` with an online
          softmax and recomputes them in a custom backward, so memory does not grow with
          ``E x H x C``.
        - ``"fused"``: the compiled C++ kernel on the CPU (OpenMP over receivers, online softmax,
          recomputing backward, nothing of size ``E x H x C``); built on first use.
        - ``"chunked"``: chunks of whole receivers differentiated by autograd under activation
          checkpointing (the general path of :func:`~gtlib.attention.attend`).
        - ``"dense"``: block patterns (:meth:`Pattern.full`, :meth:`Pattern.windows`) go to
          :func:`torch.nn.functional.scaled_dot_product_attention`, block by block size; a
          per-edge ``bias`` is gathered into each block's ``[H, size, size]`` additive mask
          (e.g. Swin's relative position bias).
        - ``"auto"``: dense for block patterns when the options allow; for large patterns the
          fused kernel on the CPU when it is available and there is no dropout, else sparse,
          and stream off the CPU; scatter for small ones (and under ``torch.compile``).

    This is the softmax case of :func:`~gtlib.attention.attend`, which also takes static (GAT)
    scores, a ``score_mod``, a ``message_fn`` and the sum/mean/max reductions.

    Args:
        query: ``[N_dst, H, C]``.
        key: ``[N_src, H, C]``.
        value: ``[N_src, H, C_v]``.
        pattern: the :class:`Pattern` of (sender, receiver) pairs.
        score: ``"dot"`` or ``"gatv2"``.
        att: ``[H, C]`` attention vector for ``score="gatv2"``.
        negative_slope: LeakyReLU slope for ``score="gatv2"``.
        key_edge: ``[E, H, C]`` per-edge term added to the key.
        value_edge: ``[E, H, C_v]`` per-edge term added to the value.
        bias: ``[E, H]`` additive score term (applied after ``scale``).
        scale: score multiplier; default ``1 / sqrt(C)`` for ``"dot"`` and ``1`` for ``"gatv2"``.
        dropout: probability of dropping an attention weight (applied whenever > 0; pass
            ``p if self.training else 0.0`` from a module).
        mode: ``"auto"``, ``"scatter"``, ``"chunked"``, ``"sparse"``, ``"stream"``,
            ``"fused"`` (compiled CPU kernel), ``"triton"`` (fused GPU kernels; ``"auto"``
            takes it on CUDA devices for float32/bfloat16/float16) or ``"dense"``.
        chunk_size: edges per chunk in stream mode (and for per-edge terms in sparse mode).
        return_attention: also return the softmax weights ``[E, H]`` (before dropout) in the
            pattern's caller edge order. They are differentiable in scatter mode and detached in
            the sparse, stream, fused and triton modes.

    Per-edge tensors are in the caller's edge order (the order of ``pattern.edge_index``).
    float16/bfloat16 inputs are computed in float32 and the output cast back (the Triton kernels
    read them as they are and accumulate in float32).

    Shapes:
        query ``[N_dst, H, C]``, key ``[N_src, H, C]``, value ``[N_src, H, C_v]``
        -> ``[N_dst, H, C_v]`` (and ``[E, H]``).
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if score == "gatv2" and att is None:
        raise ValueError("score='gatv2' needs the attention vector att [H, C]")
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor [N, H, C]")
        if x.dim() != 3:
            raise ValueError(f"{name} must have shape [N, H, C], got {list(x.shape)}")
    if negative_slope is None:
        raise TypeError("negative_slope must be a float")
    return attend(
        pattern, value, query=query, key=key, score="additive" if score == "gatv2" else score,
        att=att, negative_slope=negative_slope, key_edge=key_edge, value_edge=value_edge,
        bias=bias, scale=scale, dropout=dropout, mode=mode, chunk_size=chunk_size,
        return_attention=return_attention,
    )  # fmt: skip
