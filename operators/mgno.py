"""The multigrid neural operator (MgNO) on regular grids in 1 to 3 dimensions."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from gtlib.validation import check_choice, check_input, check_int, renamed_arguments, resolve_act

__all__ = ["MgNO"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
PADDING_MODES = ("zeros", "circular", "reflect")


def _per_level(value: int | Sequence[int], n_levels: int, name: str) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        counts = (int(value),) * n_levels
    elif isinstance(value, Sequence) and not isinstance(value, str):
        counts = tuple(check_int(v, name) for v in value)
    else:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {value!r}")
    if len(counts) != n_levels:
        raise ValueError(f"{name} must have n_levels={n_levels} entries, got {len(counts)}")
    if any(c < 0 for c in counts):
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return counts


class _VCycle(nn.Module):
    r"""One multigrid V-cycle with learned convolutions, a linear operator :math:`f \mapsto u`.

    On level :math:`\ell` (grid :math:`\ell` halves the grid of :math:`\ell - 1`), starting from
    :math:`u^{\ell} = 0`:

    .. math::
        u^{\ell} &\leftarrow u^{\ell} + S^{\ell}_i\,(f^{\ell} - A^{\ell} u^{\ell})
            \quad (i = 1, \dots, \nu^{\ell}_{\text{pre}}), \\
        f^{\ell+1} &= R^{\ell}\,(f^{\ell} - A^{\ell} u^{\ell}), \quad u^{\ell+1} = \text{V-cycle
            on level } \ell + 1, \\
        u^{\ell} &\leftarrow u^{\ell} + P^{\ell} u^{\ell+1}, \quad \text{then }
            \nu^{\ell}_{\text{post}} \text{ more smoothing steps,}

    with 3x3 convolutions :math:`A^{\ell}` (one per level, :math:`C_u \to C_f`) and
    :math:`S^{\ell}_i` (one per step, :math:`C_f \to C_u`), stride-2 3x3 restrictions
    :math:`R^{\ell}` (:math:`C_f \to C_f`) and prolongations :math:`P^{\ell}`
    (``ConvTranspose`` with kernel 4, stride 2, padding 1, :math:`C_u \to C_u`). No biases.
    """

    def __init__(
        self,
        f_channels: int,
        u_channels: int,
        pre: tuple[int, ...],
        post: tuple[int, ...],
        padding_mode: str,
        dim: int,
    ) -> None:
        super().__init__()
        conv, conv_t = _CONV[dim], _CONV_T[dim]
        self.pre, self.post = pre, post
        self.padding_mode = padding_mode
        self.dim = dim
        n_levels = len(pre)

        def conv3(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
            return conv(c_in, c_out, 3, stride, 1, bias=False, padding_mode=padding_mode)

        self.A = nn.ModuleList([conv3(u_channels, f_channels) for _ in range(n_levels)])
        self.S_pre = nn.ModuleList(
            [nn.ModuleList([conv3(f_channels, u_channels) for _ in range(n)]) for n in pre]
        )
        self.S_post = nn.ModuleList(
            [nn.ModuleList([conv3(f_channels, u_channels) for _ in range(n)]) for n in post]
        )
        self.R = nn.ModuleList(
            [conv3(f_channels, f_channels, stride=2) for _ in range(n_levels - 1)]
        )
        # ConvTranspose has no padding modes: the coarse input is padded by one cell with the
        # boundary condition first and the transposed convolution runs without padding.
        self.P = nn.ModuleList(
            [conv_t(u_channels, u_channels, 4, 2, 0, bias=False) for _ in range(n_levels - 1)]
        )

    def prolong(self, level: int, u: Tensor, fine_shape: Sequence[int]) -> Tensor:
        """``ConvTranspose(kernel 4, stride 2, padding 1)`` with the boundary condition, cropped
        to ``fine_shape`` (odd fine grids are one point shorter than twice the coarse grid)."""
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        u = F.pad(u, (1, 1) * self.dim, mode=mode)
        u = self.P[level](u)
        index = (Ellipsis, *(slice(3, 3 + n) for n in fine_shape))
        return u[index]

    def smooth(self, level: int, smoothers: nn.ModuleList, u: Tensor | None, f: Tensor):
        for S in smoothers:
            u = S(f) if u is None else u + S(f - self.A[level](u))
        return u

    def forward(self, f: Tensor, level: int = 0) -> Tensor | None:
        u = self.smooth(level, self.S_pre[level], None, f)
        if level < len(self.pre) - 1:
            residual = f if u is None else f - self.A[level](u)
            coarse = self.forward(self.R[level](residual), level + 1)
            if coarse is not None:
                correction = self.prolong(level, coarse, f.shape[2:])
                u = correction if u is None else u + correction
        return self.smooth(level, self.S_post[level], u, f)


class MgNO(nn.Module):
    r"""The multigrid neural operator from the `"MgNO: Efficient Parameterization of Linear
    Operators via Multigrid" <https://arxiv.org/abs/2310.19809>`_ paper (He, Liu and Xu,
    ICLR 2024).

    Each layer is a "neuron" whose linear operator is a multigrid V-cycle:

    .. math::
        u_{\ell+1} = \sigma\big(\mathcal{V}_\ell(u_\ell) + W_\ell u_\ell + b_\ell\big),
        \qquad \ell = 0, \dots, L - 1, \qquad G(a) = Q\,u_L, \quad u_0 = a,

    where :math:`\mathcal{V}_\ell` is a V-cycle (see below) that treats its input as the
    right-hand side :math:`f` and returns the approximate "solution" :math:`u`, :math:`W_\ell` is
    a pointwise (1x1) convolution, :math:`b_\ell` a per-channel bias and :math:`Q` a pointwise
    projection to the output channels. There is no lifting: the first V-cycle takes the input
    channels as its right-hand side.

    **V-cycle** on levels :math:`k = 0, \dots, K - 1` (level :math:`k + 1` halves the grid of
    level :math:`k`), starting from :math:`u^k = 0`: ``n_smoothing[k]`` smoothing steps
    :math:`u^k \leftarrow u^k + S^k_i (f^k - A^k u^k)` with 3x3 convolutions (one :math:`A^k` per
    level, one :math:`S^k_i` per step); restriction of the residual
    :math:`f^{k+1} = R^k (f^k - A^k u^k)` by a stride-2 3x3 convolution; the cycle on level
    :math:`k + 1`; coarse-grid correction :math:`u^k \leftarrow u^k + P^k u^{k+1}` by a
    transposed convolution (kernel 4, stride 2, padding 1); ``n_post_smoothing[k]`` more
    smoothing steps (none on the coarsest level). The V-cycle's convolutions have no bias, so
    :math:`\mathcal{V}_\ell` is linear.

    **Boundary conditions** enter through the padding of every convolution: ``"zeros"``
    (Dirichlet, e.g. Darcy flow), ``"circular"`` (periodic, e.g. Navier–Stokes on the torus) or
    ``"reflect"``. The prolongation pads its coarse input by one cell the same way.

    **Grid sizes.** Every level has :math:`\lceil n / 2 \rceil` points of the level above
    (stride 2, padding 1), so coarse points sit on the even fine points. With ``"circular"``
    each spatial size must be divisible by :math:`2^{K-1}` (then the model commutes with
    periodic shifts by multiples of :math:`2^{K-1}`). With ``"zeros"`` or ``"reflect"`` any size
    whose coarsest level keeps at least 2 points works, i.e.
    :math:`\lceil n / 2^{K-1} \rceil \ge 2` or :math:`n > 2^{K-1}` (17 or more for the default
    :math:`K = 5`): cell-centred grids
    :math:`n = m 2^{K-1}` (e.g. 64) halve exactly, vertex-centred grids
    :math:`n = m 2^{K-1} + 1` (e.g. 65, 421 in the Darcy benchmark) keep the boundary nodes on
    every level (coarse nodes coincide with fine nodes), and other sizes such as 63 are halved
    with rounding up; the prolongation's output (twice the coarse size) is cropped to the fine
    size.

    **Resolution.** The V-cycle's stencils are 3x3 on whatever grid they see, so the learned
    operator is tied to the training grid spacing: unlike :class:`~gtlib.operators.FNO`, a
    model trained at one resolution does not transfer zero-shot to another (on generated Darcy
    flow, trained at 64x64: relative L2 0.015 at 64x64, 0.42 at 127x127). Train at the
    resolution of use.

    **Defaults** follow the published Darcy configuration (``num_layer=5``,
    ``num_channel_u=24``, five levels with one pre- and one post-smoothing step per level):
    563,101 parameters for one input and one output channel (the paper reports 0.57M
    for Darcy).

    Args:
        in_channels (int): Input function channels.
        out_channels (int): Output function channels.
        hidden_channels (int, optional): Channels of :math:`u` in every layer.
            (default: :obj:`24`)
        n_layers (int, optional): Number of nonlinear V-cycle layers :math:`L`.
            (default: :obj:`5`)
        n_levels (int, optional): Grid levels :math:`K` of each V-cycle. (default: :obj:`5`)
        n_smoothing (int or sequence of int, optional): Pre-smoothing steps per level, one for
            all levels or ``n_levels`` numbers; the coarsest level needs at least one.
            (default: :obj:`1`)
        n_post_smoothing (int or sequence of int, optional): Post-smoothing steps after the
            coarse-grid correction, per level (the coarsest level's entry must be 0 when given
            per level; an int applies to all finer levels). (default: :obj:`1`)
        padding_mode (str, optional): ``"zeros"``, ``"circular"`` or ``"reflect"``.
            (default: ``"zeros"``)
        dim (int, optional): Spatial dimensions, 1 to 3. (default: :obj:`2`)
        act (str or callable, optional): Pointwise nonlinearity :math:`\sigma`, a name PyG's
            ``activation_resolver`` knows or a callable (``activation`` is its deprecated name).
            (default: :func:`torch.nn.functional.gelu`)

    Shapes:
        - **input:** :math:`(B, C_{in}, N_1, \dots, N_d)`
        - **output:** :math:`(B, C_{out}, N_1, \dots, N_d)`
    """

    @renamed_arguments(activation="act")
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 24,
        n_layers: int = 5,
        n_levels: int = 5,
        n_smoothing: int | Sequence[int] = 1,
        n_post_smoothing: int | Sequence[int] = 1,
        padding_mode: str = "zeros",
        dim: int = 2,
        act: str | Callable[[Tensor], Tensor] = "gelu",
    ) -> None:
        super().__init__()
        in_channels, out_channels, hidden_channels, n_layers, n_levels = (
            check_int(value, name, minimum=1)
            for name, value in (
                ("in_channels", in_channels),
                ("out_channels", out_channels),
                ("hidden_channels", hidden_channels),
                ("n_layers", n_layers),
                ("n_levels", n_levels),
            )
        )
        dim = check_int(dim, "dim", minimum=1, maximum=3)
        check_choice(padding_mode, "padding_mode", PADDING_MODES)
        pre = _per_level(n_smoothing, n_levels, "n_smoothing")
        if isinstance(n_post_smoothing, numbers.Integral) and not isinstance(
            n_post_smoothing, bool
        ):
            n_post_smoothing = (n_post_smoothing,) * (n_levels - 1) + (0,)
        post = _per_level(n_post_smoothing, n_levels, "n_post_smoothing")
        if pre[-1] < 1:
            raise ValueError(f"n_smoothing must be at least 1 on the coarsest level, got {pre}")
        if post[-1] != 0:
            raise ValueError(
                f"n_post_smoothing must be 0 on the coarsest level (no coarse-grid correction "
                f"there), got {post}"
            )

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.n_levels = n_levels
        self.n_smoothing = pre
        self.n_post_smoothing = post
        self.padding_mode = padding_mode
        self.dim = dim
        self.act = resolve_act(act)

        conv = _CONV[dim]
        channels = [in_channels] + [hidden_channels] * n_layers
        self.vcycles = nn.ModuleList(
            [
                _VCycle(channels[i], hidden_channels, pre, post, padding_mode, dim)
                for i in range(n_layers)
            ]
        )
        self.linears = nn.ModuleList(
            [conv(channels[i], hidden_channels, 1) for i in range(n_layers)]
        )
        self.projection = conv(hidden_channels, out_channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def check_shape(self, sizes: Sequence[int]) -> None:
        """Raises a ``ValueError`` when the spatial ``sizes`` do not fit ``n_levels``."""
        factor = 2 ** (self.n_levels - 1)
        for d, n in enumerate(sizes):
            if self.padding_mode == "circular":
                if n % factor != 0:
                    raise ValueError(
                        f"x's spatial size {n} (dimension {d}) must be divisible by "
                        f"2**(n_levels - 1) = {factor} with padding_mode='circular'"
                    )
                continue
            coarsest = n
            for _ in range(self.n_levels - 1):
                coarsest = (coarsest + 1) // 2
            if coarsest < 2:
                raise ValueError(
                    f"x's spatial size {n} (dimension {d}) is too small for n_levels="
                    f"{self.n_levels}: each level has ceil(n / 2) points of the level above, "
                    f"so the coarsest grid has ceil({n} / 2**(n_levels - 1)) = {coarsest} "
                    f"point(s) but needs at least 2; allowed sizes are > 2**(n_levels - 1) = "
                    f"{factor}, i.e. >= {factor + 1} (or use fewer levels)"
                )

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
            raise TypeError("x must be a floating-point tensor [B, C, *spatial]")
        check_input(x, "x", self.projection.weight, owner="operator")
        if x.dim() != self.dim + 2:
            raise ValueError(
                f"x must have shape [B, C, *spatial] with {self.dim} spatial dimension(s), "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels but the model expects in_channels={self.in_channels}"
            )
        self.check_shape(x.shape[2:])
        for vcycle, linear in zip(self.vcycles, self.linears):
            x = self.act(vcycle(x) + linear(x))
        return self.projection(x)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"hidden_channels={self.hidden_channels}, n_layers={self.n_layers}, "
            f"n_levels={self.n_levels}, n_smoothing={self.n_smoothing}, "
            f"n_post_smoothing={self.n_post_smoothing}, padding_mode={self.padding_mode!r})"
        )
