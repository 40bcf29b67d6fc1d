"""The geometry-informed neural operator (GINO): GNO -> FNO on a latent grid -> GNO."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from gtlib.attention.cache import pattern_cache
from gtlib.validation import (
    check_choice,
    check_finite,
    check_int,
    check_real,
    check_tensor,
    describe,
    renamed_arguments,
    resolve_act,
)

from .fno import FNO
from .gno import GNO, TRANSFORM_TYPES, _check_points, _check_widths

__all__ = ["GINO"]

Box = tuple[Sequence[float], Sequence[float]] | Tensor


class GINO(nn.Module):
    r"""The geometry-informed neural operator from the `"Geometry-Informed Neural Operator for
    Large-Scale 3D PDEs" <https://arxiv.org/abs/2309.00583>`_ paper (Li et al., NeurIPS 2023),
    with the layout of neuraloperator's ``GINO``.

    .. math::
        v = \mathrm{GNO}_{in}(f)\big|_{\text{grid}}, \qquad
        w = \mathrm{FNO}(v), \qquad
        u(y) = Q\big(\mathrm{GNO}_{out}(w)(y)\big),

    * :math:`\mathrm{GNO}_{in}` (:class:`~gtlib.operators.gno.GNO`, mean over neighbours)
      integrates the input function :math:`f`, given at scattered points, onto a regular latent
      grid of ``latent_resolution`` points spanning ``latent_box`` (both ends included;
      default :math:`[0, 1]^d`), producing ``gno_in_channels`` channels;
    * an FNO (:class:`~gtlib.operators.FNO`) maps them to ``fno_hidden_channels`` channels on
      the grid;
    * :math:`\mathrm{GNO}_{out}` (sum over neighbours, as in neuraloperator) integrates the
      latent function from the grid points to the output points, and a pointwise MLP
      :math:`Q` projects to ``out_channels``.

    The neighbourhoods of both GNOs are cached per geometry: calling again with the same,
    unmodified ``input_pos`` / ``output_pos`` tensors (and the same latent box) reuses them.

    Args:
        in_channels (int): Channels of the input function.
        out_channels (int): Channels of the output function.
        latent_resolution (int or tuple of int): Latent grid points per dimension; its length
            sets the dimension :math:`d` (an ``int`` needs ``coord_dim``).
        radius (float): Radius of the input GNO.
        out_radius (float, optional): Radius of the output GNO. (default: ``radius``)
        coord_dim (int, optional): Dimension when ``latent_resolution`` is an ``int``.
            (default: :obj:`None`)
        gno_in_channels (int, optional): Channels produced by the input GNO (for nonlinear
            input transforms, ``in_channels``). (default: :obj:`3`)
        in_gno_transform_type (str, optional): Input GNO transform. (default: ``"linear"``)
        out_gno_transform_type (str, optional): Output GNO transform. (default: ``"linear"``)
        in_gno_channel_mlp_layers (sequence of int, optional): Input kernel MLP hidden widths.
            (default: ``(80, 80, 80)``)
        out_gno_channel_mlp_layers (sequence of int, optional): Output kernel MLP hidden widths.
            (default: ``(512, 256)``)
        gno_pos_embedding_type (str, optional): Coordinate embedding of both GNOs.
            (default: ``"transformer"``)
        gno_pos_embedding_channels (int, optional): Embedding frequencies per coordinate.
            (default: :obj:`32`)
        in_gno_reduction / out_gno_reduction (str, optional): ``"mean"`` / ``"sum"``.
        gno_chunk_size (int, optional): Edge chunk size of both GNOs (see
            :class:`~gtlib.operators.gno.GNO`). (default: :obj:`8192`)
        fno_n_modes (int or tuple of int, optional): Kept Fourier modes per dimension.
            (default: :obj:`8` per dimension)
        fno_hidden_channels (int, optional): FNO width and latent channels. (default: :obj:`32`)
        fno_n_layers (int, optional): Fourier layers. (default: :obj:`4`)
        fno_kwargs (dict, optional): Further :class:`~gtlib.operators.FNO` arguments (e.g.
            ``domain_padding``, ``factorization``). (default: :obj:`None`)
        projection_channels (int, optional): Hidden width of :math:`Q`. (default: :obj:`128`)
        act (str or callable, optional): Nonlinearity of the kernel MLPs and of :math:`Q`, a
            name or a callable (``activation`` is its deprecated name).
            (default: :func:`torch.nn.functional.gelu`)

    Shapes:
        - **input:** ``input_pos`` :math:`(N, d)`, ``f`` :math:`(N, C_{in})` or
          :math:`(B, N, C_{in})`, ``output_pos`` :math:`(M, d)`, optional ``latent_box``
          ``(lower, upper)`` with :math:`d` values each.
        - **output:** :math:`(M, C_{out})` or :math:`(B, M, C_{out})`.
    """

    @renamed_arguments(activation="act")
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        latent_resolution: int | Sequence[int],
        radius: float,
        out_radius: float | None = None,
        coord_dim: int | None = None,
        gno_in_channels: int = 3,
        in_gno_transform_type: str = "linear",
        out_gno_transform_type: str = "linear",
        in_gno_channel_mlp_layers: Sequence[int] = (80, 80, 80),
        out_gno_channel_mlp_layers: Sequence[int] = (512, 256),
        gno_pos_embedding_type: str | None = "transformer",
        gno_pos_embedding_channels: int = 32,
        in_gno_reduction: str = "mean",
        out_gno_reduction: str = "sum",
        gno_chunk_size: int | None = 8192,
        fno_n_modes: int | Sequence[int] | None = None,
        fno_hidden_channels: int = 32,
        fno_n_layers: int = 4,
        fno_kwargs: dict | None = None,
        projection_channels: int = 128,
        act: str | Callable[[Tensor], Tensor] = "gelu",
    ) -> None:
        super().__init__()
        resolution = _latent_resolution(latent_resolution, coord_dim)
        dim = len(resolution)
        fno_n_modes = _fno_modes(fno_n_modes, resolution)
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        out_channels = check_int(out_channels, "out_channels", minimum=1)
        gno_in_channels = check_int(gno_in_channels, "gno_in_channels", minimum=1)
        fno_hidden_channels = check_int(fno_hidden_channels, "fno_hidden_channels", minimum=1)
        projection_channels = check_int(projection_channels, "projection_channels", minimum=1)
        if fno_kwargs is not None and not isinstance(fno_kwargs, dict):
            raise TypeError(f"fno_kwargs must be a dict or None, got {describe(fno_kwargs)}")
        stage_in = _gno_stage(
            "in", radius, "radius", in_gno_transform_type, in_gno_channel_mlp_layers,
            in_gno_reduction,
        )  # fmt: skip
        stage_out = _gno_stage(
            "out", radius if out_radius is None else out_radius,
            "radius" if out_radius is None else "out_radius", out_gno_transform_type,
            out_gno_channel_mlp_layers, out_gno_reduction,
        )  # fmt: skip

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.latent_resolution = resolution
        self.coord_dim = dim
        gno_in_channels = _gno_in_channels(stage_in["transform_type"], in_channels, gno_in_channels)
        self.gno_in_channels = gno_in_channels
        self.fno_hidden_channels = fno_hidden_channels
        self.act = resolve_act(act)
        common = _gno_common(
            dim, self.act, gno_pos_embedding_type, gno_pos_embedding_channels, gno_chunk_size
        )
        self.gno_in = GNO(in_channels, gno_in_channels, **stage_in, **common)
        self.fno = FNO(
            gno_in_channels,
            fno_hidden_channels,
            fno_n_modes,
            hidden_channels=fno_hidden_channels,
            n_layers=fno_n_layers,
            act=self.act,
            **(fno_kwargs or {}),
        )
        self.gno_out = GNO(fno_hidden_channels, fno_hidden_channels, **stage_out, **common)
        self.projection = nn.Sequential(
            nn.Linear(fno_hidden_channels, projection_channels),
            _Activation(self.act),
            nn.Linear(projection_channels, out_channels),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.gno_in.reset_parameters()
        self.fno.reset_parameters()
        self.gno_out.reset_parameters()
        for layer in self.projection:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def latent_grid(
        self, latent_box: Box | None = None, dtype=torch.float32, device=None
    ) -> Tensor:
        """The latent grid points ``[prod(latent_resolution), d]`` in C order, from the
        library's pattern cache: the same tensor is returned while the resolution, box, dtype
        and device stay the same (so the GNOs' neighbourhoods of it are reused)."""
        if latent_box is None:
            lower, upper = [0.0] * self.coord_dim, [1.0] * self.coord_dim
        else:
            lower, upper = latent_box
            lower = torch.as_tensor(lower, dtype=torch.float64).reshape(-1).tolist()
            upper = torch.as_tensor(upper, dtype=torch.float64).reshape(-1).tolist()
            if len(lower) != self.coord_dim or len(upper) != self.coord_dim:
                raise ValueError(
                    f"latent_box must be (lower, upper) with {self.coord_dim} values each"
                )
            if not all(hi > lo for lo, hi in zip(lower, upper)):
                raise ValueError(f"latent_box needs upper > lower, got {lower} and {upper}")
        resolution = tuple(self.latent_resolution)
        device = torch.device(device or "cpu")
        key = ("GINO.latent_grid", resolution, tuple(lower), tuple(upper), dtype, str(device))

        def build() -> Tensor:
            axes = [
                torch.linspace(lo, hi, n, dtype=dtype, device=device)
                for lo, hi, n in zip(lower, upper, resolution)
            ]
            return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(axes))

        return pattern_cache.get((), key, build)

    def forward(
        self,
        input_pos: Tensor,
        f: Tensor,
        output_pos: Tensor,
        latent_box: Box | None = None,
    ) -> Tensor:
        _check_points(input_pos, "input_pos", self.coord_dim)
        _check_points(output_pos, "output_pos", self.coord_dim)
        check_tensor(f, "f", floating=True)
        if f.dim() not in (2, 3) or f.shape[-2] != input_pos.shape[0]:
            raise ValueError(
                f"f must have shape [N, C] or [B, N, C] with N = input_pos.shape[0] = "
                f"{input_pos.shape[0]}, got {list(f.shape)}"
            )
        if f.shape[-1] != self.in_channels:
            raise ValueError(f"f has {f.shape[-1]} channels but in_channels={self.in_channels}")
        check_finite(f, "f")
        batched = f.dim() == 3
        grid = self.latent_grid(latent_box, input_pos.dtype, input_pos.device)
        latent = self.gno_in(y=input_pos, x=grid, f_y=f if batched else f.unsqueeze(0))  # [B, G, C]
        batch = latent.shape[0]
        latent = latent.transpose(1, 2).reshape(batch, -1, *self.latent_resolution)
        latent = self.fno(latent)  # [B, hidden, *resolution]
        latent = latent.reshape(batch, self.fno_hidden_channels, -1).transpose(1, 2)
        out = self.projection(self.gno_out(y=grid, x=output_pos, f_y=latent))
        return out if batched else out.squeeze(0)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"latent_resolution={self.latent_resolution}, radius={self.gno_in.radius}, "
            f"out_radius={self.gno_out.radius})"
        )


