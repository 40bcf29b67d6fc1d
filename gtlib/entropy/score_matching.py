r"""Score-matching losses: denoising, implicit (Hyvärinen) and sliced.

Each loss takes a score model ``score_fn`` mapping samples ``x [B, *event]`` to ``[B, *event]``
(extra keyword arguments, e.g. neighbour lists, are bound with :func:`functools.partial`) and
returns a scalar, the batch mean of a per-sample loss summed over the event coordinates.

Hypoelliptic systems (a diffusion matrix :math:`D` with zeros) have a density that is smooth in
every coordinate, but only the noisy block of the score enters the probability-flow velocity
:math:`v = b - D s`. The ``noisy`` argument, a boolean mask broadcastable to the event shape (for
example ``diffusion > 0``), restricts every loss to that block: noiseless coordinates are neither
noised nor probed, and the model's outputs there are ignored. All three losses stay valid per
block, because the integration by parts they rest on runs over one coordinate at a time.

Write :math:`s^\star = \nabla\log\rho` and :math:`\|u\|_N^2 = \sum_{k \in N} u_k^2` over the
noisy block :math:`N`.

- :func:`implicit_score_matching`: :math:`E[\|s\|_N^2 + 2\sum_{k\in N}\partial_k s_k] =
  E\|s - s^\star\|_N^2 - E\|s^\star\|_N^2`.
- :func:`sliced_score_matching`: :math:`E[u^\top J_s u + (u\cdot s)^2/2]` with random probes
  :math:`u` (:math:`E[uu^\top] = I` on :math:`N`), equal to half the implicit loss.
- :func:`denoising_score_matching`: minimised by the score of the smoothed density
  :math:`\rho_\sigma = \rho * \mathcal N(0, \sigma^2 I_N)` (bias :math:`O(\sigma^2)`).

So differences of a loss between two models are (multiples of) differences of their Fisher
divergences from the data score, which is what the tests check against closed forms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd import forward_ad

from gtlib.validation import check_choice, check_finite, check_int, check_real, check_tensor

__all__ = [
    "denoising_score_matching",
    "implicit_score_matching",
    "sliced_score_matching",
]

ScoreFn = Callable[[Tensor], Tensor]


def _check_inputs(score_fn: Any, x: Any, generator: Any) -> Tensor:
    """The arguments every loss shares: a callable model, samples ``[B, *event]``, a
    generator or ``None``."""
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
    check_tensor(x, "x", floating=True)
    if x.dim() < 2 or x.shape[0] < 1 or x[0].numel() < 1:
        raise ValueError(f"x must have shape [B, *event] with B >= 1, got {tuple(x.shape)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    return check_finite(x, "x")


def _check_mask(noisy: Tensor | None, x: Tensor) -> Tensor | None:
    """The noisy mask as a float tensor of the event shape, or ``None`` for all coordinates."""
    if noisy is None:
        return None
    check_tensor(noisy, "noisy", values=True)
    if noisy.dtype != torch.bool:
        raise TypeError(f"noisy must be a boolean tensor, got {noisy.dtype}")
    event = x.shape[1:]
    try:
        mask = torch.broadcast_to(noisy.to(x.device), event)
    except RuntimeError:
        raise ValueError(
            f"noisy of shape {tuple(noisy.shape)} does not broadcast to the event shape "
            f"{tuple(event)} of x"
        ) from None
    if not mask.any():
        raise ValueError("noisy selects no coordinate")
    return mask.to(x.dtype)


def _score(score_fn: ScoreFn, x: Tensor) -> Tensor:
    out = score_fn(x)
    if not isinstance(out, Tensor):
        raise TypeError(f"score_fn must return a torch.Tensor, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(
            f"score_fn must map {tuple(x.shape)} to the same shape, got {tuple(out.shape)}"
        )
    return out


def _per_sample(values: Tensor) -> Tensor:
    return values.reshape(values.shape[0], -1).sum(dim=1)


def _masked(values: Tensor, mask: Tensor | None) -> Tensor:
    return values if mask is None else values * mask


def _rademacher(like: Tensor, generator: torch.Generator | None) -> Tensor:
    bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def denoising_score_matching(
    score_fn: ScoreFn,
    x: Tensor,
    sigma: float,
    *,
    antithetic: bool = True,
    noisy: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Denoising score matching (Vincent 2011), optionally antithetic.

    .. math::  L(s) = E_{x,z}\,\big\| s(x + \sigma z) + z/\sigma \big\|_N^2,
               \qquad z \sim \mathcal N(0, I_N),

    with the noise and the norm restricted to the noisy block :math:`N`. Its minimiser is the
    score of :math:`\rho_\sigma = \rho * \mathcal N(0, \sigma^2 I_N)`, an :math:`O(\sigma^2)`
    approximation of :math:`\nabla\log\rho` (keep :math:`\sigma` a few percent of the smallest
    length scale), and :math:`L(s) = E_{\rho_\sigma}\|s - \nabla\log\rho_\sigma\|_N^2 +
    \mathrm{const}`.

    ``antithetic=True`` averages the loss at :math:`+z` and :math:`-z`. Expanding
    :math:`s(x\pm\sigma z) = s(x) \pm \sigma J z + O(\sigma^2)`, the cross term
    :math:`\pm 2 s(x)\cdot z/\sigma` (zero mean, variance :math:`O(\sigma^{-2})`) cancels between
    the two, which removes the dominant variance of the gradient at small :math:`\sigma`. The
    parameter-independent :math:`\|z\|^2/\sigma^2` is left in the value (it does not affect
    gradients), so the loss is of order ``d / sigma**2``.

    Args:
        score_fn: the model, ``[B, *event] -> [B, *event]``.
        x: clean samples ``[B, *event]``.
        sigma: noise level, positive.
        antithetic: evaluate at :math:`\pm z` and average.
        noisy: optional boolean mask broadcastable to the event shape; ``False`` coordinates are
            not noised and not scored.
        generator: source of the noise.

    Returns:
        The scalar batch-mean loss (differentiable in the model's parameters).
    """
    x = _check_inputs(score_fn, x, generator)
    sigma = check_real(sigma, "sigma", positive=True)
    antithetic = check_choice(antithetic, "antithetic", (True, False))
    mask = _check_mask(noisy, x)
    z = _masked(torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device), mask)
    target = z / sigma
    if antithetic:
        both = torch.cat([x + sigma * z, x - sigma * z])
        s_plus, s_minus = _score(score_fn, both).chunk(2)
        loss = 0.5 * (
            _masked((s_plus + target) ** 2, mask) + _masked((s_minus - target) ** 2, mask)
        )
    else:
        loss = _masked((_score(score_fn, x + sigma * z) + target) ** 2, mask)
    return _per_sample(loss).mean()


