"""Poseidon's scalable operator transformer (scOT): a time-conditioned U-shaped SwinV2."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gtlib.attention import Pattern, sparse_attention
from gtlib.attention.cache import pattern_cache
from gtlib.validation import (
    check_bool,
    check_finite,
    check_input,
    check_int,
    check_real,
    renamed_arguments,
)

__all__ = ["ScOT"]

_MAX_LOGIT_SCALE = math.log(100.0)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    if not (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(value) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return int(value[0]), int(value[1])


def _as_time(lead_time: Tensor | float, batch: int, like: Tensor) -> Tensor:
    """``lead_time`` (scalar or ``[B]``) as ``[B, 1]`` in ``like``'s dtype and device."""
    if isinstance(lead_time, Tensor):
        if not (lead_time.dtype.is_floating_point or _is_integer(lead_time.dtype)):
            raise TypeError(f"lead_time must be a real number or tensor, got {lead_time.dtype}")
        t = lead_time.to(dtype=like.dtype, device=like.device)
    elif isinstance(lead_time, (list, tuple, np.ndarray)):
        try:
            t = torch.as_tensor(np.asarray(lead_time, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"lead_time must hold real numbers, got {lead_time!r}") from err
        t = t.to(dtype=like.dtype, device=like.device)
    else:
        t = torch.tensor(check_real(lead_time, "lead_time"), dtype=like.dtype, device=like.device)
    check_finite(t, "lead_time")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.dim() != 1 or t.numel() != batch:
        raise ValueError(
            f"lead_time must be a scalar or have shape [B] = [{batch}], got {list(t.shape)}"
        )
    return t.reshape(batch, 1)


def _is_integer(dtype: torch.dtype) -> bool:
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


class _TimeLayerNorm(nn.Module):
    r"""LayerNorm over the last dimension with an affine map that depends on the lead time:
    :math:`(W_a t + a_0) \odot \hat x + (W_b t + b_0)`, where :math:`\hat x` is the normalised
    input and :math:`t` one scalar per sample. Without time conditioning it is a plain
    LayerNorm. Initialised to :math:`W_a = W_b = 0`, :math:`a_0 = 1`, :math:`b_0 = 0`.

    Shapes: ``x [B, ..., C]``, ``t [B, 1]`` -> ``[B, ..., C]``.
    """

    def __init__(self, dim: int, time_conditioning: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.time_conditioning = time_conditioning
        if time_conditioning:
            self.weight = nn.Linear(1, dim)
            self.bias = nn.Linear(1, dim)
        else:
            self.weight = nn.Parameter(torch.empty(dim))
            self.bias = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.time_conditioning:
                self.weight.weight.zero_()
                self.weight.bias.fill_(1.0)
                self.bias.weight.zero_()
                self.bias.bias.zero_()
            else:
                self.weight.fill_(1.0)
                self.bias.zero_()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        x = F.layer_norm(x, (self.dim,), eps=self.eps)
        if not self.time_conditioning:
            return x * self.weight + self.bias
        shape = (x.size(0),) + (1,) * (x.dim() - 2) + (self.dim,)
        return x * self.weight(t).view(shape) + self.bias(t).view(shape)

    def extra_repr(self) -> str:
        return f"{self.dim}, time_conditioning={self.time_conditioning}"


class _WindowAttention(nn.Module):
    r"""SwinV2 window attention through :func:`gtlib.attention.sparse_attention`.

    Scaled cosine attention :math:`\tau_h \cos(q_i, k_j) + B_h(p_i - p_j)` with a learnable
    per-head :math:`\log \tau_h` clamped at :math:`\log 100` and a continuous relative position
    bias :math:`B = 16\,\mathrm{sigmoid}(\mathrm{MLP}(\hat p))` of log-spaced relative
    coordinates :math:`\hat p = \mathrm{sign}(p) \log_2(1 + 8 |p| / (w - 1)) / 3`. Windows come
    from :meth:`Pattern.windows` over the grid ``(B, H, W)`` with window ``(1, w_h, w_w)``, so the
    tokens of all samples go through one call.

    The bias goes to the core as a per-edge ``[E, H]`` term (``bias=``), which its dense path
    gathers into every window's ``[H, w, w]`` SDPA mask.
    """

    def __init__(self, dim: int, heads: int, cpb_hidden: int = 512) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"the stage width {dim} must be divisible by heads={heads}")
        self.dim = dim
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.empty(dim))
        self.v_bias = nn.Parameter(torch.empty(dim))
        self.logit_scale = nn.Parameter(torch.empty(heads))
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, cpb_hidden), nn.ReLU(), nn.Linear(cpb_hidden, heads, bias=False)
        )
        self.proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for linear in (self.qkv, self.proj, self.cpb_mlp[0], self.cpb_mlp[2]):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.q_bias)
        nn.init.zeros_(self.v_bias)
        nn.init.constant_(self.logit_scale, math.log(10.0))

    def bias_table(self, window: tuple[int, int], dtype: torch.dtype, device) -> Tensor:
        """The bias ``[(2 w_h - 1) (2 w_w - 1), H]`` of every relative offset, row-major."""
        axes = []
        for w in window:
            r = torch.arange(-(w - 1), w, dtype=dtype, device=device)
            axes.append(r / (w - 1) * 8 if w > 1 else r)
        table = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 2)
        table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
        return 16 * torch.sigmoid(self.cpb_mlp(table))

    def forward(
        self,
        x: Tensor,
        window: tuple[int, int],
        shift: tuple[int, int],
        periodic: bool,
    ) -> Tensor:
        B, Hg, Wg, C = x.shape
        heads, head_dim = self.heads, C // self.heads
        pattern, edge_offset = _window_pattern(B, (Hg, Wg), window, shift, periodic, x.device)
        qkv_bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x.reshape(-1, C), self.qkv.weight, qkv_bias).view(-1, 3, heads, head_dim)
        q, k, v = qkv.unbind(1)
        tau = torch.exp(self.logit_scale.clamp(max=_MAX_LOGIT_SCALE))
        q = F.normalize(q, dim=-1) * tau.view(1, heads, 1)
        k = F.normalize(k, dim=-1)
        table = self.bias_table(window, x.dtype, x.device)  # [offsets, H]
        bias = table.index_select(0, edge_offset)  # [E, H]
        out = sparse_attention(q, k, v, pattern, scale=1.0, bias=bias)
        return self.proj(out.reshape(B, Hg, Wg, C))


