"""Function-space losses on uniform grids: (relative) Lp and H1 norms of the error."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["LpLoss", "H1Loss"]


def _check_pair(pred: Tensor, target: Tensor, d: int) -> None:
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


def _lengths(L: float | Sequence[float], d: int) -> tuple[float, ...]:
    lengths = (float(L),) * d if isinstance(L, (int, float)) else tuple(float(v) for v in L)
    if len(lengths) != d or any(v <= 0 for v in lengths):
        raise ValueError(f"L must be a positive float or {d} of them, got {L!r}")
    return lengths


def _reduce(values: Tensor, reduction: str) -> Tensor:
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

    reduced over the batch by ``"mean"`` or ``"sum"``.

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
        if d < 1:
            raise ValueError(f"d must be positive, got {d}")
        if p <= 0:
            raise ValueError(f"p must be positive, got {p}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.d = d
        self.p = p
        self.relative = relative
        self.reduction = reduction
        self.L = _lengths(L, d)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_pair(pred, target, self.d)
        batch = pred.shape[0]
        diff = torch.linalg.vector_norm((pred - target).reshape(batch, -1), ord=self.p, dim=1)
        if self.relative:
            norm = torch.linalg.vector_norm(target.reshape(batch, -1), ord=self.p, dim=1)
            values = diff / norm
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
        if d < 1:
            raise ValueError(f"d must be positive, got {d}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.d = d
        self.relative = relative
        self.reduction = reduction
        self.L = _lengths(L, d)
        self.periodic = periodic

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
        spacing = self._spacing(pred.shape[-self.d :])
        err = self._squared_norm(pred - target, spacing)
        if self.relative:
            values = (err / self._squared_norm(target, spacing)).sqrt()
        else:
            values = (math.prod(spacing) * err).sqrt()
        return _reduce(values, self.reduction)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(d={self.d}, relative={self.relative})"
