r"""Score models and entropy production for interacting active particles (per-particle layout).

A snapshot of :math:`N` active Ornstein–Uhlenbeck particles in :math:`d` dimensions is the state
``[N, 2d]`` with per particle :math:`[x_i, g_i]` (:func:`gtlib.datasets.particles.to_state`), and
the SDE (:class:`gtlib.datasets.particles.ActiveOUParticles`)

.. math::
    dx_i = b_{x_i}\,dt + \sqrt{2\varepsilon}\,dW_i, \qquad
    dg_i = -\gamma g_i\,dt + \sqrt{2\gamma}\,dB_i,

so :math:`D = \mathrm{diag}(\varepsilon I_d, \gamma I_d)` per particle. :class:`ParticleScore`
turns a per-particle network (e.g. :class:`gtlib.nn.particle_transformer.ParticleTransformer`)
into a score model on ``[B, N, 2d]`` for :func:`gtlib.entropy.training.train_score`, and
:func:`particle_entropy_production` evaluates the entropy production rate (EPR) of a trained
model on snapshots: globally, per particle, per degree of freedom and per region of space, with
the score-free identities for comparison.

Convention: :math:`k_B = 1`, every variable even under time reversal, EPR per unit time in nats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.nn import Linear, Module
from torch.nn.attention import SDPBackend, sdpa_kernel

from gtlib.entropy.estimators import (
    score_free_entropy_production,
    score_free_entropy_production_hypoelliptic,
    spatial_decomposition,
)
from gtlib.validation import all_finite, check_choice, check_int, check_real, check_tensor

__all__ = ["ParticleEntropyProduction", "ParticleScore", "particle_entropy_production"]


class ParticleSystem(Protocol):
    """What the functions here need from a system (e.g. ``ActiveOUParticles``)."""

    dim: int
    num_particles: int
    gamma: float
    eps: float

    @property
    def box(self) -> Tensor | None: ...

    @property
    def diffusion(self) -> Tensor: ...

    def drift(self, pos: Tensor, g: Tensor) -> tuple[Tensor, Tensor]: ...

    def force_divergence(self, pos: Tensor) -> Tensor: ...


def _check_system(system: Any) -> None:
    for name in ("dim", "gamma", "eps", "diffusion", "drift", "force_divergence", "box"):
        if not hasattr(system, name):
            raise TypeError(
                f"`system` must be an active OU particle system (e.g. ActiveOUParticles); "
                f"it has no attribute {name!r}"
            )


def _flag(value: Any, name: str) -> bool:
    return bool(check_choice(value, name, (True, False)))


class ParticleScore(Module):
    r"""A score model on particle states ``[B, N, 2d]`` built from a per-particle network.

    The network is called as ``net(pos, h, box) -> [B, N, C_out]`` (the signature of
    :class:`~gtlib.nn.particle_transformer.ParticleTransformer`) with ``pos`` :math:`= x`,
    ``h`` :math:`= g` (followed by the passive force :math:`f_i` with ``force_features=True``
    and by :math:`x_i` with ``position_features=True``) and the system's
    periodic box (``None`` in free space). Its output is the score of particle :math:`i`'s
    self-propulsion (``C_out = d``: :math:`\mathrm{net}_{g_i}`, and 0 on :math:`x_i`) or of both
    blocks (``C_out = 2d``: :math:`[\mathrm{net}_{x_i}, \mathrm{net}_{g_i}]`).

    With ``parametrise=True`` (the default) the score on the noisy coordinates is

    .. math::  s = \mathrm{net} + D^{-1} b, \qquad\text{so}\qquad v = b - D s = -D\,\mathrm{net}:

    on the :math:`g` block :math:`D_g = \gamma`, :math:`b_g = -\gamma g`, hence
    :math:`s_g = \mathrm{net}_g - g` and :math:`v_g = -\gamma\,\mathrm{net}_g`; on the :math:`x`
    block (only when :math:`\varepsilon > 0`) :math:`s_x = \mathrm{net}_x + b_x/\varepsilon`.
    Noiseless coordinates (:math:`x` when :math:`\varepsilon = 0`, the hypoelliptic case) return
    :math:`\mathrm{net}_x` (or 0) unchanged; no estimator uses them (:math:`v_x = b_x` there).
    With ``zero_init=True`` the network's last :class:`~torch.nn.Linear` layer (the last one in
    ``net.modules()``, the output layer of ``ParticleTransformer``) starts at zero, so
    :math:`\mathrm{net} = 0`, :math:`v = 0` and the EPR estimate is 0 at initialisation.

    Train on the noisy block only: ``train_score(model, states, sigma=..., noisy=model.noisy)``
    (``model.noisy`` is the ``[2d]`` mask :math:`D > 0`, broadcast over particles).

    Args:
        net: the per-particle network, ``net(pos [B, N, d], h [B, N, C_in], box)``.
        system: the particle system: ``dim``, ``gamma``, ``eps``, ``box``, ``drift(pos, g)``
            (e.g. :class:`gtlib.datasets.particles.ActiveOUParticles`).
        parametrise: use :math:`s = \mathrm{net} + D^{-1} b` on the noisy block.
        force_features: append the passive force :math:`f_i(x) = b_{x_i}(x, g = 0)` (for AOUPs
            :math:`k F_i - A x_i`) and the upper triangle of its Jacobian block
            :math:`\partial f_i/\partial x_i` (``system.force_jacobian``) to the network's
            ``h`` (:math:`C_{in}` grows by :math:`d + d(d+1)/2`). In the hypoelliptic case the
            score is stiff: for one AOUP in a trap of stiffness :math:`\kappa`,
            :math:`\mathrm{net}_g = -(\kappa v_0 g + (\gamma + \kappa) f)/(\gamma v_0)`, a
            near-cancellation amplified by :math:`1/\gamma` whose :math:`g`-slope is the local
            stiffness. Given :math:`f_i` and :math:`\partial f_i/\partial x_i` exactly, the
            network need not rebuild them from its neighbours' displacements (on N = 256 AOUPs
            at packing fraction 0.6 it learned faster with them). The features are translation
            invariant and permutation equivariant.
        position_features: append :math:`x_i` to the network's ``h`` (:math:`C_{in}` grows by
            :math:`d`), for
            systems that are not translation invariant (a trap); leave ``False`` in a periodic box.
        zero_init: zero the network's last ``Linear`` layer.
        output_scale: a fixed factor on the network's output, :math:`\mathrm{net} =
            \text{output\_scale}\cdot\mathrm{net}_\theta`. With :math:`v = -D\,\mathrm{net}`
            the EPR is :math:`\sigma = E\sum_k D_k\,\mathrm{net}_k^2`, so at small noise the
            score's ``net`` is large: for the hypoelliptic AOUPs of the MIPS paper
            (:math:`\gamma = 10^{-4}`, :math:`\sigma/N \approx 1.2`) its RMS is about 77 per
            coordinate, which a zero-initialised network reaches only after many steps.
            :meth:`natural_output_scale` gives the RMS that the score-free EPR of the training
            snapshots implies; with it the network's own output is of order one.

    Shapes:
        - **input:** ``state`` ``[B, N, 2d]`` (or ``[N, 2d]``), per particle :math:`[x_i, g_i]`.
        - **output:** the score, same shape.
    """

    def __init__(
        self,
        net: Module,
        system: ParticleSystem,
        *,
        parametrise: bool = True,
        position_features: bool = False,
        force_features: bool = False,
        zero_init: bool = True,
        output_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(net, Module):
            raise TypeError(f"`net` must be a torch.nn.Module, got {type(net).__name__}")
        _check_system(system)
        self.net = net
        self.system = system
        self.dim = int(system.dim)
        self.parametrise = _flag(parametrise, "parametrise")
        self.position_features = _flag(position_features, "position_features")
        self.force_features = _flag(force_features, "force_features")
        self.output_scale = check_real(output_scale, "output_scale", positive=True)
        if self.force_features and not hasattr(system, "force_jacobian"):
            raise TypeError("`force_features=True` needs `system.force_jacobian(pos)`")
        out_channels = getattr(net, "out_channels", None)
        if out_channels is not None and out_channels not in (self.dim, 2 * self.dim):
            raise ValueError(
                f"`net` must output d = {self.dim} (g-score) or 2d = {2 * self.dim} channels "
                f"(x- and g-score), got out_channels = {out_channels}"
            )
        in_channels = getattr(net, "in_channels", None)
        layout = ["g"] + ["f", "df/dx"] * self.force_features + ["x"] * self.position_features
        expected_in = self.input_channels(
            self.dim, force_features=self.force_features, position_features=self.position_features
        )
        if in_channels is not None and in_channels != expected_in:
            raise ValueError(
                f"`net` must take in_channels = {expected_in} ([{', '.join(layout)}]), "
                f"got {in_channels}"
            )
        if float(system.eps) > 0 and out_channels == self.dim:
            raise ValueError(
                "`system` has eps > 0 (noise on x): `net` must output 2d channels to score x too"
            )
        diffusion = torch.as_tensor(system.diffusion, dtype=torch.float64)
        noisy = diffusion > 0
        # float64 here, cast per call, so that .float()/.double() keep 1/D exact to the dtype.
        self._inverse_diffusion = torch.where(noisy, 1.0 / torch.where(noisy, diffusion, 1.0), 0.0)
        self.register_buffer("noisy", noisy, persistent=False)
        if _flag(zero_init, "zero_init"):
            last = None
            for module in net.modules():
                if isinstance(module, Linear):
                    last = module
            if last is None:
                raise ValueError("`zero_init=True` but `net` has no torch.nn.Linear layer")
            with torch.no_grad():
                last.weight.zero_()
                if last.bias is not None:
                    last.bias.zero_()

    @staticmethod
    def input_channels(
        dim: int, *, force_features: bool = False, position_features: bool = False
    ) -> int:
        """The ``in_channels`` the network needs: :math:`d` for :math:`g`, plus
        :math:`d + d(d+1)/2` with ``force_features`` and :math:`d` with ``position_features``."""
        channels = dim + (dim if position_features else 0)
        return channels + (dim + dim * (dim + 1) // 2 if force_features else 0)

    @staticmethod
    def natural_output_scale(
        system: ParticleSystem, pos: Tensor, g: Tensor, batch_size: int = 16
    ) -> float:
        r"""The RMS per noisy coordinate of :math:`\mathrm{net}` that the score-free EPR of
        snapshots implies: :math:`\sigma = E\sum_k D_k\,\mathrm{net}_k^2` with equal RMS
        :math:`r` on every noisy coordinate gives
        :math:`r = \sqrt{\sigma / (N \sum_{k \in \text{particle}} D_k)}`
        (:math:`\sqrt{\sigma / (N d \gamma)}` for hypoelliptic AOUPs). A value for
        ``output_scale``; 1 when the estimate is not positive.

        Shapes:
            pos, g: ``[S, N, d]`` (or ``[S, B, N, d]``), at least 2 snapshots.
        """
        _check_system(system)
        pos, g = _check_snapshots(pos, g, int(system.dim))
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        sigma = _score_free(system, pos, g, batch_size)[0]
        diffusion = float(torch.as_tensor(system.diffusion, dtype=torch.float64).sum())
        if not sigma > 0 or not diffusion > 0:
            return 1.0
        return math.sqrt(sigma / (pos.shape[1] * diffusion))

    def _split(self, state: Tensor) -> tuple[Tensor, Tensor, bool]:
        if not isinstance(state, Tensor) or not state.is_floating_point():
            raise TypeError("`state` must be a floating-point tensor [B, N, 2d]")
        if state.dim() not in (2, 3) or state.shape[-1] != 2 * self.dim:
            raise ValueError(
                f"`state` must have shape [B, N, {2 * self.dim}] or [N, {2 * self.dim}], "
                f"got {tuple(state.shape)}"
            )
        batched = state.dim() == 3
        if not batched:
            state = state.unsqueeze(0)
        return state[..., : self.dim], state[..., self.dim :], batched

    def _features(self, pos: Tensor, g: Tensor) -> Tensor:
        """The network's ``h``: ``g``, then the force features and ``x`` when enabled."""
        features = [g]
        if self.force_features:
            features.append(self.system.drift(pos, torch.zeros_like(g))[0])
            jacobian = self.system.force_jacobian(pos)
            rows, cols = torch.triu_indices(self.dim, self.dim, device=pos.device)
            features.append(jacobian[..., rows, cols])
        if self.position_features:
            features.append(pos)
        return torch.cat(features, dim=-1) if len(features) > 1 else g

    def _run_net(self, pos: Tensor, h: Tensor, h_self: Tensor | None = None) -> Tensor:
        box = self.system.box
        out = self.net(pos, h, box) if h_self is None else self.net(pos, h, box, h_self=h_self)
        if self.output_scale != 1.0:
            out = out * self.output_scale
        if out.shape[-1] == self.dim:
            out = torch.cat([torch.zeros_like(out), out], dim=-1)
        if out.shape != (*pos.shape[:-1], 2 * self.dim):
            raise ValueError(
                f"`net` must return [B, N, d] or [B, N, 2d] = {tuple(pos.shape[:-1])} + "
                f"[{self.dim} or {2 * self.dim}], got {tuple(out.shape)}"
            )
        return out

    def net_output(self, state: Tensor) -> Tensor:
        r"""The raw network :math:`\mathrm{net}` in the state layout ``[B, N, 2d]`` (0 on
        :math:`x` when the network scores :math:`g` only); :math:`v = -D\,\mathrm{net}` on the
        noisy block when ``parametrise=True``."""
        pos, g, batched = self._split(state)
        out = self._run_net(pos, self._features(pos, g))
        return out if batched else out.squeeze(0)

    def score_and_divergence(self, state: Tensor) -> tuple[Tensor, Tensor]:
        r"""The score and its exact divergence over the :math:`g` block, per system.

        .. math::  \nabla_g\cdot s_g = \sum_i \operatorname{tr}
                   \frac{\partial s_{g_i}}{\partial g_i}

        Only the diagonal blocks enter the trace, and a local network (e.g.
        :class:`~gtlib.nn.particle_transformer.ParticleTransformer`) sees :math:`g_i` in
        particle :math:`i`'s output only through its own token; passing the own-token states as
        a separate tensor (``net(pos, h, box, h_self=...)``) gives every block
        :math:`\partial s_{g_i}/\partial g_i` at once in :math:`d` backward passes, whatever
        :math:`N`. The graph is kept (``create_graph=True``), so
        :func:`~gtlib.entropy.score_matching.implicit_score_matching` with
        ``divergence="model"`` trains on it: exact implicit score matching with no noise level
        and no probes. Hypoelliptic systems only (:math:`\varepsilon = 0`; the :math:`x` block
        enters every neighbour's tokens, so its divergence has no such shortcut).

        Shapes:
            - **input:** ``state`` ``[B, N, 2d]`` (or ``[N, 2d]``).
            - **output:** the score (as :meth:`forward`) and the divergence ``[B]`` (or ``[]``).
        """
        if bool(self.noisy[: self.dim].any()):
            raise ValueError(
                "score_and_divergence covers the g block only, but the system has noise on x "
                "(eps > 0); use a Hutchinson divergence instead"
            )
        pos, g, batched = self._split(state)
        # The fused CPU/GPU attention kernels have no double backward; the math one does.
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            g_self = g.detach().requires_grad_(True)
            h = self._features(pos, g)
            h_self = torch.cat([g_self, h[..., self.dim :]], dim=-1)
            out = self._run_net(pos, h, h_self)
            net_g = out[..., self.dim :]
            divergence = torch.zeros(pos.shape[0], dtype=out.dtype, device=out.device)
            for a in range(self.dim):
                (grad,) = torch.autograd.grad(net_g[..., a].sum(), g_self, create_graph=True)
                divergence = divergence + grad[..., a].sum(-1)
        score = out
        if self.parametrise:  # s_g = net_g - g: each particle's block adds -d to the trace
            score = out - torch.cat([torch.zeros_like(g), g], dim=-1)
            divergence = divergence - g.shape[-2] * self.dim
        if not batched:
            return score.squeeze(0), divergence.squeeze(0)
        return score, divergence

    def forward(self, state: Tensor) -> Tensor:
        out = self.net_output(state)
        if not self.parametrise:
            return out
        pos, g, _ = self._split(state)
        inverse = self._inverse_diffusion.to(device=state.device, dtype=state.dtype)
        if bool(self.noisy[: self.dim].any()):
            b_x, b_g = self.system.drift(pos, g)
            b = torch.cat([b_x, b_g], dim=-1)
        else:  # hypoelliptic: only b_g = -gamma g is needed
            b = torch.cat([torch.zeros_like(pos), -float(self.system.gamma) * g], dim=-1)
        return out + (inverse * b).reshape(out.shape)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.net!r}, parametrise={self.parametrise}, "
            f"position_features={self.position_features}, "
            f"force_features={self.force_features}"
            + (f", output_scale={self.output_scale:g})" if self.output_scale != 1.0 else ")")
        )


@dataclass(frozen=True)
class ParticleEntropyProduction:
    r"""Entropy production of a particle system estimated with a score model.

    Local values are the *quadratic* form (non-negative pointwise),
    :math:`\sigma_i = |v_{x_i}|^2/\varepsilon + |v_{g_i}|^2/\gamma` (the :math:`x` term only when
    :math:`\varepsilon > 0`), with :math:`v = b - Ds`. Standard errors treat snapshots as
    independent (``std / sqrt(S)`` over per-snapshot totals); snapshots from one trajectory are
    correlated, which makes them optimistic.

    Attributes:
        total: :math:`\sigma`, the mean over snapshots of :math:`\sum_i \sigma_i`.
        stderr: its standard error.
        per_particle_mean: ``total / N``; ``per_particle_stderr`` its standard error.
        per_dof: ``[2]`` the :math:`x` and :math:`g` parts (they sum to ``total``);
            ``per_dof_stderr`` their standard errors.
        per_particle: ``[S, N]`` local EPR of every particle in every snapshot.
        local: ``[S, N, 2]`` the same split into :math:`x` and :math:`g` parts.
        per_snapshot: ``[S]`` total per snapshot.
        spatial_mean_per_particle, spatial_sum_per_area, spatial_counts: the maps of
            :func:`~gtlib.entropy.estimators.spatial_decomposition` (``None`` without ``bins``).
        spatial_box: the box ``[d]`` the maps cover (origin ``-box / 2``), or ``None``.
        score_free, score_free_stderr: the score-free estimate, ``score_free_method`` which
            identity (``"hypoelliptic"``: :math:`-E[\sum_i\nabla_{x_i}\cdot F_i]`;
            ``"full_noise"``: :math:`E[b\cdot D^{-1}b + \nabla\cdot b]`).
        divergence, divergence_stderr: Hutchinson estimate of :math:`E[\nabla\cdot v]` (0 at
            stationarity) or ``None``.
        num_snapshots, num_particles: :math:`S`, :math:`N`.
        form: ``"quadratic"``.
    """

    total: float
    stderr: float
    per_particle_mean: float
    per_particle_stderr: float
    per_dof: Tensor
    per_dof_stderr: Tensor
    per_particle: Tensor
    local: Tensor
    per_snapshot: Tensor
    spatial_mean_per_particle: Tensor | None
    spatial_sum_per_area: Tensor | None
    spatial_counts: Tensor | None
    spatial_box: Tensor | None
    score_free: float
    score_free_stderr: float
    score_free_method: str
    divergence: float | None
    divergence_stderr: float | None
    num_snapshots: int
    num_particles: int
    form: str = "quadratic"

    def summary(self) -> dict[str, Any]:
        """The scalar results as a JSON-serialisable dict."""
        return {
            "total": self.total,
            "stderr": self.stderr,
            "per_particle_mean": self.per_particle_mean,
            "per_particle_stderr": self.per_particle_stderr,
            "sigma_x": float(self.per_dof[0]),
            "sigma_g": float(self.per_dof[1]),
            "sigma_x_stderr": float(self.per_dof_stderr[0]),
            "sigma_g_stderr": float(self.per_dof_stderr[1]),
            "score_free": self.score_free,
            "score_free_stderr": self.score_free_stderr,
            "score_free_method": self.score_free_method,
            "divergence": self.divergence,
            "divergence_stderr": self.divergence_stderr,
            "num_snapshots": self.num_snapshots,
            "num_particles": self.num_particles,
            "form": self.form,
        }


def _check_snapshots(pos: Any, g: Any, dim: int) -> tuple[Tensor, Tensor]:
    for name, value in (("pos", pos), ("g", g)):
        check_tensor(value, name, floating=True, values=True)
    if pos.shape != g.shape or pos.dim() < 3 or pos.shape[-1] != dim:
        raise ValueError(
            f"pos and g must have the same shape [S, N, {dim}] (or [S, B, N, {dim}]), got "
            f"{tuple(pos.shape)} and {tuple(g.shape)}"
        )
    num_particles = pos.shape[-2]
    pos = pos.reshape(-1, num_particles, dim)
    g = g.reshape(-1, num_particles, dim)
    if pos.shape[0] < 2:
        raise ValueError(f"pos and g: need at least 2 snapshots, got {pos.shape[0]}")
    for name, value in (("pos", pos), ("g", g)):
        if not all_finite(value):  # always: evaluation, not a hot path
            raise ValueError(f"{name} contains NaN or infinite values")
    return pos, g


def _check_bins(bins: Any, dim: int) -> int | tuple[int, ...] | None:
    """``None``, a positive int or ``dim`` positive ints."""
    if bins is None:
        return None
    if isinstance(bins, tuple | list):
        if len(bins) != dim:
            raise ValueError(f"bins must be a positive int or {dim} positive ints, got {bins!r}")
        return tuple(check_int(b, "bins", minimum=1) for b in bins)
    return check_int(bins, "bins", minimum=1)


def _hutchinson_divergence(
    field: Callable[[Tensor], Tensor], state: Tensor, weight: Tensor, generator: torch.Generator
) -> Tensor:
    r"""Per-snapshot :math:`\sum_k w_k\,\partial_k f_k` by one Rademacher probe, ``[b]``."""
    with torch.enable_grad():
        x = state.detach().requires_grad_(True)
        out = field(x)
        bits = torch.randint(0, 2, x.shape, generator=generator).to(x.device)
        u = (2 * bits - 1).to(x.dtype) * (weight != 0)
        (vjp,) = torch.autograd.grad((out * (weight * u)).sum(), x)
    return (vjp * u).reshape(x.shape[0], -1).sum(dim=1).detach()


def _stats(values: Tensor) -> tuple[float, float]:
    values = values.to(torch.float64)
    return float(values.mean()), float(values.std() / math.sqrt(values.shape[0]))


class _LocalEPR:
    """The score-based local EPR of snapshot chunks and their Hutchinson :math:`\\nabla\\cdot v`."""

    def __init__(
        self, score_model: Callable[[Tensor], Tensor], system: ParticleSystem, pos: Tensor
    ) -> None:
        param = None
        if isinstance(score_model, Module):
            param = next(iter(score_model.parameters()), None)
        self.dtype = param.dtype if param is not None else pos.dtype
        self.device = param.device if param is not None else pos.device
        self.score_model, self.system = score_model, system
        self.dim, self.num_particles = int(system.dim), pos.shape[1]
        self.diffusion = torch.as_tensor(system.diffusion, dtype=self.dtype, device=self.device)
        self.noisy = self.diffusion > 0
        self.safe = torch.where(self.noisy, self.diffusion, torch.ones_like(self.diffusion))
        self.gamma, self.hypoelliptic = float(system.gamma), float(system.eps) == 0.0
        self.parametrised = isinstance(score_model, ParticleScore) and score_model.parametrise

    def local(self, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """The state of a chunk and its local EPR ``[b, N, 2]`` (x and g parts, float64)."""
        state = torch.cat([p, q], dim=-1)
        noisy, diffusion = self.noisy, self.diffusion
        with torch.no_grad():
            s = self.score_model(state)
            if not isinstance(s, Tensor) or s.shape != state.shape:
                raise ValueError(f"score_model must map {tuple(state.shape)} to the same shape")
            b = torch.cat(self.system.drift(p, q), dim=-1)
            v = torch.where(noisy, b - diffusion * torch.where(noisy, s, 0.0), b)
            local = torch.where(noisy, v * v / self.safe, 0.0)
        return state, local.reshape(*local.shape[:-1], 2, self.dim).sum(-1).to(torch.float64)

    def divergence(
        self, state: Tensor, p: Tensor, probes: int, generator: torch.Generator
    ) -> Tensor:
        r"""Per-snapshot Hutchinson estimate of :math:`\nabla\cdot v`, ``[b]`` (float64)."""
        if self.parametrised:
            field, constant = self.score_model.net_output, 0.0
        else:
            field, constant = self.score_model, -self.gamma * self.num_particles * self.dim
        div = torch.zeros(state.shape[0], dtype=torch.float64, device=self.device)
        weight = torch.where(self.noisy, self.diffusion, 0.0)
        for _ in range(probes):
            div -= _hutchinson_divergence(field, state, weight, generator).to(torch.float64)
        div /= probes
        with torch.no_grad():
            force_div = self.system.force_divergence(p).to(torch.float64)
        if self.hypoelliptic or not self.parametrised:
            div += force_div + constant
        return div

    def run(
        self, pos: Tensor, g: Tensor, batch_size: int, probes: int, seed: int
    ) -> tuple[Tensor, Tensor | None]:
        """The local EPR ``[S, N, 2]`` of every snapshot and the divergences ``[S]`` (or
        ``None`` without probes)."""
        generator = torch.Generator().manual_seed(seed)
        local_chunks, divergence_chunks = [], []
        for start in range(0, pos.shape[0], batch_size):
            p = pos[start : start + batch_size].to(device=self.device, dtype=self.dtype)
            q = g[start : start + batch_size].to(device=self.device, dtype=self.dtype)
            state, local = self.local(p, q)
            local_chunks.append(local.to(pos.device))  # results live with the snapshots
            if probes:
                divergence = self.divergence(state, p, probes, generator)
                divergence_chunks.append(divergence.to(pos.device))
        local = torch.cat(local_chunks)
        if not torch.isfinite(local).all():
            raise ValueError("non-finite local entropy production: check score_model")
        return local, torch.cat(divergence_chunks) if divergence_chunks else None


def _spatial_maps(
    per_particle: Tensor, pos: Tensor, system: ParticleSystem, bins: Any
) -> tuple[tuple[Tensor | None, ...], Tensor | None]:
    """The maps of :func:`spatial_decomposition` and the box they cover (``None``s without
    ``bins``)."""
    if bins is None:
        return (None, None, None), None
    dim = pos.shape[-1]
    box = system.box
    if box is None:
        extent = 2.0 * float(pos.abs().max()) * (1.0 + 1e-6)
        spatial_box = torch.full((dim,), extent, dtype=torch.float64)
    else:
        spatial_box = torch.as_tensor(box, dtype=torch.float64).expand(dim).clone()
    maps = spatial_decomposition(per_particle, pos.to(torch.float64), spatial_box, bins)
    return maps, spatial_box


def _score_free(
    system: ParticleSystem, pos: Tensor, g: Tensor, batch_size: int
) -> tuple[float, float, str]:
    """The score-free estimate, its standard error and the identity used."""
    num_snapshots, num_particles, dim = pos.shape
    if float(system.eps) == 0.0:
        with torch.no_grad():
            values = torch.cat(
                [
                    system.force_divergence(pos[i : i + batch_size])
                    for i in range(0, len(pos), batch_size)
                ]
            )
        return (*score_free_entropy_production_hypoelliptic(values), "hypoelliptic")
    gamma = float(system.gamma)

    def flat_drift(x: Tensor) -> Tensor:
        state = x.reshape(-1, num_particles, 2 * dim)
        return torch.cat(system.drift(state[..., :dim], state[..., dim:]), -1).reshape(x.shape)

    def flat_divergence(x: Tensor) -> Tensor:
        p = x.reshape(-1, num_particles, 2 * dim)[..., :dim]
        return system.force_divergence(p) - gamma * num_particles * dim

    flat = torch.cat([pos, g], dim=-1).reshape(num_snapshots, -1)
    flat_diffusion = torch.as_tensor(system.diffusion, dtype=flat.dtype).repeat(num_particles)
    estimate = score_free_entropy_production(flat, flat_drift, flat_divergence, flat_diffusion)
    return (*estimate, "full_noise")


def particle_entropy_production(
    score_model: Callable[[Tensor], Tensor],
    system: ParticleSystem,
    pos: Tensor,
    g: Tensor,
    *,
    batch_size: int = 16,
    bins: int | tuple[int, ...] | None = None,
    divergence_probes: int = 0,
    seed: int = 0,
) -> ParticleEntropyProduction:
    r"""Entropy production of an active particle system from snapshots and a score model.

    With :math:`v = b - Ds` (:math:`v_x = b_x` when :math:`\varepsilon = 0`), the local EPR of
    particle :math:`i` is the quadratic form

    .. math::  \sigma_i = |v_{x_i}|^2/\varepsilon + |v_{g_i}|^2/\gamma
               \qquad(\text{the } x \text{ term only for } \varepsilon > 0),

    and :math:`\sigma = E[\sum_i\sigma_i]`. For comparison the score-free identity: hypoelliptic
    (:math:`\varepsilon = 0`) :math:`\sigma = -E[\sum_i\nabla_{x_i}\cdot F_i]`
    (:func:`~gtlib.entropy.estimators.score_free_entropy_production_hypoelliptic` with
    ``system.force_divergence``); otherwise :math:`\sigma = E[b\cdot D^{-1}b + \nabla\cdot b]`
    with :math:`\nabla\cdot b = \sum_i\nabla_{x_i}\cdot F_i - \gamma N d`
    (:func:`~gtlib.entropy.estimators.score_free_entropy_production`).

    ``divergence_probes > 0`` adds a Hutchinson estimate of :math:`E[\nabla\cdot v]`, which is 0
    at stationarity for the exact score (a check of the learned score): on the noisy block
    :math:`\partial_k v_k = \partial_k b_k - D_k\partial_k s_k`; for a parametrised
    :class:`ParticleScore` this is :math:`-D_k\partial_k\mathrm{net}_k`, plus
    :math:`\sum_i\nabla_{x_i}\cdot F_i` from the noiseless :math:`x` block when
    :math:`\varepsilon = 0`. One vector-Jacobian product per probe and chunk.

    Args:
        score_model: maps states ``[b, N, 2d]`` to scores ``[b, N, 2d]`` (e.g.
            :class:`ParticleScore`; values on noiseless coordinates are ignored).
        system: the particle system (``ActiveOUParticles``): ``drift``, ``diffusion``,
            ``force_divergence``, ``gamma``, ``eps``, ``box``.
        pos, g: snapshots ``[S, N, d]`` (or ``[S, B, N, d]``, flattened to ``S * B``
            snapshots), moved chunk by chunk to the model's dtype and device; the results'
            tensors (``per_particle``, ``local``, the maps, ...) are on the device of ``pos``.
        batch_size: snapshots per evaluation chunk (evaluation runs under ``torch.no_grad``).
        bins: cells per dimension for the spatial map, or ``None`` for none. In free space the
            map covers the smallest centred cube holding every particle.
        divergence_probes: Rademacher probes per snapshot for :math:`E[\nabla\cdot v]` (0: skip).
        seed: seeds the probes.

    Returns:
        :class:`ParticleEntropyProduction`.

    Raises:
        TypeError: an argument of the wrong type (the message names it).
        ValueError: a wrong value: shapes, fewer than 2 snapshots, NaN or infinity in ``pos`` or
            ``g``, or a non-finite local EPR (``score_model`` is named).
    """
    if not callable(score_model):
        raise TypeError(f"score_model must be callable, got {type(score_model).__name__}")
    _check_system(system)
    pos, g = _check_snapshots(pos, g, int(system.dim))
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    divergence_probes = check_int(divergence_probes, "divergence_probes", minimum=0)
    seed = check_int(seed, "seed", minimum=-(2**63), maximum=2**64 - 1)  # torch.Generator
    bins = _check_bins(bins, int(system.dim))
    num_snapshots, num_particles, _ = pos.shape
    local, divergences = _LocalEPR(score_model, system, pos).run(
        pos, g, batch_size, divergence_probes, seed
    )
    per_particle = local.sum(-1)
    per_snapshot = per_particle.sum(-1)
    total, stderr = _stats(per_snapshot)
    per_dof_samples = local.sum(1)
    spatial, spatial_box = _spatial_maps(per_particle, pos, system, bins)
    score_free, score_free_stderr, method = _score_free(system, pos, g, batch_size)
    divergence = divergence_stderr = None
    if divergences is not None:
        divergence, divergence_stderr = _stats(divergences)
    root = math.sqrt(num_snapshots)
    return ParticleEntropyProduction(
        total=total,
        stderr=stderr,
        per_particle_mean=total / num_particles,
        per_particle_stderr=float(per_particle.mean(1).std() / root),
        per_dof=per_dof_samples.mean(0),
        per_dof_stderr=per_dof_samples.std(0) / root,
        per_particle=per_particle,
        local=local,
        per_snapshot=per_snapshot,
        spatial_mean_per_particle=spatial[0],
        spatial_sum_per_area=spatial[1],
        spatial_counts=spatial[2],
        spatial_box=spatial_box,
        score_free=score_free,
        score_free_stderr=score_free_stderr,
        score_free_method=method,
        divergence=divergence,
        divergence_stderr=divergence_stderr,
        num_snapshots=num_snapshots,
        num_particles=num_particles,
    )