def _window_pattern(
    batch: int,
    grid: tuple[int, int],
    window: tuple[int, int],
    shift: tuple[int, int],
    periodic: bool,
    device,
) -> tuple[Pattern, Tensor]:
    """The window pattern of ``batch`` grids and every edge's relative-offset index (a row of
    :meth:`_WindowAttention.bias_table`), in the pattern's edge order; cached in the library's
    pattern cache."""
    key = ("scot.windows", batch, grid, window, shift, periodic, str(device))
    return pattern_cache.get((), key, lambda: _build_window_pattern(*key[1:-1], device))


def _build_window_pattern(batch, grid, window, shift, periodic, device) -> tuple[Pattern, Tensor]:
    pattern = Pattern.windows(
        (batch, *grid),
        (1, *window),
        (0, *shift),
        periodic=(False, periodic, periodic),
        device=device,
    )
    # (y - shift) mod w differs from the position inside the token's window by a constant per
    # window, also for windows cut at a non-periodic boundary; differences are all we need.
    ys = (torch.arange(grid[0], device=device) - shift[0]) % window[0]
    xs = (torch.arange(grid[1], device=device) - shift[1]) % window[1]
    local = torch.stack(torch.broadcast_tensors(ys[:, None], xs[None, :]), -1)
    local = local.reshape(1, -1, 2).expand(batch, -1, -1).reshape(-1, 2)
    src, dst = pattern.edge_index
    rel = local[dst] - local[src] + torch.tensor(window, device=device) - 1
    return pattern, rel[:, 0] * (2 * window[1] - 1) + rel[:, 1]