def _latent_resolution(
    latent_resolution: int | Sequence[int], coord_dim: int | None
) -> tuple[int, ...]:
    """The latent grid's points per dimension, 1 to 3 sizes >= 2."""
    if coord_dim is not None:
        coord_dim = check_int(coord_dim, "coord_dim", minimum=1)
    if _is_sizes(latent_resolution):
        resolution = tuple(
            check_int(n, f"latent_resolution[{i}]") for i, n in enumerate(latent_resolution)
        )
    else:
        size = check_int(latent_resolution, "latent_resolution")
        if coord_dim is None:
            raise ValueError("coord_dim is required when latent_resolution is an int")
        resolution = (size,) * coord_dim
    if not 1 <= len(resolution) <= 3 or any(n < 2 for n in resolution):
        raise ValueError(f"latent_resolution must be 1 to 3 sizes >= 2, got {latent_resolution!r}")
    if coord_dim is not None and coord_dim != len(resolution):
        raise ValueError(f"coord_dim={coord_dim} does not match latent_resolution {resolution}")
    return resolution


def _is_sizes(value: object) -> bool:
    """Whether ``value`` is a collection of sizes rather than one (a tensor with one
    dimension counts; strings do not)."""
    if isinstance(value, Tensor):
        return value.dim() > 0
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes))


