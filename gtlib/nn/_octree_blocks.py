"""Building blocks shared by the point-cloud layers (octree transformer, cross-scale fusion):
multi-head attention over a :class:`~gtlib.attention.Pattern`, a feed-forward block and
attentional pooling, all through :func:`gtlib.attention.attend`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import LayerNorm, Linear, Module, Parameter

from gtlib.attention import Pattern, attend


class PatternAttention(Module):
    r"""Multi-head dot-product attention of receivers over senders of a pattern:
    :math:`o_i = W_O \big\Vert_h \sum_{j \in N(i)} \mathrm{softmax}_j
    (q^h_i \cdot k^h_j / \sqrt{C}) v^h_j` with :math:`q = W_Q x_i`, :math:`k = W_K x_j`,
    :math:`v = W_V x_j` (biases included)."""

    def __init__(self, channels: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.channels, self.heads, self.dropout = channels, heads, dropout
        self.lin_query = Linear(channels, channels)
        self.lin_key = Linear(channels, channels)
        self.lin_value = Linear(channels, channels)
        self.lin_out = Linear(channels, channels)

    def reset_parameters(self) -> None:
        for lin in (self.lin_query, self.lin_key, self.lin_value, self.lin_out):
            lin.reset_parameters()

    def forward(self, x_dst: Tensor, x_src: Tensor, pattern) -> Tensor:
        h, c = self.heads, self.channels // self.heads
        q = self.lin_query(x_dst).view(-1, h, c)
        k = self.lin_key(x_src).view(-1, h, c)
        v = self.lin_value(x_src).view(-1, h, c)
        p = self.dropout if self.training else 0.0
        if isinstance(pattern, Pattern):
            out = attend(pattern, v, query=q, key=k, dropout=p)
        else:  # BlockGroups of octree windows: the engine per block size
            out = pattern.attend(v, q, k, dropout=p)
        return self.lin_out(out.reshape(-1, self.channels))


class FeedForward(Module):
    """``Linear -> GELU -> Linear``."""

    def __init__(self, channels: int, ratio: int = 2) -> None:
        super().__init__()
        self.lin1 = Linear(channels, ratio * channels)
        self.lin2 = Linear(ratio * channels, channels)

    def reset_parameters(self) -> None:
        self.lin1.reset_parameters()
        self.lin2.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


class AttentionalPooling(Module):
    r"""One learned query per head attends over all tokens of each cloud:
    :math:`d_g = W_O \Vert_h \sum_{i \in g} \mathrm{softmax}_i(s^h \cdot W_K x_i / \sqrt{C})
    W_V x_i` (the pattern is :meth:`Pattern.cross <gtlib.attention.Pattern.cross>`)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.channels, self.heads = channels, heads
        self.seed = Parameter(torch.empty(heads, channels // heads))
        self.norm = LayerNorm(channels)
        self.lin_key = Linear(channels, channels)
        self.lin_value = Linear(channels, channels)
        self.lin_out = Linear(channels, channels)

    def reset_parameters(self) -> None:
        torch.nn.init.normal_(self.seed, std=self.seed.size(-1) ** -0.5)
        self.norm.reset_parameters()
        for lin in (self.lin_key, self.lin_value, self.lin_out):
            lin.reset_parameters()

    def forward(self, x: Tensor, pattern: Pattern) -> Tensor:
        h, c = self.heads, self.channels // self.heads
        x = self.norm(x)
        query = self.seed.unsqueeze(0).expand(pattern.num_dst, h, c)
        out = attend(pattern, self.lin_value(x).view(-1, h, c), query=query,
                     key=self.lin_key(x).view(-1, h, c))  # fmt: skip
        return self.lin_out(out.reshape(-1, self.channels))


def cloud_mean(x: Tensor, pooling: Pattern) -> Tensor:
    """``[G, F]`` mean of ``x [N, F]`` over each cloud of a pooling pattern (``Pattern.cross``
    from the points to the clouds)."""
    return attend(pooling, x.unsqueeze(1), reduce="mean").squeeze(1)


class OctreeBlock(Module):
    r"""One octree attention block with relay tokens (HOTFormerLoc), pre-norm:

    .. math::
        r_w &= \tfrac{1}{|w|} \textstyle\sum_{i \in w} h_i, \qquad
        r \leftarrow r + \mathrm{Attn}_{\text{relay}}(\mathrm{LN}(r))
        \quad (\text{relays of one cloud}) \\
        t &= [h; r], \qquad t \leftarrow t + \mathrm{Attn}_{\text{window}}(\mathrm{LN}(t))
        \quad (\text{window } w \text{ with its relay } r_w), \qquad
        t \leftarrow t + \mathrm{FFN}(\mathrm{LN}(t))

    and the points' part of :math:`t` is the output (the relays are rebuilt by every block).
    """

    def __init__(self, channels: int, heads: int, dropout: float = 0.0, ratio: int = 2) -> None:
        super().__init__()
        self.norm_relay = LayerNorm(channels)
        self.relay_attn = PatternAttention(channels, heads, dropout)
        self.norm_window = LayerNorm(channels)
        self.window_attn = PatternAttention(channels, heads, dropout)
        self.norm_ffn = LayerNorm(channels)
        self.ffn = FeedForward(channels, ratio)

    def reset_parameters(self) -> None:
        for module in (self.norm_relay, self.relay_attn, self.norm_window, self.window_attn,
                       self.norm_ffn, self.ffn):  # fmt: skip
            module.reset_parameters()

    def forward(self, h: Tensor, level) -> Tensor:
        h_s = level.serialise(h)
        relay = attend(level.relay_gather(), h_s.unsqueeze(1), reduce="mean").squeeze(1)
        normed = self.norm_relay(relay)
        relay = relay + self.relay_attn(normed, normed, level.relay_global())
        tokens = torch.cat([h_s, relay])
        normed = self.norm_window(tokens)
        tokens = tokens + self.window_attn(normed, normed, level.window_groups(relays=True))
        tokens = tokens + self.ffn(self.norm_ffn(tokens))
        return level.deserialise(tokens[: h.size(0)])
