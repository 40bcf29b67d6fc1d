"""The graph neural operator (GNO): a learned kernel integral over radius neighbourhoods."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gtlib.attention import Edges, Pattern, attend
from gtlib.attention.cache import pattern_cache
from gtlib.validation import check_finite, check_int, check_real

__all__ = ["GNO", "kernel_integral", "radius_pattern"]

TRANSFORM_TYPES = ("linear", "linear_kernelonly", "nonlinear", "nonlinear_kernelonly")

Activation = Callable[[Tensor], Tensor]
LayerParams = Sequence[tuple[Tensor, Tensor | None]]


# ---------------------------------------------------------------------------- neighbourhoods
def radius_pattern(x: Tensor, y: Tensor, radius: float) -> Pattern:
    """Neighbourhoods ``{j : ||x_j - y_i|| <= radius}`` of every query ``y_i``, by cell lists.

    The search is :meth:`gtlib.attention.Pattern.radius`, bipartite when the sender set ``x``
    and the receiver set ``y`` differ, with self loops when they are the same tensor.
    A point at distance exactly ``radius`` is a neighbour, and a point coinciding with the
    query is one too (as in neuraloperator's ``NeighborSearch``).

    Args:
        x: ``[N, d]`` sender (input) points.
        y: ``[M, d]`` receiver (query) points.
        radius: the cutoff, finite and ``> 0``.

    Returns:
        A :class:`~gtlib.attention.Pattern` with ``num_src = N`` and ``num_dst = M``, CSR by
        receiver (``pattern.ptr``, ``pattern.col``).
    """
    _check_points(x, "x")
    _check_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same coordinate dimension, got {x.shape[1]} and {y.shape[1]}"
        )
    radius = _check_radius(radius)
    if x is y:
        return Pattern.radius(x.detach(), radius, loop=True)
    return Pattern.radius(x.detach(), radius, pos_dst=y.detach())


# ---------------------------------------------------------------------------- kernel integral
def _edge_kernel(z1: Tensor, layers: LayerParams, activation: Activation) -> Tensor:
    """The kernel MLP after its first layer: ``L_n(act(... L_1(act(z1))))``."""
    h = z1
    for weight, bias in layers:
        h = F.linear(activation(h), weight, bias)
    return h


def kernel_integral(
    pattern: Pattern,
    src_term: Tensor,
    dst_term: Tensor,
    layers: LayerParams,
    activation: Activation = F.gelu,
    f: Tensor | None = None,
    feature_term: Tensor | None = None,
    multiply: bool = True,
    reduction: str = "sum",
    chunk_size: int | None = 8192,
) -> Tensor:
    r"""The kernel integral of a GNO with its kernel MLP's first layer split per point.

    For every edge :math:`(j \to i)` of ``pattern`` the kernel is
    :math:`k_{ij} = L_n(\sigma(\cdots L_1(\sigma(z_{ij}))))` with the first-layer
    pre-activation :math:`z_{ij} = a_j + b_i\,[+\, c_j]` (``src_term``, ``dst_term`` and, for
    nonlinear kernels, ``feature_term``), and the output is

    .. math::
        \mathrm{out}_i = \operatorname*{reduce}_{j \in N(i)} k_{ij} \odot f_j
        \quad\text{(or } k_{ij} \text{ when not } \texttt{multiply}\text{)},

    with ``reduce`` a sum or a mean (receivers without neighbours get zeros). With a
    ``chunk_size`` the edges are processed in chunks of whole receivers and the backward pass
    recomputes each chunk, so memory stays proportional to ``chunk_size`` times the MLP width
    rather than to the number of edges; ``None`` runs one pass with ordinary autograd. Both are
    the sum/mean case of :func:`gtlib.attention.attend` with the kernel as its ``message_fn``
    (modes ``"chunked"`` and ``"scatter"``): no autograd code of their own.

    Args:
        pattern: neighbourhoods, CSR by receiver (``num_src = N``, ``num_dst = M``).
        src_term: ``[N, h]``; dst_term: ``[M, h]`` (includes the first layer's bias).
        layers: ``(weight, bias)`` of the kernel MLP's layers after the first.
        activation: the MLP's nonlinearity (applied before each layer of ``layers``).
        f: ``[B, N, C_f]`` features, needed when ``multiply``; ``C_f`` is 1 or the kernel's width.
        feature_term: ``[B, N, h]`` first-layer contribution of the features, or ``None``.
        multiply: multiply the kernel by ``f[j]``.
        reduction: ``"sum"`` or ``"mean"``.
        chunk_size: edges per chunk, or ``None``.

    Returns:
        ``[B, M, C]`` (``B = 1`` when neither ``f`` nor ``feature_term`` is used).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if multiply and f is None:
        raise ValueError("f is required when multiply=True")
    width = layers[-1][0].shape[0] if len(layers) else src_term.shape[-1]
    channels = max(width, f.shape[-1]) if multiply else width
    batch = 1
    for t in (f if multiply else None, feature_term):
        if t is not None:
            batch = max(batch, t.shape[0])
    f_used = f if multiply else None
    # Nodes first inside: gathers and scatters then move whole contiguous rows.
    f_used = f_used.transpose(0, 1).contiguous() if f_used is not None else None
    if feature_term is not None:
        feature_term = feature_term.transpose(0, 1).contiguous()

    src_inputs = [src_term] + [t for t in (feature_term, f_used) if t is not None]

    def message(edges: Edges) -> Tensor:
        src, *rest = edges.x_src
        z1 = src + edges.x_dst[0]
        if feature_term is not None:
            z1 = z1.unsqueeze(1) + rest.pop(0)  # [E, B, h]
        k = _edge_kernel(z1, layers, activation)
        k = k if k.dim() == 3 else k.unsqueeze(1)
        return k * rest[0] if multiply else k  # [E, B, C]

    out = attend(
        pattern,
        message_fn=message,
        src_inputs=tuple(src_inputs),
        dst_inputs=(dst_term,),
        reduce=reduction,
        mode="scatter" if chunk_size is None else "chunked",
        chunk_size=chunk_size,
    )
    if out.shape[1:] != (batch, channels):
        out = out.expand(-1, batch, channels)
    return out.transpose(0, 1)


# ---------------------------------------------------------------------------- the layer
def sinusoidal_embedding(
    pos: Tensor, num_frequencies: int, embedding_type: str = "transformer", max_positions=10000
) -> Tensor:
    """neuraloperator's ``SinusoidalEmbedding``: ``[..., d] -> [..., d * 2L]``, ordered by
    coordinate, then frequency, then (sin, cos); frequencies ``max_positions ** (-2k/L)``
    (transformer) or ``2**k * pi`` (NeRF)."""
    k = torch.arange(num_frequencies, device=pos.device, dtype=pos.dtype)
    if embedding_type == "nerf":
        freqs = 2.0**k * math.pi
    else:
        freqs = (1.0 / max_positions) ** (k / num_frequencies * 2)
    angles = pos.unsqueeze(-1) * freqs  # [..., d, L]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-3)


class GNO(nn.Module):
    r"""The graph neural operator layer (kernel integral over radius neighbourhoods) from the
    `"Neural Operator: Graph Kernel Network for Partial Differential Equations"
    <https://arxiv.org/abs/2003.03485>`_ paper (Li et al., 2020), as used by GINO (`"Geometry-
    Informed Neural Operator for Large-Scale 3D PDEs" <https://arxiv.org/abs/2309.00583>`_,
    Li et al., NeurIPS 2023); the same computation as neuraloperator's ``GNOBlock``.

    For query points :math:`y_i` and input points :math:`x_j` carrying features :math:`f_j`,

    .. math::
        \mathrm{out}(y_i) = \operatorname*{reduce}_{x_j \in B_r(y_i)}
        \begin{cases}
        k(x_j, y_i) \odot f_j & \text{linear} \\
        k(x_j, y_i) & \text{linear\_kernelonly (or } f \text{ is None)} \\
        k(x_j, y_i, f_j) \odot f_j & \text{nonlinear} \\
        k(x_j, y_i, f_j) & \text{nonlinear\_kernelonly}
        \end{cases}

    with :math:`B_r(y) = \{x : \|x - y\| \le r\}` (a point coinciding with the query counts),
    ``reduce`` a sum or a mean over the neighbours (zeros for queries without neighbours), and
    :math:`k` an MLP (``kernel``) on the concatenation :math:`[e(x_j), e(y_i)\,[, f_j]]` of the
    optionally embedded coordinates :math:`e` — in neuraloperator's order, so its weights copy
    over (:meth:`load_neuralop_state_dict`). The MLP's first layer is applied per point rather
    than per edge (it is linear, so :math:`W[e(x_j), e(y_i), f_j] = W_x e(x_j) + W_y e(y_i) +
    W_f f_j`), and with ``chunk_size`` the edges are processed in chunks that the backward pass
    recomputes, so no ``[E, hidden]`` activation is ever stored for all edges at once.

    Neighbourhoods come from cell lists (:func:`radius_pattern`) and are kept in the library's
    pattern cache: passing the same, unmodified ``y`` and ``x`` tensors again reuses them.

    .. note::
        The call is ``gno(y, x, f)`` with ``y`` the **queries** and ``x`` the **input points**
        (the paper's :math:`\int k(x, y) f(x)\,dx` evaluated at :math:`y`). neuraloperator's
        ``GNOBlock.forward(y, x, f_y)`` names them the other way round (``y`` the input points,
        ``x`` the queries): ``GNOBlock(...)(y=a, x=b, f_y=f)`` is ``GNO(...)(b, a, f)``.

    Args:
        in_channels (int): Feature channels :math:`C` of :math:`f` (used by the nonlinear
            kernels' input).
        out_channels (int): Output channels (the kernel's width); for ``"linear"`` and
            ``"nonlinear"``, :math:`f` must have ``out_channels`` or 1 channels.
        coord_dim (int): Dimension :math:`d` of the points.
        radius (float): Neighbourhood radius :math:`r > 0`.
        transform_type (str, optional): ``"linear"``, ``"linear_kernelonly"``, ``"nonlinear"``
            or ``"nonlinear_kernelonly"`` (see above); ``"linear_kernelonly"`` ignores ``f``
            (neuraloperator's multiplies by ``f`` when one is given). (default: ``"linear"``)
        channel_mlp_layers (sequence of int, optional): Hidden widths of the kernel MLP; the
            input and output widths are added. (Unlike neuraloperator, a first width equal to the
            input width is not taken as the input width.) (default: ``(128, 256, 128)``)
        channel_mlp_non_linearity (callable, optional): The MLP's activation.
            (default: :func:`torch.nn.functional.gelu`)
        pos_embedding_type (str, optional): ``"transformer"``, ``"nerf"`` or :obj:`None` (raw
            coordinates). (default: ``"transformer"``)
        pos_embedding_channels (int, optional): Frequencies :math:`L` per coordinate of the
            embedding (``2 L d`` embedded channels). (default: :obj:`32`)
        pos_embedding_max_positions (int, optional): ``max_positions`` of the transformer
            embedding. (default: :obj:`10000`)
        reduction (str, optional): ``"sum"`` or ``"mean"``. (default: ``"sum"``)
        chunk_size (int, optional): Edges per chunk (memory-lean, recomputed in backward), or
            :obj:`None` for one pass with ordinary autograd. (default: :obj:`8192`)

    Shapes:
        - **input:** query points ``y`` :math:`(M, d)`, input points ``x`` :math:`(N, d)`,
          features ``f`` :math:`(N, C)`, :math:`(B, N, C)` or :obj:`None`, optional
          ``pattern`` (``num_src = N``, ``num_dst = M``).
        - **output:** :math:`(M, C_{out})`, or :math:`(B, M, C_{out})` for batched ``f``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        coord_dim: int,
        radius: float,
        transform_type: str = "linear",
        channel_mlp_layers: Sequence[int] = (128, 256, 128),
        channel_mlp_non_linearity: Activation = F.gelu,
        pos_embedding_type: str | None = "transformer",
        pos_embedding_channels: int = 32,
        pos_embedding_max_positions: int = 10000,
        reduction: str = "sum",
        chunk_size: int | None = 8192,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("coord_dim", coord_dim),
            ("pos_embedding_channels", pos_embedding_channels),
        ):
            _check_positive_int(value, name)
        if transform_type not in TRANSFORM_TYPES:
            raise ValueError(
                f"transform_type must be one of {TRANSFORM_TYPES}, got {transform_type!r}"
            )
        if pos_embedding_type not in ("transformer", "nerf", None):
            raise ValueError(
                f"pos_embedding_type must be 'transformer', 'nerf' or None, "
                f"got {pos_embedding_type!r}"
            )
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if chunk_size is not None:
            _check_positive_int(chunk_size, "chunk_size")
        hidden = [_check_positive_int(w, "channel_mlp_layers") for w in channel_mlp_layers]

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.coord_dim = coord_dim
        self.radius = _check_radius(radius)
        self.transform_type = transform_type
        self.activation = channel_mlp_non_linearity
        self.pos_embedding_type = pos_embedding_type
        self.pos_embedding_channels = pos_embedding_channels
        self.pos_embedding_max_positions = pos_embedding_max_positions
        self.reduction = reduction
        self.chunk_size = chunk_size

        self.embed_dim = coord_dim * (2 * pos_embedding_channels if pos_embedding_type else 1)
        kernel_in = 2 * self.embed_dim
        if transform_type.startswith("nonlinear"):
            kernel_in += in_channels
        widths = [kernel_in, *hidden, out_channels]
        self.kernel = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.kernel:
            layer.reset_parameters()

    def load_neuralop_state_dict(self, state_dict: dict, strict: bool = True):
        """Loads the weights of a neuraloperator ``GNOBlock`` with the same configuration
        (its ``integral_transform.channel_mlp.fcs.*`` become ``kernel.*``)."""
        prefix = "integral_transform.channel_mlp.fcs."
        mapped = {
            "kernel." + key[len(prefix) :]: value
            for key, value in state_dict.items()
            if key.startswith(prefix)
        }
        return self.load_state_dict(mapped, strict=strict)

    def embed(self, pos: Tensor) -> Tensor:
        """The coordinate embedding :math:`e` (the identity without ``pos_embedding_type``)."""
        if self.pos_embedding_type is None:
            return pos
        return sinusoidal_embedding(
            pos,
            self.pos_embedding_channels,
            self.pos_embedding_type,
            self.pos_embedding_max_positions,
        )

    def neighbors(self, y: Tensor, x: Tensor) -> Pattern:
        """The neighbourhoods of the queries ``y`` among ``x`` (cached while both are unchanged)."""
        key = ("gno.radius", float(self.radius))
        return pattern_cache.get((y, x), key, lambda: radius_pattern(x, y, self.radius))

    def forward(
        self, y: Tensor, x: Tensor, f: Tensor | None = None, pattern: Pattern | None = None
    ) -> Tensor:
        _check_points(y, "y", self.coord_dim)
        _check_points(x, "x", self.coord_dim)
        if y.dtype != x.dtype or y.device != x.device:
            raise TypeError(
                f"y and x must share dtype and device, got {y.dtype}/{y.device} and "
                f"{x.dtype}/{x.device}"
            )
        nonlinear = self.transform_type.startswith("nonlinear")
        multiply = self.transform_type in ("linear", "nonlinear") and f is not None
        batched = False
        if f is not None:
            if not isinstance(f, Tensor) or not f.is_floating_point():
                raise TypeError("f must be a floating-point tensor [N, C] or [B, N, C]")
            if f.dim() not in (2, 3) or f.shape[-2] != x.shape[0]:
                raise ValueError(
                    f"f must have shape [N, C] or [B, N, C] with N = x.shape[0] = {x.shape[0]}, "
                    f"got {tuple(f.shape)}"
                )
            if nonlinear and f.shape[-1] != self.in_channels:
                raise ValueError(f"f has {f.shape[-1]} channels but in_channels={self.in_channels}")
            if multiply and f.shape[-1] not in (1, self.out_channels):
                raise ValueError(
                    f"transform_type={self.transform_type!r} multiplies the kernel by f, so f "
                    f"must have 1 or out_channels={self.out_channels} channels, got {f.shape[-1]}"
                )
            check_finite(f, "f")
            batched = f.dim() == 3
            f = f if batched else f.unsqueeze(0)
        elif nonlinear:
            raise ValueError(f"transform_type={self.transform_type!r} needs features f")
        if pattern is None:
            pattern = self.neighbors(y, x)
        elif not isinstance(pattern, Pattern):
            raise TypeError(f"pattern must be a gtlib Pattern, got {type(pattern).__name__}")
        elif pattern.num_src != x.shape[0] or pattern.num_dst != y.shape[0]:
            raise ValueError(
                f"pattern has (num_src, num_dst) = ({pattern.num_src}, {pattern.num_dst}) but "
                f"x and y have {x.shape[0]} and {y.shape[0]} points"
            )

        first = self.kernel[0]
        e = self.embed_dim
        weight = first.weight
        src_term = F.linear(self.embed(x), weight[:, :e])
        dst_term = F.linear(self.embed(y), weight[:, e : 2 * e], first.bias)
        feature_term = F.linear(f, weight[:, 2 * e :]) if nonlinear else None
        layers = [(layer.weight, layer.bias) for layer in self.kernel[1:]]
        out = kernel_integral(
            pattern,
            src_term,
            dst_term,
            layers,
            self.activation,
            f=f if multiply else None,
            feature_term=feature_term,
            multiply=multiply,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
        )
        if not batched:
            return out.squeeze(0)
        return out.expand(f.shape[0], -1, -1) if out.shape[0] != f.shape[0] else out

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"coord_dim={self.coord_dim}, radius={self.radius}, "
            f"transform_type={self.transform_type!r}, reduction={self.reduction!r})"
        )


# ---------------------------------------------------------------------------- validation
def _check_points(pos: Tensor, name: str, dim: int | None = None) -> None:
    if not isinstance(pos, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [n, d], got {type(pos).__name__}")
    if not pos.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {pos.dtype}")
    if pos.dim() != 2 or (dim is not None and pos.shape[1] != dim):
        want = f"[n, {dim}]" if dim is not None else "[n, d]"
        raise ValueError(f"{name} must have shape {want}, got {tuple(pos.shape)}")
    if pos.numel() and not bool(torch.isfinite(pos).all()):
        raise ValueError(f"{name} contains non-finite coordinates")


def _check_radius(radius: float) -> float:
    return check_real(radius, "radius", positive=True)


def _check_positive_int(value: int, name: str) -> int:
    return check_int(value, name, minimum=1)