class _Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose ``padding_mode="circular"`` also wraps around a grid smaller than the
    padding (``F.pad`` refuses to wrap more than once): the padded input is gathered with
    indices modulo the grid, i.e. the exact convolution of the periodic function."""

    def forward(self, x: Tensor) -> Tensor:
        if self.padding_mode != "circular":
            return super().forward(x)
        for dim, pad in ((-2, self.padding[0]), (-1, self.padding[1])):
            n = x.size(dim)
            index = torch.arange(-pad, n + pad, device=x.device) % n
            x = x.index_select(dim, index)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _SwinBlock(nn.Module):
    """A SwinV2 block with post-norm residuals: ``x + LN_t(Attn(x))``, ``x + LN_t(MLP(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, time_conditioning: bool) -> None:
        super().__init__()
        self.attn = _WindowAttention(dim, heads)
        self.norm1 = _TimeLayerNorm(dim, time_conditioning)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm2 = _TimeLayerNorm(dim, time_conditioning)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.attn.reset_parameters()
        for linear in (self.mlp[0], self.mlp[2]):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        self.norm1.reset_parameters()
        self.norm2.reset_parameters()

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        window: tuple[int, int],
        shift: tuple[int, int],
        periodic: bool,
    ) -> Tensor:
        x = x + self.norm1(self.attn(x, window, shift, periodic), t)
        return x + self.norm2(self.mlp(x), t)


class _PatchMerging(nn.Module):
    """SwinV2 patch merging: 2x2 neighbours concatenated, ``Linear(4C, 2C)``, then ``LN_t``."""

    def __init__(self, dim: int, time_conditioning: bool) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = _TimeLayerNorm(2 * dim, time_conditioning)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.norm(self.reduction(x), t)


class _PatchExpanding(nn.Module):
    """Inverse of patch merging: ``Linear(C, 2C)`` split into 2x2 tokens of ``C/2``, ``LN_t``."""

    def __init__(self, dim: int, time_conditioning: bool) -> None:
        super().__init__()
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = _TimeLayerNorm(dim // 2, time_conditioning)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        B, H, W, C = x.shape
        x = self.expand(x).view(B, H, W, 2, 2, C // 2).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(B, 2 * H, 2 * W, C // 2), t)


class _ConvNeXtBlock(nn.Module):
    """ConvNeXt block on a skip connection: depthwise 7x7 conv, ``LN_t``, ``Linear(C, 4C)``,
    GELU, ``Linear(4C, C)``, layer scale (initialised to 1e-6), residual."""

    def __init__(self, dim: int, time_conditioning: bool, periodic: bool) -> None:
        super().__init__()
        self.dwconv = _Conv2d(
            dim, dim, 7, padding=3, groups=dim, padding_mode="circular" if periodic else "zeros"
        )
        self.norm = _TimeLayerNorm(dim, time_conditioning)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        y = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y, t))))
        return x + self.gamma * y


def _check_stages(in_channels, out_channels, patch_size, embed_dim, window_size, depths, heads,
                  skip_connection_blocks, mlp_ratio):  # fmt: skip
    """ScOT's sizes: positive ints, one entry per stage, heads dividing each stage's width."""
    for name, value in (
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("patch_size", patch_size),
        ("embed_dim", embed_dim),
        ("window_size", window_size),
    ):
        check_int(value, name, minimum=1)
    depths, heads, skip_connection_blocks = (
        _int_sequence(value, name)
        for name, value in (("depths", depths), ("heads", heads),
                            ("skip_connection_blocks", skip_connection_blocks))
    )  # fmt: skip
    n_stages = len(depths)
    for name, value in (
        ("heads", heads),
        ("skip_connection_blocks", skip_connection_blocks),
    ):
        if len(value) != n_stages:
            raise ValueError(f"{name} must have len(depths)={n_stages} entries, got {len(value)}")
    if n_stages < 1 or any(d < 1 for d in depths):
        raise ValueError(f"depths must be a non-empty sequence of positive ints, got {depths}")
    if any(s < 0 for s in skip_connection_blocks):
        raise ValueError(
            f"skip_connection_blocks must be non-negative, got {skip_connection_blocks}"
        )
    for s, stage_heads in enumerate(heads):
        if stage_heads < 1 or (embed_dim * 2**s) % stage_heads != 0:
            raise ValueError(
                f"heads[{s}]={stage_heads} must divide the stage width embed_dim * 2**{s} = "
                f"{embed_dim * 2**s}"
            )
    check_real(mlp_ratio, "mlp_ratio", positive=True)
    return depths, heads, skip_connection_blocks