def _divergence_exact(out: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
    """Per-sample :math:`\\sum_{k \\in N} \\partial_k out_k`, one backward pass per coordinate."""
    flat_out = out.reshape(out.shape[0], -1)
    coords = range(flat_out.shape[1])
    if mask is not None:
        coords = mask.reshape(-1).nonzero().flatten().tolist()
    div = flat_out.new_zeros(flat_out.shape[0])
    for k in coords:
        (grad,) = torch.autograd.grad(flat_out[:, k].sum(), x, create_graph=True)
        div = div + grad.reshape(grad.shape[0], -1)[:, k]
    return div


def implicit_score_matching(
    score_fn: ScoreFn,
    x: Tensor,
    *,
    divergence: Literal["exact", "hutchinson", "model"] = "exact",
    n_probes: int = 1,
    noisy: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Implicit (Hyvärinen 2005) score matching.

    .. math::  L(s) = E_\rho\Big[\|s\|_N^2 + 2\sum_{k\in N}\partial_k s_k\Big]
               = E_\rho\|s - \nabla\log\rho\|_N^2 - E_\rho\|\nabla\log\rho\|_N^2

    (integrate :math:`E[s_k \partial_k\log\rho] = -E[\partial_k s_k]` by parts). Unbiased: the
    minimiser is the score itself.

    ``divergence="exact"`` differentiates each noisy output coordinate (one backward pass each;
    for low dimension). ``divergence="hutchinson"`` uses :math:`\partial_k s_k \approx
    E_u[u^\top J_s u]` with ``n_probes`` Rademacher probes :math:`u` on the noisy block, each one
    vector-Jacobian product. ``divergence="model"`` asks the model:
    ``score_fn.score_and_divergence(x) -> (s, div [B])`` (e.g.
    :meth:`gtlib.entropy.particle_score.ParticleScore.score_and_divergence`, exact over the
    :math:`g` block of every particle in :math:`d` passes); ``noisy`` must then be the block that
    method differentiates (by default the model's ``noisy`` attribute, when it has one). All
    build the graph (``create_graph=True``), so the loss trains.

    Args:
        score_fn: the model, ``[B, *event] -> [B, *event]``.
        x: samples ``[B, *event]``.
        divergence: ``"exact"``, ``"hutchinson"`` or ``"model"``.
        n_probes: probes per sample for ``"hutchinson"``.
        noisy: optional boolean mask broadcastable to the event shape.
        generator: source of the probes.

    Returns:
        The scalar batch-mean loss.
    """
    x = _check_inputs(score_fn, x, generator)
    mask = _check_mask(noisy, x)
    divergence = check_choice(divergence, "divergence", ("exact", "hutchinson", "model"))
    n_probes = check_int(n_probes, "n_probes", minimum=1)
    if divergence == "model":
        method = getattr(score_fn, "score_and_divergence", None)
        if not callable(method):
            raise TypeError(
                "divergence='model' needs `score_fn.score_and_divergence(x) -> (s, div)`"
            )
        own_mask = getattr(score_fn, "noisy", None)
        if isinstance(own_mask, Tensor):
            own_mask = _check_mask(own_mask, x)
            if mask is None:
                mask = own_mask
            elif not torch.equal(mask, own_mask):
                raise ValueError(
                    "`noisy` must be the block that `score_fn.score_and_divergence` "
                    "differentiates (`score_fn.noisy`)"
                )
        s, div = method(x)
        if s.shape != x.shape or div.shape != x.shape[:1]:
            raise ValueError(
                f"`score_and_divergence` must return s {tuple(x.shape)} and div "
                f"{tuple(x.shape[:1])}, got {tuple(s.shape)} and {tuple(div.shape)}"
            )
        return (_per_sample(_masked(s * s, mask)) + 2.0 * div).mean()
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        s = _score(score_fn, xg)
        if divergence == "exact":
            div = _divergence_exact(s, xg, mask)
        else:
            div = s.new_zeros(s.shape[0])
            for _ in range(n_probes):
                u = _masked(_rademacher(xg, generator), mask)
                (vjp,) = torch.autograd.grad((s * u).sum(), xg, create_graph=True)
                div = div + _per_sample(vjp * u) / n_probes
        return (_per_sample(_masked(s * s, mask)) + 2.0 * div).mean()


def sliced_score_matching(
    score_fn: ScoreFn,
    x: Tensor,
    *,
    n_projections: int = 1,
    probe: Literal["gaussian", "rademacher"] = "gaussian",
    noisy: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Sliced score matching (Song et al. 2019).

    .. math::  L(s) = E_{\rho, u}\Big[u^\top J_s(x)\,u + \tfrac12 (u\cdot s(x))^2\Big]
               = \tfrac12\big(E_\rho\|s - \nabla\log\rho\|_N^2 - E_\rho\|\nabla\log\rho\|_N^2\big),

    with probes :math:`u` on the noisy block, :math:`E[uu^\top] = I_N` (standard Gaussian or
    Rademacher), ``n_projections`` per sample. Unbiased, at one Jacobian-vector product per probe,
    computed in forward mode (:mod:`torch.autograd.forward_ad`), so the model's operations need
    forward-mode derivatives (all standard layers and activations have them); the result is
    differentiable in the model's parameters.

    Args:
        score_fn: the model, ``[B, *event] -> [B, *event]``.
        x: samples ``[B, *event]``.
        n_projections: probes per sample.
        probe: ``"gaussian"`` or ``"rademacher"``.
        noisy: optional boolean mask broadcastable to the event shape.
        generator: source of the probes.

    Returns:
        The scalar batch-mean loss.
    """
    x = _check_inputs(score_fn, x, generator)
    mask = _check_mask(noisy, x)
    n_projections = check_int(n_projections, "n_projections", minimum=1)
    probe = check_choice(probe, "probe", ("gaussian", "rademacher"))
    x = x.detach()
    total = x.new_zeros(x.shape[0])
    for _ in range(n_projections):
        if probe == "gaussian":
            u = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        else:
            u = _rademacher(x, generator)
        u = _masked(u, mask)
        with forward_ad.dual_level():
            out = _score(score_fn, forward_ad.make_dual(x, u))
            s, jvp = forward_ad.unpack_dual(out)
        if jvp is None:  # the model ignores its input
            jvp = torch.zeros_like(s)
        total = total + _per_sample(jvp * u) + 0.5 * _per_sample(s * u) ** 2
    return (total / n_projections).mean()
