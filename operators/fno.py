"""The Fourier neural operator (FNO) on regular grids in 1 to 3 dimensions."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gtlib.validation import check_choice, check_int, check_real, renamed_arguments, resolve_act

from .spectral_conv import SpectralConv, check_input, check_modes

__all__ = ["FNO"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class FNO(nn.Module):
    r"""The Fourier neural operator from the `"Fourier Neural Operator for Parametric Partial
    Differential Equations" <https://arxiv.org/abs/2010.08895>`_ paper (Li et al., ICLR 2021);
    with ``factorization="tucker"`` it is the tensorised FNO (TFNO) of `"Multi-Grid Tensorized
    Fourier Neural Operator for High-Resolution PDEs" <https://arxiv.org/abs/2310.00120>`_
    (Kossaifi et al., TMLR 2024).

    .. math::
        v_0 = P(\,[u, \mathbf{x}]\,), \qquad
        v_{\ell+1} = \sigma\big(\mathcal{K}_\ell v_\ell + W_\ell v_\ell\big)
        \ (\ell < L - 1), \qquad
        v_L = \mathcal{K}_{L-1} v_{L-1} + W_{L-1} v_{L-1}, \qquad
        G(u) = Q(v_L),

    with a pointwise lifting :math:`P`, spectral convolutions :math:`\mathcal{K}_\ell`
    (:class:`~gtlib.operators.SpectralConv`), pointwise linear skips :math:`W_\ell`, activation
    :math:`\sigma` (not applied after the last layer) and a pointwise projection MLP :math:`Q`.

    * **Positional embedding** ``"grid"``: appends :math:`d` channels with the normalised
      coordinates :math:`x_j = n_j / N_j \in [0, 1)` of every grid point, rebuilt for each input
      resolution.
    * **Domain padding** (for non-periodic problems): after lifting, each spatial dimension is
      padded with ``round(domain_padding[j] * N_j)`` zeros on the right, so the FFT's periodic
      wrap-around does not couple opposite boundaries; the padding is cropped again before the
      projection. Computed per resolution.

    All weights are pointwise or per Fourier mode, so the model runs unchanged at any
    resolution at least ``n_modes`` per dimension (after padding).

    Args:
        in_channels (int): Input function channels.
        out_channels (int): Output function channels.
        n_modes (int or tuple of int): Kept Fourier modes per dimension (see
            :class:`~gtlib.operators.SpectralConv`); its length sets the dimensionality.
        hidden_channels (int, optional): Width of the Fourier layers. (default: :obj:`32`)
        n_layers (int, optional): Number of Fourier layers. (default: :obj:`4`)
        lifting_channels (int, optional): Hidden width of a two-layer lifting MLP; :obj:`None`
            lifts with a single pointwise linear map. (default: :obj:`None`)
        projection_channels (int, optional): Hidden width of the two-layer projection MLP;
            :obj:`None` projects with a single pointwise linear map. (default: :obj:`128`)
        positional_embedding (str, optional): ``"grid"`` or :obj:`None`. (default: ``"grid"``)
        domain_padding (float or tuple of float, optional): Fraction of each spatial size to
            zero-pad on the right. (default: :obj:`0.0`)
        factorization (str, optional): :obj:`None` or ``"tucker"`` spectral weights.
            (default: :obj:`None`)
        rank (float or tuple of int, optional): Tucker rank. (default: :obj:`0.5`)
        act (str or callable, optional): Pointwise nonlinearity, a name PyG's
            ``activation_resolver`` knows or a callable (``activation`` is its deprecated name).
            (default: :obj:`"gelu"`)
        skip (str, optional): ``"linear"`` (pointwise linear map without bias), ``"identity"``
            or :obj:`None`. (default: ``"linear"``)
        fft_norm (str, optional): FFT normalisation. (default: ``"forward"``)

    Shapes:
        - **input:** :math:`(B, C_{in}, N_1, \dots, N_d)`
        - **output:** :math:`(B, C_{out}, N_1, \dots, N_d)`
    """

    @renamed_arguments(activation="act")
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_modes: int | Sequence[int],
        hidden_channels: int = 32,
        n_layers: int = 4,
        lifting_channels: int | None = None,
        projection_channels: int | None = 128,
        positional_embedding: str | None = "grid",
        domain_padding: float | Sequence[float] = 0.0,
        factorization: str | None = None,
        rank: float | Sequence[int] = 0.5,
        act: str | Callable[[Tensor], Tensor] = "gelu",
        skip: str | None = "linear",
        fft_norm: str = "forward",
    ) -> None:
        super().__init__()
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        out_channels = check_int(out_channels, "out_channels", minimum=1)
        hidden_channels = check_int(hidden_channels, "hidden_channels", minimum=1)
        n_layers = check_int(n_layers, "n_layers", minimum=1)
        for name, value in (("lifting_channels", lifting_channels),
                            ("projection_channels", projection_channels)):  # fmt: skip
            if value is not None:
                check_int(value, name, minimum=1)
        modes = check_modes(n_modes)
        positional_embedding = check_choice(
            positional_embedding, "positional_embedding", ("grid", None)
        )
        skip = check_choice(skip, "skip", ("linear", "identity", None))
        dim = len(modes)
        pad = _check_padding(domain_padding, dim)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_modes = modes
        self.dim = dim
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.positional_embedding = positional_embedding
        self.domain_padding = pad
        self.act = resolve_act(act)
        self.skip = skip

        conv = _CONV[dim]
        lift_in = in_channels + (dim if positional_embedding == "grid" else 0)
        self.lifting = _pointwise_mlp(conv, lift_in, lifting_channels, hidden_channels)
        self.spectral_convs = nn.ModuleList(
            [
                SpectralConv(
                    hidden_channels,
                    hidden_channels,
                    modes,
                    factorization=factorization,
                    rank=rank,
                    fft_norm=fft_norm,
                )
                for _ in range(n_layers)
            ]
        )
        if skip == "linear":
            self.skips = nn.ModuleList(
                [conv(hidden_channels, hidden_channels, 1, bias=False) for _ in range(n_layers)]
            )
        else:
            self.skips = None
        self.projection = _pointwise_mlp(conv, hidden_channels, projection_channels, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def _mlp(self, layers: nn.ModuleList, x: Tensor) -> Tensor:
        for i, layer in enumerate(layers):
            x = layer(x)
            if i < len(layers) - 1:
                x = self.act(x)
        return x

    def grid(self, x: Tensor) -> Tensor:
        """Normalised coordinates ``[B, d, *spatial]`` in ``[0, 1)`` for ``x``'s resolution."""
        sizes = x.shape[2:]
        axes = [torch.arange(n, device=x.device, dtype=x.dtype) / n for n in sizes]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)
        return coords.unsqueeze(0).expand(x.shape[0], *coords.shape)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.lifting[0].weight)
        if x.dim() != self.dim + 2:
            raise ValueError(
                f"x must have shape [B, C, *spatial] with {self.dim} spatial dimension(s), "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels but the model expects in_channels={self.in_channels}"
            )
        sizes = tuple(x.shape[2:])
        if self.positional_embedding == "grid":
            x = torch.cat([x, self.grid(x)], dim=1)
        x = self._mlp(self.lifting, x)

        pads = [round(p * n) for p, n in zip(self.domain_padding, sizes)]
        if any(pads):
            # F.pad takes (left, right) pairs starting from the last dimension.
            x = F.pad(x, [v for p in reversed(pads) for v in (0, p)])

        for i, spectral in enumerate(self.spectral_convs):
            h = spectral(x)
            if self.skip == "linear":
                h = h + self.skips[i](x)
            elif self.skip == "identity":
                h = h + x
            x = self.act(h) if i < self.n_layers - 1 else h

        if any(pads):
            x = x[(slice(None), slice(None), *(slice(0, n) for n in sizes))]
        return self._mlp(self.projection, x)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"n_modes={self.n_modes}, hidden_channels={self.hidden_channels}, "
            f"n_layers={self.n_layers})"
        )


