"""CrossViT's cross-attention fusion of two token sets through their CLS tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import LayerNorm, Linear, Module

from gtlib.attention import Pattern
from gtlib.nn._octree_blocks import PatternAttention


class CrossScaleFusion(Module):
    r"""The cross-attention fusion of CrossViT, from the `"CrossViT: Cross-Attention Multi-Scale
    Vision Transformer for Image Classification" <https://arxiv.org/abs/2103.14899>`_ paper
    (Chen et al., ICCV 2021), for batches of token sets of any sizes, on
    :func:`gtlib.attention.attend`.

    Two branches hold tokens of different granularity (e.g. fine and coarse octree levels, or
    small and large patches) with widths :math:`C_a` and :math:`C_b`, and one CLS token per
    graph each. The CLS token of each branch, projected to the other branch's width, is the
    only query of an attention over itself and the other branch's tokens of the same graph
    (linear cost), and is projected back:

    .. math::
        c &= f_a(\mathrm{cls}_a) = W_f\,\mathrm{GELU}(\mathrm{LN}(\mathrm{cls}_a)), \qquad
        X = \mathrm{LN}_1([c;\ x_b]) \\
        y &= c + W_O \big\Vert_h \mathrm{softmax}\Big(\frac{(W_Q X_0)^h (W_K X)^{h\top}}
            {\sqrt{C_b / H}}\Big) (W_V X)^h, \qquad
        \mathrm{cls}_a' = g_a(y) = W_g\,\mathrm{GELU}(\mathrm{LN}(y))

    and symmetrically for branch :math:`b` (queries from :math:`\mathrm{cls}_b` over
    :math:`x_a`). :math:`X_0` is the row of :math:`c`. As in the official code the patch tokens
    are left unchanged and the fused CLS tokens replace the old ones (no residual to
    :math:`\mathrm{cls}_a`); unlike it the query/key/value projections have biases.

    Args:
        channels_a: width :math:`C_a` of branch ``a``.
        channels_b: width :math:`C_b` of branch ``b``.
        heads: attention heads (dividing both widths).
        dropout: attention dropout.

    Shapes:
        - **input:** tokens ``x_a`` :math:`(N_a, C_a)`, CLS tokens ``cls_a`` :math:`(G, C_a)`,
          tokens ``x_b`` :math:`(N_b, C_b)`, CLS tokens ``cls_b`` :math:`(G, C_b)`, graph ids
          ``batch_a`` :math:`(N_a)` and ``batch_b`` :math:`(N_b)` (optional: one graph).
        - **output:** ``(cls_a', cls_b')`` of shapes :math:`(G, C_a)` and :math:`(G, C_b)`.
    """

    def __init__(self, channels_a: int, channels_b: int, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        for name, value in (("channels_a", channels_a), ("channels_b", channels_b),
                            ("heads", heads)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in (("channels_a", channels_a), ("channels_b", channels_b)):
            if value % heads:
                raise ValueError(f"{name} ({value}) must be divisible by heads ({heads})")
        self.channels_a, self.channels_b, self.heads = channels_a, channels_b, heads
        self.dropout = dropout
        # branch a's CLS over branch b's tokens (in width C_b), and the reverse
        self.norm_proj_a, self.proj_a = LayerNorm(channels_a), Linear(channels_a, channels_b)
        self.norm_proj_b, self.proj_b = LayerNorm(channels_b), Linear(channels_b, channels_a)
        self.norm_a, self.attn_a = (
            LayerNorm(channels_b),
            PatternAttention(channels_b, heads, dropout),
        )
        self.norm_b, self.attn_b = (
            LayerNorm(channels_a),
            PatternAttention(channels_a, heads, dropout),
        )
        self.norm_back_a, self.back_a = LayerNorm(channels_b), Linear(channels_b, channels_a)
        self.norm_back_b, self.back_b = LayerNorm(channels_a), Linear(channels_a, channels_b)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Resets all learnable parameters of the module."""
        for module in self.children():
            module.reset_parameters()

    def _fuse(self, cls, tokens, batch, norm_proj, proj, norm, attn, norm_back, back):
        num_graphs = cls.size(0)
        c = proj(F.gelu(norm_proj(cls)))
        graphs = torch.arange(num_graphs, device=cls.device)
        pattern = Pattern.cross(torch.cat([graphs, batch]), graphs)
        keys = norm(torch.cat([c, tokens]))
        y = c + attn(keys[:num_graphs], keys, pattern)
        return back(F.gelu(norm_back(y)))

    def forward(
        self,
        x_a: Tensor,
        cls_a: Tensor,
        x_b: Tensor,
        cls_b: Tensor,
        batch_a: Tensor | None = None,
        batch_b: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        num_graphs = _check_pair(x_a, cls_a, batch_a, self.channels_a, "a")
        if _check_pair(x_b, cls_b, batch_b, self.channels_b, "b") != num_graphs:
            raise ValueError(
                f"cls_a and cls_b must have one row per graph: {cls_a.size(0)} != {cls_b.size(0)}"
            )
        if batch_a is None:
            batch_a = x_a.new_zeros(x_a.size(0), dtype=torch.long)
        if batch_b is None:
            batch_b = x_b.new_zeros(x_b.size(0), dtype=torch.long)
        new_a = self._fuse(cls_a, x_b, batch_b, self.norm_proj_a, self.proj_a, self.norm_a,
                           self.attn_a, self.norm_back_a, self.back_a)  # fmt: skip
        new_b = self._fuse(cls_b, x_a, batch_a, self.norm_proj_b, self.proj_b, self.norm_b,
                           self.attn_b, self.norm_back_b, self.back_b)  # fmt: skip
        return new_a, new_b

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels_a}, {self.channels_b}, heads={self.heads})"
        )


def _check_pair(x, cls, batch, channels, branch) -> int:
    for name, t in ((f"x_{branch}", x), (f"cls_{branch}", cls)):
        if not isinstance(t, Tensor) or not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor [*, {channels}]")
        if t.dim() != 2 or t.size(1) != channels:
            raise ValueError(f"{name} must have shape [*, {channels}], got {list(t.shape)}")
    num_graphs = cls.size(0)
    if batch is None:
        if num_graphs != 1:
            raise ValueError(f"batch_{branch} is needed when cls_{branch} has {num_graphs} rows")
        return num_graphs
    if not isinstance(batch, Tensor) or batch.dtype != torch.long:
        raise TypeError(f"batch_{branch} must be an int64 tensor of graph ids")
    if batch.shape != (x.size(0),):
        raise ValueError(f"batch_{branch} must have shape [{x.size(0)}], got {list(batch.shape)}")
    if batch.numel() and (int(batch.min()) < 0 or int(batch.max()) >= num_graphs):
        raise ValueError(f"batch_{branch} must hold graph ids in [0, {num_graphs})")
    return num_graphs
