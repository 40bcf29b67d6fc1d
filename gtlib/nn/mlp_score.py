"""``MLPScore``: a multilayer-perceptron score model for low-dimensional systems."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import GELU, Linear, Module, ModuleList, SiLU

from gtlib.validation import check_bool, check_choice, check_input, check_int, renamed_arguments

_ACTIVATIONS = {"gelu": GELU, "silu": SiLU}


class MLPScore(Module):
    r"""An MLP score model :math:`s_\theta(x) \approx \nabla\log\rho(x)` for a state
    :math:`x \in \mathbb{R}^d` of low dimension (the whole state is one input vector; for many
    particles use a local, permutation-equivariant model instead).

    .. math::
        \mathrm{net}(x) = W_L\,\phi(\cdots\phi(W_1 x + c_1)\cdots) + c_L
        \;[\, + W_{\mathrm{skip}}\, x + c_{\mathrm{skip}} \,]

    with ``num_layers`` linear layers, activation :math:`\phi` (GELU or SiLU) and, with
    ``linear_skip``, a linear map straight from input to output (the exact score of a Gaussian is
    linear, so this path carries it and the hidden layers learn the rest). The output layer and
    the skip start at zero, so :math:`\mathrm{net} = 0` at initialisation.

    Without ``drift``/``diffusion`` the model returns :math:`s = \mathrm{net}(x)`. With both
    given, for an SDE :math:`dX = b(X)\,dt + \sqrt{2D}\,dW` with constant diagonal :math:`D`,
    it uses the parametrisation

    .. math::  s(x) = \mathrm{net}(x) + D^{-1} b(x) \quad\text{on the noisy block } (D_k > 0),

    so that the probability-flow velocity is :math:`v = b - Ds = -D\,\mathrm{net}`: the network
    learns the velocity directly, :math:`v = 0` at initialisation, and the EPR estimate
    :math:`E[v^\top D^{-1} v] = E[\mathrm{net}^\top D\,\mathrm{net}]` starts at zero. On noiseless
    coordinates (:math:`D_k = 0`) the output is :math:`\mathrm{net}_k` unchanged; it is never
    used there (:func:`gtlib.entropy.estimators.entropy_production` takes :math:`v_k = b_k`, and
    the score-matching losses' ``noisy`` mask excludes those coordinates).

    Args:
        num_coordinates: state dimension :math:`d` (the coordinates of ``x``; ``dim`` is its
            deprecated name: ``dim`` means a spatial dimension elsewhere in gtlib).
        hidden_channels: width of the hidden layers.
        num_layers: number of linear layers (``>= 1``; ``1`` is an affine map).
        act: ``"gelu"`` or ``"silu"`` (``activation`` is its deprecated name).
        linear_skip: add a linear input-to-output path.
        drift: :math:`b`, a differentiable callable ``[B, d] -> [B, d]`` (with ``diffusion``).
        diffusion: the diagonal of :math:`D`, ``[d]`` (or a scalar), non-negative, stored as a
            buffer (with ``drift``).

    Shapes:
        - **input:** ``x`` ``[B, d]``.
        - **output:** ``[B, d]``.
    """

    @renamed_arguments(activation="act", dim="num_coordinates")
    def __init__(
        self,
        num_coordinates: int,
        hidden_channels: int = 128,
        num_layers: int = 3,
        act: str = "gelu",
        linear_skip: bool = True,
        drift: Callable[[Tensor], Tensor] | None = None,
        diffusion: Tensor | float | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_coordinates", num_coordinates),
            ("hidden_channels", hidden_channels),
            ("num_layers", num_layers),
        ):
            check_int(value, name, minimum=1)
        check_choice(act, "act", sorted(_ACTIVATIONS))
        linear_skip = check_bool(linear_skip, "linear_skip")
        if (drift is None) != (diffusion is None):
            raise ValueError("`drift` and `diffusion` must be given together")
        if drift is not None and not callable(drift):
            raise TypeError(f"`drift` must be callable, got {type(drift).__name__}")
        self.num_coordinates = dim = num_coordinates
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.act_name = act
        self.drift = drift
        widths = [dim] + [hidden_channels] * (num_layers - 1) + [dim]
        self.lins = ModuleList(Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.act = _ACTIVATIONS[act]()
        self.skip = Linear(dim, dim) if linear_skip else None
        if diffusion is not None:
            diffusion = _as_diffusion(diffusion)
            if diffusion.dim() == 0:
                diffusion = diffusion.expand(dim)
            if diffusion.shape != (dim,):
                raise ValueError(
                    f"`diffusion` must have shape [{dim}] (or be a scalar), "
                    f"got {tuple(diffusion.shape)}"
                )
            if not torch.isfinite(diffusion).all() or (diffusion < 0).any():
                raise ValueError("`diffusion` must be finite and non-negative")
            if not (diffusion > 0).any():
                raise ValueError("`diffusion` is zero everywhere: there is no noisy coordinate")
            noisy = diffusion > 0
            inverse = torch.where(noisy, 1.0 / torch.where(noisy, diffusion, 1.0), 0.0)
            self.register_buffer("diffusion", diffusion.clone())
            self.register_buffer("inverse_diffusion", inverse)
        else:
            self.diffusion = None
            self.inverse_diffusion = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default (Kaiming-uniform) hidden layers; output layer and skip at zero."""
        for lin in self.lins:
            lin.reset_parameters()
        torch.nn.init.zeros_(self.lins[-1].weight)
        torch.nn.init.zeros_(self.lins[-1].bias)
        if self.skip is not None:
            torch.nn.init.zeros_(self.skip.weight)
            torch.nn.init.zeros_(self.skip.bias)

    @property
    def dim(self) -> int:
        """Deprecated name of :attr:`num_coordinates`."""
        warnings.warn(
            "MLPScore.dim is deprecated, use num_coordinates", FutureWarning, stacklevel=2
        )
        return self.num_coordinates

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "x", self.lins[0].weight, dim=2)
        if x.shape[1] != self.num_coordinates:
            raise ValueError(
                f"`x` must have shape [B, {self.num_coordinates}], got {tuple(x.shape)}"
            )
        h = x
        for i, lin in enumerate(self.lins):
            h = lin(h)
            if i + 1 < len(self.lins):
                h = self.act(h)
        if self.skip is not None:
            h = h + self.skip(x)
        if self.drift is not None:
            drift = self.drift(x)
            if not isinstance(drift, Tensor) or drift.shape != x.shape:
                raise ValueError(
                    f"drift must map x [B, {self.num_coordinates}] to a tensor of the same shape, "
                    "got "
                    f"{list(drift.shape) if isinstance(drift, Tensor) else type(drift).__name__}"
                )
            h = h + self.inverse_diffusion * drift
        return h

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.num_coordinates}, "
            f"hidden_channels={self.hidden_channels}, "
            f"num_layers={self.num_layers}, act={self.act_name!r}, "
            f"linear_skip={self.skip is not None}, drift_parametrised={self.drift is not None})"
        )


def _as_diffusion(diffusion) -> Tensor:
    """``diffusion`` (a real number, a sequence of them or a real tensor) as a tensor of the
    default dtype."""
    if isinstance(diffusion, Tensor):
        if diffusion.is_complex() or diffusion.dtype == torch.bool:
            raise TypeError(f"`diffusion` must be real, got dtype {diffusion.dtype}")
        return diffusion.detach().to(torch.get_default_dtype())
    if isinstance(diffusion, (str, bytes, bool)):
        raise TypeError(f"`diffusion` must be a number or a tensor, got {diffusion!r}")
    try:
        return torch.as_tensor(diffusion, dtype=torch.get_default_dtype())
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"`diffusion` must be a number or a tensor, got {diffusion!r}") from err
