"""HOTFormerLoc-style octree transformer: a global descriptor per point cloud."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Module, ModuleList, Sequential

from gtlib.attention import Pattern
from gtlib.attention.cache import pattern_cache
from gtlib.nn._octree_blocks import AttentionalPooling, OctreeBlock, cloud_mean

POS_ENCODINGS = ("xyz", "cylindrical", None)


class OctreeTransformer(Module):
    r"""An octree transformer encoder in the shape of HOTFormerLoc, from the `"HOTFormerLoc:
    Hierarchical Octree Transformer for Versatile Lidar Place Recognition Across Ground and
    Aerial Views" <https://arxiv.org/abs/2503.08140>`_ paper (Griffiths et al., CVPR 2025), on
    :func:`gtlib.attention.attend`.

    Points are serialised along a z-order curve and cut into windows of at most
    ``window_size`` points inside octree cells (:meth:`Pattern.octree
    <gtlib.attention.Pattern.octree>`; cylindrical cells about ``origin`` with
    ``cylindrical=True``). Level :math:`l` uses cells one octree depth coarser than level
    :math:`l - 1`, and runs ``num_blocks`` blocks; every block (every other one on shifted cells
    when ``shift``) computes, with one relay token per window,

    .. math::
        r_w &= \tfrac{1}{|w|} \textstyle\sum_{i \in w} h_i, \qquad
        r \leftarrow r + \mathrm{MHA}_{\text{cloud}}(\mathrm{LN}(r)) \\
        [h; r] &\leftarrow [h; r] + \mathrm{MHA}_{w \cup \{r_w\}}(\mathrm{LN}([h; r])), \qquad
        [h; r] \leftarrow [h; r] + \mathrm{FFN}(\mathrm{LN}([h; r]))

    where :math:`\mathrm{MHA}_{\text{cloud}}` lets the relays of a cloud attend to each other and
    :math:`\mathrm{MHA}_{w \cup \{r_w\}}` is attention inside each window with its relay token
    appended (a block pattern: dense SDPA). The input is
    :math:`h = W_{in} x + \mathrm{MLP}(\hat p)` with :math:`\hat p` the positions relative to the
    cloud's centroid divided by its RMS radius (``pos_encoding="xyz"``), or
    :math:`(\sqrt{\hat p_x^2 + \hat p_y^2}, \hat p_z)`, invariant to rotations about
    :math:`z` (``"cylindrical"``). After every level, attentional pooling (a learned query per
    head over all points of a cloud) gives :math:`d_l`; the pyramid of levels is fused into the
    global descriptor :math:`d = W_{out} [d_0 \Vert \dots \Vert d_{L-1}]`, L2-normalised when
    ``normalize``.

    Unlike the paper the levels keep all points (coarser levels have larger windows instead of
    octree-downsampled tokens), relays are re-initialised by every block from their window's
    mean, and there is no convolutional stem.

    Args:
        in_channels: size of the point features ``x`` (``0``: positions only).
        hidden_channels: width of the tokens.
        out_channels: size of the global descriptor.
        heads: attention heads.
        window_size: the largest window.
        levels: pyramid levels.
        num_blocks: attention blocks per level.
        depth: octree depth of level 0's cells (``None``: chosen from the data, see
            :meth:`Pattern.octree <gtlib.attention.Pattern.octree>`).
        shift: shift the cells of every other block by half a cell.
        cylindrical: windows in :math:`(r, \theta, z)` about ``origin``.
        pos_encoding: ``"xyz"``, ``"cylindrical"`` or ``None``.
        dropout: attention dropout.
        normalize: L2-normalise the descriptor.

    Shapes:
        - **input:** positions :math:`(N, 3)`, features :math:`(N, F_{in})` (optional), batch
          vector :math:`(N)` (optional, sorted cloud ids), origin :math:`(3)` or :math:`(B, 3)`
          (optional, cylindrical windows).
        - **output:** descriptors :math:`(B, F_{out})`.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        heads: int = 4,
        window_size: int = 64,
        levels: int = 3,
        num_blocks: int = 2,
        depth: int | None = None,
        shift: bool = True,
        cylindrical: bool = False,
        pos_encoding: str | None = "xyz",
        dropout: float = 0.0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 0),
                                 ("hidden_channels", hidden_channels, 1),
                                 ("out_channels", out_channels, 1), ("heads", heads, 1),
                                 ("window_size", window_size, 1), ("levels", levels, 1),
                                 ("num_blocks", num_blocks, 1)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if hidden_channels % heads:
            raise ValueError(
                f"hidden_channels ({hidden_channels}) must be divisible by heads ({heads})"
            )
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding must be one of {POS_ENCODINGS}, got {pos_encoding!r}")
        if in_channels == 0 and pos_encoding is None:
            raise ValueError("in_channels=0 needs a pos_encoding (the tokens need an input)")
        self.in_channels, self.hidden_channels, self.out_channels = (
            in_channels, hidden_channels, out_channels)  # fmt: skip
        self.heads, self.window_size, self.levels = heads, window_size, levels
        self.num_blocks, self.depth, self.shift = num_blocks, depth, bool(shift)
        self.cylindrical, self.pos_encoding = bool(cylindrical), pos_encoding
        self.dropout, self.normalize = dropout, bool(normalize)
        self.lin_in = Linear(in_channels, hidden_channels) if in_channels else None
        pos_dim = 3 if pos_encoding == "xyz" else 2
        self.pos_mlp = (
            Sequential(
                Linear(pos_dim, hidden_channels),
                torch.nn.GELU(),
                Linear(hidden_channels, hidden_channels),
            )  # fmt: skip
            if pos_encoding is not None
            else None
        )
        self.blocks = ModuleList(
            ModuleList(OctreeBlock(hidden_channels, heads, dropout) for _ in range(num_blocks))
            for _ in range(levels)
        )
        self.pools = ModuleList(AttentionalPooling(hidden_channels, heads) for _ in range(levels))
        self.lin_out = Linear(levels * hidden_channels, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Resets all learnable parameters of the module."""
        if self.lin_in is not None:
            self.lin_in.reset_parameters()
        if self.pos_mlp is not None:
            for module in self.pos_mlp:
                if isinstance(module, Linear):
                    module.reset_parameters()
        for level in self.blocks:
            for block in level:
                block.reset_parameters()
        for pool in self.pools:
            pool.reset_parameters()
        self.lin_out.reset_parameters()

    def octrees(
        self, pos: Tensor, batch: Tensor | None = None, origin: Tensor | None = None
    ) -> dict[bool, object]:
        """The unshifted (and, with ``shift``, shifted) :class:`~gtlib.attention.octree.Octree`
        of the points, built once per unmodified ``(pos, batch, origin)`` in the library's
        pattern cache."""
        out = {}
        for shifted in (False, True) if self.shift and self.num_blocks > 1 else (False,):
            sources = tuple(t for t in (pos, batch, origin) if t is not None)
            key = ("Pattern.octree", self.window_size, self.levels, shifted, self.cylindrical,
                   self.depth, batch is None, origin is None)  # fmt: skip
            out[shifted] = pattern_cache.get(
                sources,
                key,
                lambda shifted=shifted: Pattern.octree(
                    pos,
                    self.window_size,
                    self.levels,
                    batch,
                    shifted,
                    self.cylindrical,
                    origin,
                    self.depth,
                ),  # fmt: skip
            )
        return out

    def forward(
        self,
        pos: Tensor,
        x: Tensor | None = None,
        batch: Tensor | None = None,
        origin: Tensor | None = None,
    ) -> Tensor:
        if not isinstance(pos, Tensor) or not pos.dtype.is_floating_point:
            raise TypeError("pos must be a floating-point tensor [N, 3]")
        if pos.dim() != 2 or pos.size(1) != 3:
            raise ValueError(f"pos must have shape [N, 3], got {list(pos.shape)}")
        n = pos.size(0)
        if self.in_channels:
            if x is None:
                raise ValueError(f"x [N, {self.in_channels}] is required (in_channels > 0)")
            if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
                raise TypeError("x must be a floating-point tensor [N, in_channels]")
            if x.shape != (n, self.in_channels):
                raise ValueError(
                    f"x must have shape [N={n}, in_channels={self.in_channels}], got "
                    f"{list(x.shape)}"
                )
        elif x is not None:
            raise ValueError("x is given but the layer was built with in_channels=0")
        if batch is not None and (not isinstance(batch, Tensor) or batch.dtype != torch.long):
            raise TypeError("batch must be an int64 tensor of cloud ids")
        if batch is not None and batch.shape != (n,):
            raise ValueError(f"batch must have shape [N={n}], got {list(batch.shape)}")
        trees = self.octrees(pos, batch, origin)  # validates batch and origin
        cloud = trees[False].batch
        pooling = Pattern.cross(cloud, torch.arange(trees[False].num_clouds, device=pos.device))

        h = self.lin_in(x) if self.lin_in is not None else 0.0
        if self.pos_mlp is not None:
            rel = pos - cloud_mean(pos, pooling)[cloud]
            radius = cloud_mean(rel.square().sum(-1, keepdim=True), pooling).sqrt()
            rel = rel / radius.clamp_min(torch.finfo(pos.dtype).tiny)[cloud]
            if self.pos_encoding == "cylindrical":
                rel = torch.stack([rel[:, :2].norm(dim=-1), rel[:, 2]], dim=-1)
            h = h + self.pos_mlp(rel)

        descriptors = []
        for index, level_blocks in enumerate(self.blocks):
            for b, block in enumerate(level_blocks):
                tree = trees[bool(b % 2) and self.shift and self.num_blocks > 1]
                h = block(h, tree[index])
            descriptors.append(self.pools[index](h, pooling))
        out = self.lin_out(torch.cat(descriptors, dim=-1))
        return F.normalize(out, dim=-1) if self.normalize else out

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, "
            f"{self.out_channels}, heads={self.heads}, window_size={self.window_size}, "
            f"levels={self.levels}, num_blocks={self.num_blocks})"
        )
