"""The graph neural operator (GNO): a learned kernel integral over radius neighbourhoods."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gtlib.attention import Edges, Pattern, attend
from gtlib.attention.cache import pattern_cache
from gtlib.validation import (
    check_choice,
    check_finite,
    check_int,
    check_real,
    describe,
    renamed_arguments,
    resolve_act,
)

__all__ = ["GNO", "kernel_integral", "radius_pattern"]

TRANSFORM_TYPES = ("linear", "linear_kernelonly", "nonlinear", "nonlinear_kernelonly")

Activation = Callable[[Tensor], Tensor]
LayerParams = Sequence[tuple[Tensor, Tensor | None]]


# ---------------------------------------------------------------------------- neighbourhoods
@renamed_arguments(x="data", y="queries")
def radius_pattern(data: Tensor, queries: Tensor, radius: float) -> Pattern:
    """Neighbourhoods ``{j : ||data_j - queries_i|| <= radius}`` of every query, by cell lists.

    The names and order are neuraloperator's ``NeighborSearch(data, queries, radius)``. The
    search is :meth:`gtlib.attention.Pattern.radius`, bipartite when the sender set ``data``
    and the receiver set ``queries`` differ, with self loops when they are the same tensor.
    A point at distance exactly ``radius`` is a neighbour, and a point coinciding with the
    query is one too (as in neuraloperator's ``NeighborSearch``). (``x`` and ``y`` are the
    deprecated keyword names of ``data`` and ``queries``; the positional order is unchanged.)

    Args:
        data: ``[N, d]`` sender (input) points.
        queries: ``[M, d]`` receiver (query) points.
        radius: the cutoff, finite and ``> 0``.

    Returns:
        A :class:`~gtlib.attention.Pattern` with ``num_src = N`` and ``num_dst = M``, CSR by
        receiver (``pattern.ptr``, ``pattern.col``).
    """
    _check_points(data, "data")
    _check_points(queries, "queries")
    if data.shape[1] != queries.shape[1]:
        raise ValueError(
            f"data and queries must have the same coordinate dimension, got {data.shape[1]} "
            f"and {queries.shape[1]}"
        )
    radius = _check_radius(radius)
    if data is queries:
        return Pattern.radius(data.detach(), radius, loop=True)
    return Pattern.radius(data.detach(), radius, pos_dst=queries.detach())


# ---------------------------------------------------------------------------- kernel integral
def _edge_kernel(z1: Tensor, layers: LayerParams, activation: Activation) -> Tensor:
    """The kernel MLP after its first layer: ``L_n(act(... L_1(act(z1))))``."""
    h = z1
    for weight, bias in layers:
        h = F.linear(activation(h), weight, bias)
    return h


@renamed_arguments(f="f_y")
def kernel_integral(
    pattern: Pattern,
    src_term: Tensor,
    dst_term: Tensor,
    layers: LayerParams,
    activation: Activation = F.gelu,
    f_y: Tensor | None = None,
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
        f_y: ``[B, N, C_f]`` features on the input points (the senders), needed when
            ``multiply``; ``C_f`` is 1 or the kernel's width (``f`` is its deprecated name).
        feature_term: ``[B, N, h]`` first-layer contribution of the features, or ``None``.
        multiply: multiply the kernel by ``f_y[j]``.
        reduction: ``"sum"`` or ``"mean"``.
        chunk_size: edges per chunk, or ``None``.

    Returns:
        ``[B, M, C]`` (``B = 1`` when neither ``f_y`` nor ``feature_term`` is used).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if multiply and f_y is None:
        raise ValueError("f_y is required when multiply=True")
    width = layers[-1][0].shape[0] if len(layers) else src_term.shape[-1]
    channels = max(width, f_y.shape[-1]) if multiply else width
    batch = 1
    for t in (f_y if multiply else None, feature_term):
        if t is not None:
            batch = max(batch, t.shape[0])
    f_used = f_y if multiply else None
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


# ---------------------------------------------------------------------------- argument order
_UNSET: Any = object()  # an argument left out (``f_y=None`` passed explicitly is a choice)

_ORDER = (
    "GNO's points follow neuraloperator's GNOBlock after gtlib 0.1.0: y are the input points "
    "(where f_y lives) and x the queries; before, gno(y, x, f) took the queries first"
)


def _points(args: tuple, y: Tensor | None, x: Tensor | None, where: str) -> tuple:
    """``(y, x, rest)`` of a call: points by keyword, or positionally when they are the same
    tensor (the only positional call the change of order cannot make wrong)."""
    rest: tuple = ()
    if args:
        if len(args) < 2 or args[0] is not args[1] or y is not None or x is not None:
            call = "gno" if where.endswith("forward") else "gno.neighbors"
            raise TypeError(
                f"{where} takes its points by keyword: {call}(y=<input points>, "
                f"x=<query points>, ...). {_ORDER}, so a positional call could silently swap "
                "them (positional points are accepted only when y and x are the same tensor)"
            )
        y = x = args[0]
        rest = args[2:]
    if y is None or x is None:
        missing = " and ".join(n for n, v in (("y", y), ("x", x)) if v is None)
        raise TypeError(f"{where} needs {missing} (y the input points, x the queries)")
    return y, x, rest


def _previous_order(args: tuple, y: Any, x: Any, f_y: Any, pattern: Any, f: Any) -> tuple:
    """A call with the deprecated ``f=``: read in the previous order (queries first)."""
    if f_y is not _UNSET:
        raise TypeError("pass f_y only (f is its deprecated name)")
    warnings.warn(
        f"GNO.forward(f=...) is deprecated and read in the previous order (y the queries, x "
        f"the input points). {_ORDER}: write gno(y=<input points>, x=<queries>, f_y=f)",
        FutureWarning,
        stacklevel=6,  # the caller of gno(...)
    )
    if len(args) > 2 or (len(args) >= 1 and y is not None) or (len(args) == 2 and x is not None):
        raise TypeError("GNO.forward(f=...) takes y and x once each, at most both positionally")
    queries, points = (list(args) + [y, x][len(args) :])[:2]
    if queries is None or points is None:
        raise TypeError("GNO.forward needs y and x")
    return points, queries, f, pattern


def _resolve_call(args: tuple, y: Any, x: Any, f_y: Any, pattern: Any, f: Any) -> tuple:
    """``GNO.forward``'s ``(y, x, f_y, pattern)`` under neuraloperator's order."""
    if f is not _UNSET:
        return _previous_order(args, y, x, f_y, pattern, f)
    y, x, rest = _points(args, y, x, "GNO.forward")
    if len(rest) > 2:
        raise TypeError(f"GNO.forward takes at most 4 positional arguments, got {len(args)}")
    if rest and f_y is not _UNSET:
        raise TypeError("GNO.forward got f_y both positionally and by keyword")
    if len(rest) > 1 and pattern is not None:
        raise TypeError("GNO.forward got pattern both positionally and by keyword")
    f_y = rest[0] if rest else f_y
    pattern = rest[1] if len(rest) > 1 else pattern
    if f_y is _UNSET:
        if y is not x:
            warnings.warn(
                f"{_ORDER}. Pass f_y explicitly (f_y=None for the integral of the kernel "
                "alone) to confirm the new order and silence this warning",
                FutureWarning,
                stacklevel=5,  # the caller of gno(...)
            )
        f_y = None
    return y, x, f_y, pattern


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

    For input points :math:`y_j` carrying features :math:`f_j` and query points :math:`x_i`
    (neuraloperator's names),

    .. math::
        \mathrm{out}(x_i) = \operatorname*{reduce}_{y_j \in B_r(x_i)}
        \begin{cases}
        k(y_j, x_i) \odot f_j & \text{linear} \\
        k(y_j, x_i) & \text{linear\_kernelonly (or } f \text{ is None)} \\
        k(y_j, x_i, f_j) \odot f_j & \text{nonlinear} \\
        k(y_j, x_i, f_j) & \text{nonlinear\_kernelonly}
        \end{cases}

    with :math:`B_r(x) = \{y : \|y - x\| \le r\}` (a point coinciding with the query counts),
    ``reduce`` a sum or a mean over the neighbours (zeros for queries without neighbours), and
    :math:`k` an MLP (``kernel``) on the concatenation :math:`[e(y_j), e(x_i)\,[, f_j]]` of the
    optionally embedded coordinates :math:`e` — in neuraloperator's order, so its weights copy
    over (:meth:`load_neuralop_state_dict`). The MLP's first layer is applied per point rather
    than per edge (it is linear, so :math:`W[e(y_j), e(x_i), f_j] = W_y e(y_j) + W_x e(x_i) +
    W_f f_j`), and with ``chunk_size`` the edges are processed in chunks that the backward pass
    recomputes, so no ``[E, hidden]`` activation is ever stored for all edges at once.

    Neighbourhoods come from cell lists (:func:`radius_pattern`) and are kept in the library's
    pattern cache: passing the same, unmodified ``y`` and ``x`` tensors again reuses them.

    .. note::
        **Argument order: neuraloperator's.** The call is ``gno(y=points, x=queries,
        f_y=features)``, exactly ``GNOBlock.forward(y, x, f_y)``: ``y`` the input points
        (where ``f_y`` lives), ``x`` the queries. Up to gtlib 0.1.0 it was ``gno(y, x, f)`` with
        ``y`` the *queries*, the reverse. A positional call cannot tell the two orders apart,
        so for one deprecation cycle:

        * the points must be passed **by keyword** (``gno(a, b, f)`` raises a
          :class:`TypeError` explaining the change), except when ``y`` and ``x`` are the same
          tensor, where the order does not matter (``gno(pos, pos, f_y)``);
        * a call with the old keyword ``f=`` is read in the **old** order (``y`` the queries)
          and warns (:class:`FutureWarning`), so old keyword code keeps its results;
        * a keyword call with distinct ``y`` and ``x`` that passes neither ``f_y`` nor ``f``
          (a kernel-only integral, which looks the same in both orders) warns
          (:class:`FutureWarning`) until ``f_y`` is passed explicitly (``f_y=None``).

        :meth:`neighbors` takes its points the same way; :func:`radius_pattern` keeps its
        positional order under neuraloperator's ``NeighborSearch`` names ``(data, queries)``.

    Args:
        in_channels (int): Feature channels :math:`C` of :math:`f_y` (used by the nonlinear
            kernels' input).
        out_channels (int): Output channels (the kernel's width); for ``"linear"`` and
            ``"nonlinear"``, :math:`f_y` must have ``out_channels`` or 1 channels.
        coord_dim (int): Dimension :math:`d` of the points.
        radius (float): Neighbourhood radius :math:`r > 0`.
        transform_type (str, optional): ``"linear"``, ``"linear_kernelonly"``, ``"nonlinear"``
            or ``"nonlinear_kernelonly"`` (see above); ``"linear_kernelonly"`` ignores ``f_y``
            (neuraloperator's multiplies by ``f_y`` when one is given). (default: ``"linear"``)
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
        - **input:** input points ``y`` :math:`(N, d)`, query points ``x`` :math:`(M, d)`,
          features ``f_y`` :math:`(N, C)`, :math:`(B, N, C)` or :obj:`None`, optional
          ``pattern`` (``num_src = N``, ``num_dst = M``).
        - **output:** :math:`(M, C_{out})`, or :math:`(B, M, C_{out})` for batched ``f_y``.
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
        in_channels = _check_positive_int(in_channels, "in_channels")
        out_channels = _check_positive_int(out_channels, "out_channels")
        coord_dim = _check_positive_int(coord_dim, "coord_dim")
        pos_embedding_channels = _check_positive_int(
            pos_embedding_channels, "pos_embedding_channels"
        )
        pos_embedding_max_positions = _check_positive_int(
            pos_embedding_max_positions, "pos_embedding_max_positions"
        )
        transform_type = check_choice(transform_type, "transform_type", TRANSFORM_TYPES)
        pos_embedding_type = check_choice(
            pos_embedding_type, "pos_embedding_type", ("transformer", "nerf", None)
        )
        reduction = check_choice(reduction, "reduction", ("sum", "mean"))
        if chunk_size is not None:
            chunk_size = _check_positive_int(chunk_size, "chunk_size")
        hidden = _check_widths(channel_mlp_layers, "channel_mlp_layers")
        channel_mlp_non_linearity = resolve_act(
            channel_mlp_non_linearity, "channel_mlp_non_linearity"
        )

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

    def neighbors(self, *args: Tensor, y: Tensor | None = None, x: Tensor | None = None) -> Pattern:
        """The neighbourhoods of the queries ``x`` among the input points ``y`` (cached while
        both are unchanged), as :meth:`forward` names them: ``gno.neighbors(y=..., x=...)``
        (positionally only when both are the same tensor)."""
        y, x, rest = _points(args, y, x, "GNO.neighbors")
        if rest:
            raise TypeError(f"GNO.neighbors takes 2 positional arguments, got {len(args)}")
        key = ("gno.radius", float(self.radius))
        return pattern_cache.get((x, y), key, lambda: radius_pattern(y, x, self.radius))

    def forward(
        self,
        *args: Tensor,
        y: Tensor | None = None,
        x: Tensor | None = None,
        f_y: Tensor | None | object = _UNSET,
        pattern: Pattern | None = None,
        f: Tensor | None | object = _UNSET,
    ) -> Tensor:
        y, x, f_y, pattern = _resolve_call(args, y, x, f_y, pattern, f)
        _check_points(y, "y", self.coord_dim)
        _check_points(x, "x", self.coord_dim)
        if y.dtype != x.dtype or y.device != x.device:
            raise TypeError(
                f"y and x must share dtype and device, got {y.dtype}/{y.device} and "
                f"{x.dtype}/{x.device}"
            )
        nonlinear = self.transform_type.startswith("nonlinear")
        multiply = self.transform_type in ("linear", "nonlinear") and f_y is not None
        batched = f_y is not None and f_y.dim() == 3
        if f_y is not None:
            f_y = self._check_features(f_y, y, multiply)
        elif nonlinear:
            raise ValueError(f"transform_type={self.transform_type!r} needs features f_y")
        pattern = self._check_pattern(pattern, y, x)
        out = self._integrate(pattern, y, x, f_y, multiply)
        if not batched:
            return out.squeeze(0)
        return out.expand(f_y.shape[0], -1, -1) if out.shape[0] != f_y.shape[0] else out

    def _check_features(self, f_y: Tensor, y: Tensor, multiply: bool) -> Tensor:
        """``f_y`` checked against the input points ``y``, as ``[B, N, C]``."""
        if not isinstance(f_y, Tensor) or not f_y.is_floating_point():
            raise TypeError(
                f"f_y must be a floating-point tensor [N, C] or [B, N, C], got {describe(f_y)}"
            )
        if f_y.dim() not in (2, 3) or f_y.shape[-2] != y.shape[0]:
            raise ValueError(
                f"f_y must have shape [N, C] or [B, N, C] with N = y.shape[0] = {y.shape[0]} "
                f"(f_y lives on the input points y), got {tuple(f_y.shape)}"
            )
        if self.transform_type.startswith("nonlinear") and f_y.shape[-1] != self.in_channels:
            raise ValueError(f"f_y has {f_y.shape[-1]} channels but in_channels={self.in_channels}")
        if multiply and f_y.shape[-1] not in (1, self.out_channels):
            raise ValueError(
                f"transform_type={self.transform_type!r} multiplies the kernel by f_y, so f_y "
                f"must have 1 or out_channels={self.out_channels} channels, got {f_y.shape[-1]}"
            )
        check_finite(f_y, "f_y")
        return f_y if f_y.dim() == 3 else f_y.unsqueeze(0)

    def _check_pattern(self, pattern: Pattern | None, y: Tensor, x: Tensor) -> Pattern:
        """The given ``pattern`` checked against the points, or the cached neighbourhoods."""
        if pattern is None:
            return self.neighbors(y=y, x=x)
        if not isinstance(pattern, Pattern):
            raise TypeError(f"pattern must be a gtlib Pattern, got {type(pattern).__name__}")
        if pattern.num_src != y.shape[0] or pattern.num_dst != x.shape[0]:
            raise ValueError(
                f"pattern has (num_src, num_dst) = ({pattern.num_src}, {pattern.num_dst}) but "
                f"y (input points) and x (queries) have {y.shape[0]} and {x.shape[0]} points"
            )
        return pattern

    def _integrate(
        self, pattern: Pattern, y: Tensor, x: Tensor, f_y: Tensor | None, multiply: bool
    ) -> Tensor:
        """The kernel integral with the kernel's first layer split per point: ``[B, M, C]``."""
        first = self.kernel[0]
        e = self.embed_dim
        weight = first.weight
        src_term = F.linear(self.embed(y), weight[:, :e])
        dst_term = F.linear(self.embed(x), weight[:, e : 2 * e], first.bias)
        nonlinear = self.transform_type.startswith("nonlinear")
        feature_term = F.linear(f_y, weight[:, 2 * e :]) if nonlinear else None
        layers = [(layer.weight, layer.bias) for layer in self.kernel[1:]]
        return kernel_integral(
            pattern,
            src_term,
            dst_term,
            layers,
            self.activation,
            f_y=f_y if multiply else None,
            feature_term=feature_term,
            multiply=multiply,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
        )

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


def _check_widths(widths: Sequence[int], name: str) -> list[int]:
    """A sequence of positive ints (hidden widths)."""
    if isinstance(widths, (str, bytes, Tensor)) or not isinstance(widths, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {describe(widths)}")
    return [check_int(w, f"{name}[{i}]", minimum=1) for i, w in enumerate(widths)]