def _fno_modes(
    fno_n_modes: int | Sequence[int] | None, resolution: tuple[int, ...]
) -> tuple[int, ...]:
    """The FNO's kept modes per dimension (default: up to 8)."""
    if fno_n_modes is None:
        return tuple(min(8, n) for n in resolution)
    if _is_sizes(fno_n_modes):
        modes = tuple(fno_n_modes)
    else:
        modes = (check_int(fno_n_modes, "fno_n_modes", minimum=1),) * len(resolution)
    if len(modes) != len(resolution):
        raise ValueError(f"fno_n_modes must have {len(resolution)} entries, got {fno_n_modes!r}")
    return modes


def _gno_stage(
    stage: str,
    radius: float,
    radius_name: str,
    transform_type: str,
    channel_mlp_layers: Sequence[int],
    reduction: str,
) -> dict:
    """One GNO's own arguments, checked under GINO's names (GNO would name its own)."""
    prefix = f"{stage}_gno_"
    return dict(
        radius=check_real(radius, radius_name, positive=True),
        transform_type=check_choice(transform_type, prefix + "transform_type", TRANSFORM_TYPES),
        channel_mlp_layers=_check_widths(channel_mlp_layers, prefix + "channel_mlp_layers"),
        reduction=check_choice(reduction, prefix + "reduction", ("sum", "mean")),
    )


def _gno_in_channels(transform_type: str, in_channels: int, gno_in_channels: int) -> int:
    """The input GNO's output channels (``in_channels`` for the nonlinear transforms)."""
    if transform_type.startswith("nonlinear"):
        return in_channels
    if transform_type == "linear" and in_channels not in (1, gno_in_channels):
        raise ValueError(
            f"the linear input GNO multiplies its kernel by f, so in_channels={in_channels} "
            f"must be 1 or gno_in_channels={gno_in_channels}"
        )
    return gno_in_channels


def _gno_common(
    dim: int,
    act: Callable[[Tensor], Tensor],
    pos_embedding_type: str | None,
    pos_embedding_channels: int,
    chunk_size: int | None,
) -> dict:
    """The arguments both GNOs share, checked under GINO's names."""
    if chunk_size is not None:
        chunk_size = check_int(chunk_size, "gno_chunk_size", minimum=1)
    return dict(
        coord_dim=dim,
        channel_mlp_non_linearity=act,
        pos_embedding_type=check_choice(
            pos_embedding_type, "gno_pos_embedding_type", ("transformer", "nerf", None)
        ),
        pos_embedding_channels=check_int(
            pos_embedding_channels, "gno_pos_embedding_channels", minimum=1
        ),
        chunk_size=chunk_size,
    )


class _Activation(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)
