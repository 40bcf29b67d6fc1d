"""Fourier (spectral) convolution on regular grids, dense or Tucker-factorised weights."""

from __future__ import annotations

import math
import numbers
import string
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gtlib import validation
from gtlib.validation import check_bool, check_int

__all__ = ["SpectralConv"]


def check_modes(n_modes: Any) -> tuple[int, ...]:
    """``n_modes`` (an int or 1 to 3 ints, each >= 1) as a tuple of ints."""
    if isinstance(n_modes, (str, bytes)) or not isinstance(n_modes, (numbers.Integral, Sequence)):
        raise TypeError(f"n_modes must be an int or 1 to 3 ints, got {n_modes!r}")
    modes = (n_modes,) if isinstance(n_modes, numbers.Integral) else tuple(n_modes)
    if not 1 <= len(modes) <= 3:
        raise ValueError(f"n_modes must give 1 to 3 dimensions, got {n_modes!r}")
    return tuple(check_int(m, "n_modes", minimum=1) for m in modes)


def check_input(x: Any, parameter: Tensor) -> None:
    """``x`` a finite real floating-point tensor in the dtype and on the device of the
    operator's ``parameter`` (:func:`gtlib.validation.check_input`)."""
    validation.check_input(x, "x", parameter, owner="operator")


def _tucker_ranks(shape: Sequence[int], fraction: float) -> tuple[int, ...]:
    """Ranks ``r_k = round(s * n_k)`` (clamped to ``[1, n_k]``) with the largest common ratio ``s``
    whose parameter count ``prod(r) + sum(n_k r_k)`` does not exceed ``fraction * prod(n)``."""

    def ranks_for(s: float) -> tuple[int, ...]:
        return tuple(min(n, max(1, round(s * n))) for n in shape)

    def n_params(ranks: Sequence[int]) -> int:
        return math.prod(ranks) + sum(n * r for n, r in zip(shape, ranks))

    target = fraction * math.prod(shape)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if n_params(ranks_for(mid)) <= target:
            lo = mid
        else:
            hi = mid
    return ranks_for(lo)