def _int_sequence(value, name: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}")
    return tuple(check_int(v, name) for v in value)


class ScOT(nn.Module):
    r"""The scalable operator transformer (scOT) of `"Poseidon: Efficient Foundation Models for
    PDEs" <https://arxiv.org/abs/2405.19101>`_ (Herde et al., NeurIPS 2024): a U-shaped SwinV2
    conditioned on the lead time.

    .. math::
        G(u, t) = \mathcal{R} \circ \mathcal{D}_0 \circ \dots \circ \mathcal{D}_{S-1}
        \circ \mathcal{E}_{S-1} \circ \dots \circ \mathcal{E}_0 \circ \mathcal{P}\,(u),

    * **Patch embedding** :math:`\mathcal{P}`: a ``patch_size`` strided convolution to
      ``embed_dim`` channels and :math:`\mathrm{LN}_t`.
    * **Encoder stage** :math:`\mathcal{E}_s` (width ``embed_dim * 2**s``): ``depths[s]``
      SwinV2 blocks on alternately regular and shifted (by ``window_size // 2``) windows, each
      :math:`x \leftarrow x + \mathrm{LN}_t(\mathrm{Attn}(x))`,
      :math:`x \leftarrow x + \mathrm{LN}_t(\mathrm{MLP}(x))` (post-norm) with scaled cosine
      attention :math:`\tau_h \cos(q_i, k_j) + B_h(p_i - p_j)`, a learnable per-head
      :math:`\log \tau_h \le \log 100` and a continuous relative position bias
      :math:`B = 16 \sigma(\mathrm{MLP}(\text{log-spaced offsets}))`; then patch merging
      (2x2 tokens to one, width doubled) except after the last stage.
    * **Decoder stage** :math:`\mathcal{D}_s`: patch expanding (one token to 2x2, width halved)
      except on the deepest stage, plus the skip from encoder stage :math:`s` through
      ``skip_connection_blocks[s]`` ConvNeXt blocks (0: no skip; the deepest stage feeds the
      decoder directly), then ``depths[s]`` SwinV2 blocks.
    * **Patch recovery** :math:`\mathcal{R}`: a ``patch_size`` strided transposed convolution
      to ``out_channels`` and a 5x5 mixing convolution.

    Every LayerNorm is time-conditioned,
    :math:`\mathrm{LN}_t(x) = (W_a t + a_0) \odot \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}
    + (W_b t + b_0)` with one scalar lead time :math:`t` per sample, so the model is a smooth
    function of :math:`t`; ``time_conditioning=False`` uses plain LayerNorms and ignores
    ``lead_time``. :math:`W_a, W_b` start at zero.

    Windows are :meth:`gtlib.attention.Pattern.windows` patterns, cached per grid and shift, and
    the attention runs through :func:`gtlib.attention.sparse_attention`. On a stage whose token
    grid is not larger than ``window_size`` (per dimension) the window covers that dimension
    and is not shifted, as in Swin. With ``periodic=True`` windows wrap around the boundary
    (Swin's cyclic shift without mask) and the depthwise/mixing convolutions pad circularly;
    with ``periodic=False`` shifted windows are cut at the boundary (Swin's attention mask).
    Circular padding wraps as often as needed, so periodic token grids smaller than the
    convolutions' reach (e.g. 2x2 or 1x1 on a skip stage) are convolved exactly.

    ``image_size`` is the nominal resolution (checked at construction); any resolution whose
    sides are multiples of ``patch_size * 2**(len(depths) - 1)`` (and, when periodic, whose
    stage grids are multiples of the window) runs.

    Args:
        in_channels (int): Input function channels.
        out_channels (int): Output function channels.
        image_size (int or tuple of int): Nominal input resolution ``(H, W)``.
        patch_size (int, optional): Patch side. (default: :obj:`4`)
        embed_dim (int, optional): Width of the first stage. (default: :obj:`48`)
        depths (sequence of int, optional): SwinV2 blocks per encoder (and decoder) stage.
            (default: :obj:`(2, 2, 2, 2)`)
        heads (sequence of int, optional): Heads per stage (``num_heads`` is its deprecated
            name). (default: :obj:`(3, 6, 12, 24)`)
        window_size (int, optional): Window side in tokens. (default: :obj:`8`)
        skip_connection_blocks (sequence of int, optional): ConvNeXt blocks per skip.
            (default: :obj:`(2, 2, 2, 0)`)
        mlp_ratio (float, optional): MLP hidden width over block width. (default: :obj:`4.0`)
        time_conditioning (bool, optional): Time-conditioned LayerNorms. (default: :obj:`True`)
        periodic (bool, optional): Periodic domain. (default: :obj:`True`)

    Shapes:
        - **input:** ``x`` :math:`(B, C_{in}, H, W)`, ``lead_time`` :math:`(B)` or a scalar
        - **output:** :math:`(B, C_{out}, H, W)`
    """

    @renamed_arguments(num_heads="heads")
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: int | Sequence[int],
        patch_size: int = 4,
        embed_dim: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 8,
        skip_connection_blocks: Sequence[int] = (2, 2, 2, 0),
        mlp_ratio: float = 4.0,
        time_conditioning: bool = True,
        periodic: bool = True,
    ) -> None:
        super().__init__()
        depths, heads, skip_connection_blocks = _check_stages(
            in_channels, out_channels, patch_size, embed_dim, window_size, depths, heads,
            skip_connection_blocks, mlp_ratio,
        )  # fmt: skip
        n_stages = len(depths)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.image_size = _pair(image_size, "image_size")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depths = depths
        self.heads = heads
        self.window_size = window_size
        self.skip_connection_blocks = skip_connection_blocks
        self.mlp_ratio = float(mlp_ratio)
        self.time_conditioning = check_bool(time_conditioning, "time_conditioning")
        self.periodic = check_bool(periodic, "periodic")
        self.check_shape(self.image_size, name="image_size")

        tc = self.time_conditioning
        widths = [embed_dim * 2**s for s in range(n_stages)]
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.embed_norm = _TimeLayerNorm(embed_dim, tc)

        def stage(s: int) -> nn.ModuleList:
            return nn.ModuleList(
                [_SwinBlock(widths[s], heads[s], mlp_ratio, tc) for _ in range(depths[s])]
            )

        self.encoder = nn.ModuleList([stage(s) for s in range(n_stages)])
        self.merges = nn.ModuleList([_PatchMerging(widths[s], tc) for s in range(n_stages - 1)])
        self.skips = nn.ModuleList(
            [
                nn.ModuleList(
                    [_ConvNeXtBlock(widths[s], tc, self.periodic) for _ in range(n_blocks)]
                )
                for s, n_blocks in enumerate(skip_connection_blocks)
            ]
        )
        self.decoder = nn.ModuleList([stage(s) for s in range(n_stages)])
        self.expands = nn.ModuleList(
            [_PatchExpanding(widths[s + 1], tc) for s in range(n_stages - 1)]
        )
        self.patch_recovery = nn.ConvTranspose2d(
            embed_dim, out_channels, patch_size, stride=patch_size
        )
        self.mixup = _Conv2d(
            out_channels,
            out_channels,
            5,
            padding=2,
            bias=False,
            padding_mode="circular" if self.periodic else "zeros",
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, (_PatchMerging, _PatchExpanding, _ConvNeXtBlock)):
                for linear in module.children():
                    if isinstance(linear, nn.Linear):
                        nn.init.trunc_normal_(linear.weight, std=0.02)
                        if linear.bias is not None:
                            nn.init.zeros_(linear.bias)
                if isinstance(module, _ConvNeXtBlock):
                    nn.init.constant_(module.gamma, 1e-6)
            # blocks and norms reset their own linear maps
            elif module is not self and not isinstance(module, nn.Linear):
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()

    def stage_windows(self, grid: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The effective window and shift on a token grid (Swin: no larger than the grid)."""
        window = tuple(min(self.window_size, g) for g in grid)
        shift = tuple(self.window_size // 2 if g > self.window_size else 0 for g in grid)
        return window, shift

    def check_shape(self, sizes: Sequence[int], name: str = "x") -> None:
        """Raises a ``ValueError`` when the resolution ``(H, W)`` does not fit the model."""
        factor = self.patch_size * 2 ** (len(self.depths) - 1)
        if any(n % factor != 0 for n in sizes):
            raise ValueError(
                f"{name}'s resolution {tuple(sizes)} must be divisible by patch_size * "
                f"2**(len(depths) - 1) = {factor} in both dimensions"
            )
        if not self.periodic:
            return
        grid = [n // self.patch_size for n in sizes]
        for s in range(len(self.depths)):
            window, _ = self.stage_windows(tuple(grid))
            if any(g % w for g, w in zip(grid, window)):
                raise ValueError(
                    f"{name}'s resolution {tuple(sizes)} gives the {tuple(grid)} token grid in "
                    f"stage {s}, which periodic windows of {self.window_size} cannot tile: "
                    f"use sides that are multiples of patch_size * window_size * "
                    f"2**(len(depths) - 1) or periodic=False"
                )
            grid = [g // 2 for g in grid]

    def _blocks(self, blocks: nn.ModuleList, x: Tensor, t: Tensor) -> Tensor:
        window, shift = self.stage_windows((x.size(1), x.size(2)))
        for i, block in enumerate(blocks):
            block_shift = shift if i % 2 == 1 else (0, 0)
            x = block(x, t, window, block_shift, self.periodic)
        return x

    def forward(self, x: Tensor, lead_time: Tensor | float | None = None) -> Tensor:
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
            raise TypeError("x must be a floating-point tensor [B, C, H, W]")
        check_input(x, "x", self.patch_embed.weight, owner="operator")
        if x.dim() != 4:
            raise ValueError(f"x must have shape [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels but the model expects in_channels={self.in_channels}"
            )
        self.check_shape(x.shape[2:])
        if lead_time is None:
            if self.time_conditioning:
                raise ValueError("lead_time is required when time_conditioning=True")
            lead_time = 0.0
        t = _as_time(lead_time, x.size(0), x)

        h = self.patch_embed(x).permute(0, 2, 3, 1)
        h = self.embed_norm(h, t)
        skips = []
        n_stages = len(self.depths)
        for s in range(n_stages):
            h = self._blocks(self.encoder[s], h, t)
            skips.append(h)
            if s < n_stages - 1:
                h = self.merges[s](h, t)
        for s in reversed(range(n_stages)):
            skip = skips[s]
            for block in self.skips[s]:
                skip = block(skip, t)
            if s == n_stages - 1:
                h = skip
            else:
                h = self.expands[s](h, t)
                if len(self.skips[s]) > 0:
                    h = h + skip
            h = self._blocks(self.decoder[s], h, t)
        return self.mixup(self.patch_recovery(h.permute(0, 3, 1, 2)))

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"image_size={self.image_size}, patch_size={self.patch_size}, "
            f"embed_dim={self.embed_dim}, depths={self.depths}, heads={self.heads}, "
            f"window_size={self.window_size}, "
            f"skip_connection_blocks={self.skip_connection_blocks}, "
            f"time_conditioning={self.time_conditioning}, periodic={self.periodic})"
        )