def _check_padding(domain_padding: float | Sequence[float], dim: int) -> tuple[float, ...]:
    """``domain_padding`` as ``dim`` non-negative fractions."""
    if isinstance(domain_padding, (str, bytes)) or not isinstance(
        domain_padding, (numbers.Real, Sequence)
    ):
        raise TypeError(
            f"domain_padding must be a float or a sequence of floats, got {domain_padding!r}"
        )
    if isinstance(domain_padding, numbers.Real):
        pad = (check_real(domain_padding, "domain_padding", nonnegative=True),) * dim
    else:
        pad = tuple(
            check_real(p, f"domain_padding[{i}]", nonnegative=True)
            for i, p in enumerate(domain_padding)
        )
    if len(pad) != dim:
        raise ValueError(
            f"domain_padding must be a non-negative float or {dim} of them, got {domain_padding!r}"
        )
    return pad


def _pointwise_mlp(conv, in_channels: int, hidden: int | None, out_channels: int) -> nn.ModuleList:
    """One pointwise (kernel-size-1) convolution, or two through ``hidden`` channels."""
    if hidden:
        return nn.ModuleList([conv(in_channels, hidden, 1), conv(hidden, out_channels, 1)])
    return nn.ModuleList([conv(in_channels, out_channels, 1)])
