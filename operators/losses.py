"""Function-space losses on uniform grids: (relative) Lp and H1 norms of the error."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from gtlib.validation import (
    check_bool,
    check_choice,
    check_finite,
    check_int,
    check_real,
    check_tensor,
    finite_checks_enabled,
)

__all__ = ["LpLoss", "H1Loss"]


def _check_pair(pred: Tensor, target: Tensor, d: int) -> None:
    check_tensor(pred, "pred", floating=True)
    check_tensor(target, "target", floating=True)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    if pred.dim() < d + 1:
        raise ValueError(
            f"pred must have shape [B, ..., *spatial] with d={d} spatial dimension(s), "
            f"got shape {tuple(pred.shape)}"
        )
    check_finite(pred, "pred")
    check_finite(target, "target")


def _check_options(d, reduction, relative) -> int:
    check_choice(reduction, "reduction", ("mean", "sum"))
    check_bool(relative, "relative")
    return check_int(d, "d", minimum=1)


def _lengths(L: float | Sequence[float], d: int) -> tuple[float, ...]:
    if isinstance(L, (Tensor, np.ndarray)) and L.ndim > 0:
        L = L.tolist()
    if isinstance(L, Sequence) and not isinstance(L, str):
        lengths = tuple(check_real(v, "L", positive=True) for v in L)
    else:
        lengths = (check_real(L, "L", positive=True),) * d
    if len(lengths) != d:
        raise ValueError(f"L must be a positive float or {d} of them, got {L!r}")
    return lengths


def _relative(error: Tensor, norm: Tensor) -> Tensor:
    """``error / norm`` per sample; a target of norm zero has no relative error (CPU check, or
    any device when the finite checks are on; see :func:`gtlib.validation.set_finite_checks`)."""
    if finite_checks_enabled(norm.device) and bool((norm == 0).any()):
        raise ValueError(
            f"target is zero in {int((norm == 0).sum())} sample(s): the relative loss divides by "
            "its norm; use relative=False for such targets"
        )
    return error / norm


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean" and values.numel() == 0:
        raise ValueError(
            "pred and target hold no samples: the mean over an empty batch is undefined "
            "(reduction='sum' gives 0)"
        )
    return values.sum() if reduction == "sum" else values.mean()


class LpLoss(nn.Module):
    r"""(Relative) :math:`L^p` error of functions sampled on a uniform grid, as neuraloperator's
    ``LpLoss``.

    For every sample :math:`b` the norm runs over all its channels and the last ``d`` (spatial)
    dimensions, with the uniform quadrature weight :math:`h = \prod_j L_j / N_j`:

    .. math::
        \|e_b\|_{p} = \Big(h \sum_{c, \mathbf{n}} |e_{b,c}(\mathbf{n})|^p\Big)^{1/p}, \qquad
        \ell_b = \frac{\|\hat y_b - y_b\|_p}{\|y_b\|_p} \ \text{(relative; } h
        \text{ cancels)}, \quad \ell_b = \|\hat y_b - y_b\|_p \ \text{(absolute)},

    reduced over the batch by ``"mean"`` or ``"sum"``. A relative loss refuses a target of
    norm zero, ``"mean"`` refuses an empty batch, and NaN/inf inputs are refused (CPU tensors
    by default, see :func:`gtlib.validation.set_finite_checks`): each raises a ``ValueError``.

    Args:
        d (int): Number of trailing spatial dimensions.
        p (float, optional): Order of the norm. (default: :obj:`2`)
        relative (bool, optional): Divide by the target's norm. (default: :obj:`True`)
        reduction (str, optional): ``"mean"`` or ``"sum"`` over samples. (default: ``"mean"``)
        L (float or tuple of float, optional): Domain length per dimension (quadrature weights of
            the absolute loss). (default: :obj:`1.0`)

    Shapes:
        - **pred, target:** :math:`(B, *, N_1, \dots, N_d)`
        - **output:** scalar
    """

    def __init__(
        self,
        d: int,
        p: float = 2,
        relative: bool = True,
        reduction: str = "mean",
        L: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__()
        d = _check_options(d, reduction, relative)
        p = check_real(p, "p", positive=True, finite=False)
        self.d = d
        self.p = p
        self.relative = relative
        self.reduction = reduction
        self.L = _lengths(L, d)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_pair(pred, target, self.d)
        batch = pred.shape[0]
        if batch == 0:
            return _reduce(pred.new_zeros(0), self.reduction)
        diff = torch.linalg.vector_norm((pred - target).reshape(batch, -1), ord=self.p, dim=1)
        if self.relative:
            norm = torch.linalg.vector_norm(target.reshape(batch, -1), ord=self.p, dim=1)
            values = _relative(diff, norm)
        else:
            h = math.prod(length / n for length, n in zip(self.L, pred.shape[-self.d :]))
            values = h ** (1.0 / self.p) * diff
        return _reduce(values, self.reduction)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(d={self.d}, p={self.p}, relative={self.relative})"


class H1Loss(nn.Module):
    r"""(Relative) :math:`H^1` error of functions sampled on a uniform grid, as neuraloperator's
    ``H1Loss``: the function values plus the first derivatives along every spatial dimension,

    .. math::
        \|e_b\|_{H^1}^2 = h \sum_{c, \mathbf{n}} \Big(|e_{b,c}(\mathbf{n})|^2
        + \sum_{j=1}^{d} |D_j e_{b,c}(\mathbf{n})|^2\Big), \qquad
        \ell_b = \frac{\|\hat y_b - y_b\|_{H^1}}{\|y_b\|_{H^1}} \ \text{(relative)}.

    :math:`D_j` is the second-order central difference
    :math:`(e_{n+1} - e_{n-1}) / (2 h_j)`.

    * ``periodic=True`` (default): the grid covers :math:`[0, L_j)` with spacing
      :math:`h_j = L_j / N_j` and the differences wrap around.
    * ``periodic=False``: the grid covers :math:`[0, L_j]` including both end points,
      :math:`h_j = L_j / (N_j - 1)`, and the end points use second-order one-sided differences
      (:func:`torch.gradient` with ``edge_order=2``; needs :math:`N_j \ge 3`).

    The spacing enters the derivatives (so ``L`` matters for the relative loss too) and, for the
    absolute loss, the quadrature weight :math:`h = \prod_j h_j`.

    Args:
        d (int): Number of trailing spatial dimensions.
        relative (bool, optional): Divide by the target's norm. (default: :obj:`True`)
        reduction (str, optional): ``"mean"`` or ``"sum"`` over samples. (default: ``"mean"``)
        L (float or tuple of float, optional): Domain length per dimension. (default: :obj:`1.0`)
        periodic (bool, optional): Periodic differences, see above. (default: :obj:`True`)

    Shapes:
        - **pred, target:** :math:`(B, *, N_1, \dots, N_d)`
        - **output:** scalar
    """

    def __init__(
        self,
        d: int,
        relative: bool = True,
        reduction: str = "mean",
        L: float | Sequence[float] = 1.0,
        periodic: bool = True,
    ) -> None:
        super().__init__()
        d = _check_options(d, reduction, relative)
        self.d = d
        self.relative = relative
        self.reduction = reduction
        self.L = _lengths(L, d)
        self.periodic = check_bool(periodic, "periodic")

    def _spacing(self, sizes: Sequence[int]) -> list[float]:
        if self.periodic:
            return [length / n for length, n in zip(self.L, sizes)]
        if any(n < 3 for n in sizes):
            raise ValueError(f"non-periodic H1Loss needs at least 3 points per dimension: {sizes}")
        return [length / (n - 1) for length, n in zip(self.L, sizes)]

    def _squared_norm(self, e: Tensor, spacing: Sequence[float]) -> Tensor:
        batch = e.shape[0]
        total = e.reshape(batch, -1).pow(2).sum(1)
        for j, h in enumerate(spacing):
            dim = e.dim() - self.d + j
            if self.periodic:
                de = (torch.roll(e, -1, dims=dim) - torch.roll(e, 1, dims=dim)) / (2 * h)
            else:
                (de,) = torch.gradient(e, spacing=h, dim=dim, edge_order=2)
            total = total + de.reshape(batch, -1).pow(2).sum(1)
        return total

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_pair(pred, target, self.d)
        if pred.shape[0] == 0:
            return _reduce(pred.new_zeros(0), self.reduction)
        spacing = self._spacing(pred.shape[-self.d :])
        err = self._squared_norm(pred - target, spacing)
        if self.relative:
            values = _relative(err, self._squared_norm(target, spacing)).sqrt()
        else:
            values = (math.prod(spacing) * err).sqrt()
        return _reduce(values, self.reduction)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(d={self.d}, relative={self.relative})"