class SpectralConv(nn.Module):
    r"""The spectral convolution of the Fourier neural operator, from the `"Fourier Neural Operator
    for Parametric Partial Differential Equations" <https://arxiv.org/abs/2010.08895>`_ paper
    (Li et al., ICLR 2021), with the optional Tucker factorisation of the spectral weights from
    the `"Multi-Grid Tensorized Fourier Neural Operator for High-Resolution PDEs"
    <https://arxiv.org/abs/2310.00120>`_ paper (Kossaifi et al., TMLR 2024).

    For a real input :math:`u` with :math:`C_{in}` channels on a uniform periodic grid of
    :math:`N_1 \times \dots \times N_d` points (:math:`d \in \{1, 2, 3\}`),

    .. math::
        \hat u_c(\mathbf{k}) = \frac{1}{N_1\cdots N_d} \sum_{\mathbf{n}} u_c(\mathbf{n})
        e^{-2\pi i \sum_j k_j n_j / N_j}, \qquad
        \hat v_o(\mathbf{k}) = \sum_{c} W_{c,o}(\mathbf{k})\, \hat u_c(\mathbf{k})
        \quad (\mathbf{k} \in K),

    and :math:`v = \mathrm{irfftn}(\hat v) + b`, i.e.
    :math:`v_o(\mathbf{n}) = \mathrm{Re} \sum_{\mathbf{k} \in K} \gamma_{k_d}\,
    \hat v_o(\mathbf{k})\, e^{2\pi i \sum_j k_j n_j / N_j} + b_o` with :math:`\gamma_0 = 1` and
    :math:`\gamma_{k_d} = 2` for :math:`k_d > 0` (the Hermitian half of the spectrum, the real FFT
    over the last dimension). With ``fft_norm="forward"`` the coefficients
    :math:`\hat u(\mathbf{k})` are the Fourier coefficients of the underlying (band-limited)
    function whatever the grid, so the same weights act identically at every resolution
    (zero-shot super-resolution); the other norms only rescale the intermediate spectrum (the
    forward and inverse factors always multiply to :math:`1/(N_1 \cdots N_d)`).

    **Kept modes** (neuraloperator's convention): ``n_modes[j]`` is the total number of
    frequencies kept along dimension ``j``. Along every dimension but the last, :math:`K` keeps
    the signed frequencies :math:`k_j \in \{-\lfloor m_j/2 \rfloor, \dots,
    m_j - \lfloor m_j/2 \rfloor - 1\}` (the "corners" of the FFT, positive and negative), stored in
    the weight in that (centred) order. Along the last dimension, where the real FFT drops the
    redundant negative half, :math:`k_d \in \{0, \dots, \lfloor m_d/2 \rfloor\}`, i.e.
    ``n_modes[-1] // 2 + 1`` weights. The dense weight therefore has shape
    ``[in_channels, out_channels, m_1, ..., m_{d-1}, m_d // 2 + 1]`` (complex).

    **Tucker factorisation** (``factorization="tucker"``): :math:`W = G \times_1 U^{(in)}
    \times_2 U^{(out)} \times_3 U^{(1)} \cdots \times_{d+2} U^{(d)}` with a complex core
    :math:`G` of shape ``[r_in, r_out, r_1, ..., r_d]`` and complex factor matrices
    :math:`U^{(\cdot)}` of shape ``[n, r]``; the full weight is reconstructed before the product
    (neuraloperator's ``implementation="reconstructed"``). ``rank`` is either a fraction of the
    dense parameter count (ranks proportional to the dimensions) or explicit ranks
    ``(r_in, r_out, r_1, ..., r_d)``.

    Args:
        in_channels (int): Input channels :math:`C_{in}`.
        out_channels (int): Output channels :math:`C_{out}`.
        n_modes (int or tuple of int): Total kept modes per spatial dimension; its length sets the
            dimensionality :math:`d` (an ``int`` means :math:`d = 1`).
        bias (bool, optional): Add a learnable per-channel bias. (default: :obj:`True`)
        factorization (str, optional): :obj:`None` (dense weights) or ``"tucker"``.
            (default: :obj:`None`)
        rank (float or tuple of int, optional): Tucker rank, see above; ignored when dense.
            (default: :obj:`0.5`)
        fft_norm (str, optional): ``norm`` of :func:`torch.fft.rfftn` / ``irfftn``.
            (default: ``"forward"``)

    Shapes:
        - **input:** :math:`(B, C_{in}, N_1, \dots, N_d)`, real, with :math:`N_j \ge m_j`.
          Outputs at two resolutions are samplings of one band-limited function when
          :math:`N_j > m_j` for all :math:`j` (every kept frequency below the Nyquist frequency).
        - **output:** :math:`(B, C_{out}, N_1, \dots, N_d)`, same dtype as the input.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_modes: int | Sequence[int],
        bias: bool = True,
        factorization: str | None = None,
        rank: float | Sequence[int] = 0.5,
        fft_norm: str = "forward",
    ) -> None:
        super().__init__()
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        out_channels = check_int(out_channels, "out_channels", minimum=1)
        modes = check_modes(n_modes)
        bias = check_bool(bias, "bias")
        if factorization is not None and not isinstance(factorization, str):
            raise TypeError(f"factorization must be None or 'tucker', got {factorization!r}")
        if factorization is not None and factorization.lower() != "tucker":
            raise ValueError(f"factorization must be None or 'tucker', got {factorization!r}")
        if fft_norm not in ("forward", "backward", "ortho"):
            raise ValueError(f"fft_norm must be 'forward', 'backward' or 'ortho', got {fft_norm!r}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_modes = modes
        self.dim = len(modes)
        self.factorization = None if factorization is None else "tucker"
        self.fft_norm = fft_norm
        # Weights per kept mode: all m_j (signed, centred) in the leading dims, m_d // 2 + 1 last.
        self.weight_modes = (*modes[:-1], modes[-1] // 2 + 1)
        self.weight_shape = (in_channels, out_channels, *self.weight_modes)

        if self.factorization is None:
            self.rank = None
            # Complex weights stored as real pairs (last dim 2) so .double()/.half() convert them.
            self.weight = nn.Parameter(torch.empty(*self.weight_shape, 2))
            self.core = None
            self.factors = None
        else:
            if isinstance(rank, (int, float)) and not isinstance(rank, bool):
                if not 0.0 < float(rank) <= 1.0:
                    raise ValueError(f"rank as a fraction must lie in (0, 1], got {rank}")
                ranks = _tucker_ranks(self.weight_shape, float(rank))
            else:
                if isinstance(rank, (str, bytes)) or not isinstance(rank, Sequence):
                    raise TypeError(f"rank must be a fraction or a sequence of ints, got {rank!r}")
                ranks = tuple(check_int(r, "rank") for r in rank)
                if len(ranks) != len(self.weight_shape) or any(
                    not 1 <= r <= n for r, n in zip(ranks, self.weight_shape)
                ):
                    raise ValueError(
                        f"rank must be a fraction or {len(self.weight_shape)} integers in "
                        f"[1, {list(self.weight_shape)}], got {rank!r}"
                    )
            self.rank = ranks
            self.weight = None
            self.core = nn.Parameter(torch.empty(*ranks, 2))
            self.factors = nn.ParameterList(
                [nn.Parameter(torch.empty(n, r, 2)) for n, r in zip(self.weight_shape, ranks)]
            )

        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    @property
    def init_std(self) -> float:
        """Standard deviation of the (reconstructed) complex weight entries."""
        return (2.0 / (self.in_channels + self.out_channels)) ** 0.5

    def reset_parameters(self) -> None:
        """Complex normal weights with std ``sqrt(2 / (in + out))``; zero bias. For Tucker, the
        factors have entry std ``1/sqrt(r)`` so the reconstructed weight has that std too."""
        half = 0.5**0.5  # real and imaginary parts share the variance
        with torch.no_grad():
            if self.factorization is None:
                self.weight.normal_(0.0, self.init_std * half)
            else:
                self.core.normal_(0.0, self.init_std * half)
                for factor in self.factors:
                    factor.normal_(0.0, half / factor.shape[1] ** 0.5)
            if self.bias is not None:
                self.bias.zero_()

    def get_weight(self) -> Tensor:
        """The complex weight ``[in_channels, out_channels, *weight_modes]`` (reconstructed from
        the Tucker factors when factorised)."""
        if self.factorization is None:
            return torch.view_as_complex(self.weight)
        order = len(self.weight_shape)
        core_idx = string.ascii_lowercase[:order]
        full_idx = string.ascii_uppercase[:order]
        factor_idx = [f"{full_idx[k]}{core_idx[k]}" for k in range(order)]
        equation = f"{core_idx},{','.join(factor_idx)}->{full_idx}"
        return torch.einsum(
            equation,
            torch.view_as_complex(self.core),
            *(torch.view_as_complex(f) for f in self.factors),
        )

    def load_neuralop_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Copy the weights of a dense neuraloperator (2.0) ``SpectralConv`` into this layer.

        neuralop's layer stores the same complex weight as ours (``[in_channels, out_channels,
        m_1, ..., m_{d-1}, m_d // 2 + 1]`` with the signed leading modes in centred order), as a
        tensorly-torch ``DenseTensor`` (state-dict key ``weight.tensor``, or ``weight._tensor`` in
        older tensorly-torch), and its bias with shape ``[out_channels, 1, ..., 1]``. Build the
        layer with matching ``in_channels``, ``out_channels``, ``n_modes``, ``bias`` and
        ``fft_norm``, then::

            ours = SpectralConv(3, 4, (16, 16))
            ours.load_neuralop_state_dict(theirs.state_dict())  # theirs: neuralop SpectralConv

        Values are cast to this layer's dtype and device. Nothing is copied unless every check
        passes.

        Args:
            state_dict: the ``state_dict()`` of a neuralop ``SpectralConv`` (keys ``weight.*``
                and optionally ``bias``, without any parent-module prefix).

        Raises:
            ValueError: this layer is Tucker-factorised; the neuralop weight is factorised (e.g.
                ``factorization="tucker"``, keys ``weight.core``/``weight.factors.*``) or not
                complex; the weight shape differs from :attr:`weight_shape` (different channels
                or modes, ``separable=True`` or ``max_n_modes != n_modes``); exactly one of the
                two layers has a bias, or the bias has the wrong size; or unexpected keys.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        if self.factorization is not None:
            raise ValueError(
                "load_neuralop_state_dict needs a dense SpectralConv (factorization=None), but "
                f"this layer is {self.factorization}-factorised"
            )
        weight_keys = [k for k in state_dict if k == "weight" or k.startswith("weight.")]
        dense_keys = [k for k in ("weight.tensor", "weight._tensor") if k in state_dict]
        if len(dense_keys) != 1 or len(weight_keys) != 1:
            if weight_keys:
                raise ValueError(
                    "only dense neuralop spectral weights (state-dict key 'weight.tensor') can be "
                    f"loaded, got the weight keys {sorted(weight_keys)} (a factorised weight, "
                    "e.g. factorization='tucker'?)"
                )
            raise ValueError(
                "the state dict has no neuralop spectral weight ('weight.tensor'); got keys "
                f"{sorted(state_dict)}"
            )
        unexpected = sorted(set(state_dict) - {dense_keys[0], "bias"})
        if unexpected:
            raise ValueError(
                f"unexpected keys {unexpected} (pass the state dict of the neuralop SpectralConv "
                "itself, without a parent-module prefix)"
            )
        weight = state_dict[dense_keys[0]]
        if not isinstance(weight, Tensor) or not weight.is_complex():
            raise ValueError(
                f"the neuralop weight {dense_keys[0]!r} must be a complex tensor, got "
                f"{getattr(weight, 'dtype', type(weight).__name__)}"
            )
        if tuple(weight.shape) != self.weight_shape:
            raise ValueError(
                f"neuralop weight shape {tuple(weight.shape)} does not match this layer's "
                f"{self.weight_shape} ([in_channels, out_channels, *weight_modes] for "
                f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"n_modes={self.n_modes}); a separable layer or max_n_modes != n_modes cannot "
                "be loaded"
            )
        bias = state_dict.get("bias")
        if bias is None and self.bias is not None:
            raise ValueError("the neuralop layer has no bias but this layer has bias=True")
        if bias is not None and self.bias is None:
            raise ValueError("the neuralop layer has a bias but this layer has bias=False")
        if bias is not None and bias.numel() != self.out_channels:
            raise ValueError(
                f"neuralop bias shape {tuple(bias.shape)} does not hold out_channels="
                f"{self.out_channels} values"
            )
        with torch.no_grad():
            self.weight.copy_(torch.view_as_real(weight.detach().resolve_conj()))
            if bias is not None:
                self.bias.copy_(bias.detach().reshape(-1))

    def _mode_index(self, sizes: Sequence[int], device: torch.device) -> tuple[Tensor, ...]:
        """Broadcastable index tensors into the ``rfftn`` output selecting the kept modes, in the
        weight's order (signed frequencies wrapped modulo the grid size)."""
        index = []
        for j, (m, n) in enumerate(zip(self.weight_modes, sizes)):
            if j < self.dim - 1:
                idx = (torch.arange(m, device=device) - m // 2) % n
            else:
                idx = torch.arange(m, device=device)
            shape = [1] * self.dim
            shape[j] = m
            index.append(idx.view(shape))
        return tuple(index)

    def _check_input(self, x: Tensor) -> None:
        check_input(x, next(self.parameters()))
        if x.dim() != self.dim + 2:
            raise ValueError(
                f"x must have shape [B, C, *spatial] with {self.dim} spatial dimension(s) "
                f"(n_modes={self.n_modes}), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels but the layer expects in_channels={self.in_channels}"
            )
        sizes = tuple(x.shape[2:])
        if any(n < m for n, m in zip(sizes, self.n_modes)):
            raise ValueError(
                f"x's spatial size {sizes} is too small for n_modes={self.n_modes}: each spatial "
                f"size must be at least the number of kept modes in that dimension"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        sizes = tuple(x.shape[2:])
        if x.shape[0] == 0:  # an empty batch (the FFT libraries refuse it)
            return x.new_zeros((0, self.out_channels, *sizes))
        fft_dims = tuple(range(-self.dim, 0))
        x_ft = torch.fft.rfftn(x, dim=fft_dims, norm=self.fft_norm)

        index = self._mode_index(sizes, x.device)
        kept = (slice(None), slice(None), *index)
        weight = self.get_weight().to(x_ft.dtype)
        out_kept = torch.einsum("bi...,io...->bo...", x_ft[kept], weight)

        out_ft = x_ft.new_zeros((x.shape[0], self.out_channels, *x_ft.shape[2:]))
        out_ft[kept] = out_kept
        out = torch.fft.irfftn(out_ft, s=sizes, dim=fft_dims, norm=self.fft_norm)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype).view(1, -1, *([1] * self.dim))
        return out

    def __repr__(self) -> str:
        extra = ""
        if self.factorization is not None:
            extra = f", factorization={self.factorization}, rank={self.rank}"
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"n_modes={self.n_modes}{extra})"
        )
