"""A spatially-local transformer for particle systems (per-particle neighbourhood attention)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import GELU, LayerNorm, Linear, Module, ModuleList, Sequential
from torch.utils.checkpoint import checkpoint

from gtlib.attention import Pattern, sparse_attention
from gtlib.attention.cache import pattern_cache
from gtlib.attention.neighbors import minimum_image
from gtlib.validation import check_bool, check_finite, check_input, check_int, check_real

BoxLike = Tensor | Sequence[float] | float


class ParticleTransformer(Module):
    r"""The spatially-local transformer of Boffi and Vanden-Eijnden,
    `"Deep learning probability flows and entropy production rates in active matter"
    <https://arxiv.org/abs/2309.12991>`_ (PNAS 2024), used there to learn the score of
    interacting active particles.

    Every particle :math:`i` is evaluated on its own neighbourhood: its ``num_neighbors``
    (:math:`K`) nearest particles :math:`N_K(i)` under the minimum image of a periodic box (or in
    free space), found with cell lists (:meth:`~gtlib.attention.Pattern.knn`). The particle and
    its neighbours become tokens

    .. math::
        \mathbf{t}_{i,0} = \phi(\mathbf{0}, \mathbf{h}_i), \qquad
        \mathbf{t}_{i,j} = \phi(\mathbf{x}_j - \mathbf{x}_i, \mathbf{h}_j), \quad j \in N_K(i),

    with :math:`\phi` a two-layer GELU MLP and :math:`\mathbf{x}_j - \mathbf{x}_i` the minimum
    image displacement. ``num_layers`` pre-LayerNorm encoder layers then let the tokens of one
    particle attend to each other (and to no other particle's tokens):

    .. math::
        \mathbf{t} &\leftarrow \mathbf{t} + \mathbf{W}_o\,\mathrm{MHA}(\mathrm{LN}(\mathbf{t})),
        \qquad
        \mathrm{MHA}(\mathbf{u})_a = \Big\Vert_{h} \sum_{b} \mathrm{softmax}_b\Big(
            \frac{\mathbf{q}^h_a \cdot \mathbf{k}^h_b}{\sqrt{C/H}}\Big)\, \mathbf{v}^h_b \\
        \mathbf{t} &\leftarrow \mathbf{t} + \mathbf{W}_2\,\mathrm{GELU}(\mathbf{W}_1\,
            \mathrm{LN}(\mathbf{t})),

    where :math:`a, b` run over the particle's :math:`K + 1` tokens. There is no positional
    encoding, so the output is invariant to the order of the neighbours and the model is
    permutation equivariant in the particles, invariant to periodic translations, and local:
    particle :math:`i`'s output depends only on its :math:`K` nearest neighbours, so a model
    trained at :math:`N` particles runs unchanged at any other :math:`N`. The own token
    :math:`\mathbf{t}_{i,0}` is decoded by an MLP (LayerNorm, Linear, GELU, Linear) to the
    output, e.g. the score :math:`\nabla_{(\mathbf{x}_i, \mathbf{g}_i)} \log \rho`.

    The attention runs on :func:`~gtlib.attention.sparse_attention` with the block pattern
    :meth:`Pattern.full(batch=token_owner) <gtlib.attention.Pattern.full>`, which the core
    sends to :func:`torch.nn.functional.scaled_dot_product_attention`.

    Args:
        in_channels: per-particle state channels besides the position (e.g. the active force
            :math:`\mathbf{g}_i`, ``dim``); ``0`` for positions only.
        out_channels: output channels per particle (e.g. ``2 * dim`` for the score in
            :math:`\mathbf{x}_i` and :math:`\mathbf{g}_i`).
        dim: spatial dimension :math:`d`.
        num_neighbors: neighbours :math:`K` per particle (fewer than the particles per system).
        hidden_channels: token width :math:`C`.
        num_layers: number of encoder layers.
        heads: attention heads :math:`H` (must divide ``hidden_channels``).
        ff_channels: hidden width of the feed-forward blocks.
        dropout: dropout on the attention weights and on both residual branches.
        include_self: add the particle's own token (displacement 0, own state) and decode it.
            With ``False`` the particle sees only its :math:`K` neighbours' tokens and the
            decoder reads their mean, so its own state :math:`\mathbf{h}_i` does not enter.
        chunk_size: particles per chunk in :meth:`forward` (``None``: all at once). Chunks bound
            the memory of the :math:`N (K + 1)` tokens; with gradients enabled each chunk is
            recomputed in the backward pass (:func:`torch.utils.checkpoint.checkpoint`), so
            training memory stays bounded as well.

    Shapes:
        - **input:** positions ``pos`` :math:`(N, d)` or :math:`(B, N, d)`, states ``h``
          :math:`(N, C_{in})` or :math:`(B, N, C_{in})` (``None`` when ``in_channels == 0``),
          ``box`` a float, :math:`d` lengths, or ``None`` (free space).
        - **output:** :math:`(N, C_{out})` or :math:`(B, N, C_{out})`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dim: int = 2,
        num_neighbors: int = 64,
        hidden_channels: int = 128,
        num_layers: int = 4,
        heads: int = 4,
        ff_channels: int = 256,
        dropout: float = 0.0,
        include_self: bool = True,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        check_int(in_channels, "in_channels", minimum=0)
        for name, value in (
            ("out_channels", out_channels),
            ("dim", dim),
            ("num_neighbors", num_neighbors),
            ("hidden_channels", hidden_channels),
            ("heads", heads),
            ("ff_channels", ff_channels),
        ):
            check_int(value, name, minimum=1)
        check_int(num_layers, "num_layers", minimum=0)
        if hidden_channels % heads != 0:
            raise ValueError(
                f"hidden_channels ({hidden_channels}) must be divisible by heads ({heads})"
            )
        if not 0.0 <= check_real(dropout, "dropout") < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        check_bool(include_self, "include_self")
        if chunk_size is not None:
            check_int(chunk_size, "chunk_size", minimum=1)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dim = dim
        self.num_neighbors = num_neighbors
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.heads = heads
        self.ff_channels = ff_channels
        self.dropout = float(dropout)
        self.include_self = include_self
        self.chunk_size = chunk_size

        self.embed = Sequential(
            Linear(dim + in_channels, hidden_channels),
            GELU(),
            Linear(hidden_channels, hidden_channels),
        )
        self.layers = ModuleList(
            _EncoderLayer(hidden_channels, heads, ff_channels, self.dropout)
            for _ in range(num_layers)
        )
        self.decoder = Sequential(
            LayerNorm(hidden_channels),
            Linear(hidden_channels, hidden_channels),
            GELU(),
            Linear(hidden_channels, out_channels),
        )

    def reset_parameters(self) -> None:
        r"""Resets all learnable parameters of the module."""
        for module in self.modules():
            if module is not self and isinstance(module, (Linear, LayerNorm)):
                module.reset_parameters()

    @property
    def tokens_per_particle(self) -> int:
        return self.num_neighbors + int(self.include_self)

    def forward(
        self,
        pos: Tensor,
        h: Tensor | None = None,
        box: BoxLike | None = None,
        h_self: Tensor | None = None,
    ) -> Tensor:
        r"""Evaluates the model on every particle.

        Args:
            pos: positions ``[N, d]`` or a batch of systems ``[B, N, d]`` (one box for all).
                Positions may lie outside the box; only their minimum images matter.
            h: per-particle states ``[N, in_channels]`` or ``[B, N, in_channels]`` in the dtype
                of ``pos``; ``None`` when ``in_channels == 0``.
            box: periodic box lengths (a float for a cube, or ``d`` values); ``None`` for free
                space. The neighbourhood must fit in the box: the :math:`K`-th neighbour must
                lie closer than half the smallest box length.
            h_self: optional states for the particles' own tokens (same shape and values as
                ``h``; default ``h``). A separate tensor lets autograd tell the own-token path
                apart: particle :math:`i`'s output depends on :math:`\mathbf{h}_i` only through
                its own token, so the gradient of :math:`\sum_i \mathrm{out}_{i,a}` with
                respect to ``h_self`` is :math:`\partial\,\mathrm{out}_{i,a} /
                \partial\mathbf{h}_i` for every :math:`i` at once (exact per-particle
                divergences in one backward pass per channel). Needs ``include_self``.

        Returns:
            ``[N, out_channels]`` or ``[B, N, out_channels]``.
        """
        batched, num_systems, num_particles = self._check_pos(pos)
        h = self._check_state(h, pos, num_systems, num_particles)
        if h_self is None:
            h_self = h
        else:
            if not self.include_self:
                raise ValueError("h_self needs include_self=True (no own token otherwise)")
            h_self = self._check_state(h_self, pos, num_systems, num_particles, name="h_self")
        box_lengths = self._check_box(box, pos)

        flat_pos = pos.reshape(num_systems * num_particles, self.dim)
        flat_h = h.reshape(num_systems * num_particles, self.in_channels)
        flat_h_self = h_self.reshape(num_systems * num_particles, self.in_channels)
        neighbours = self._neighbours(flat_pos, box_lengths, num_systems, num_particles)

        total = flat_pos.size(0)
        chunk = total if self.chunk_size is None else min(self.chunk_size, total)
        use_checkpoint = chunk < total and torch.is_grad_enabled()
        outputs = []
        for start in range(0, total, chunk):
            centres = torch.arange(start, min(start + chunk, total), device=pos.device)
            args = (
                flat_pos,
                flat_h,
                flat_h_self,
                centres,
                neighbours[start : start + chunk],
                box_lengths,
            )
            if use_checkpoint:
                outputs.append(checkpoint(self._evaluate, *args, use_reentrant=False))
            else:
                outputs.append(self._evaluate(*args))
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        if batched:
            return out.view(num_systems, num_particles, self.out_channels)
        return out

    # ------------------------------------------------------------------ internals
    def _neighbours(
        self, flat_pos: Tensor, box: Tensor | None, num_systems: int, num_particles: int
    ) -> Tensor:
        """``[B * N, K]`` flat indices of every particle's neighbours, nearest first."""
        batch = None
        if num_systems > 1:
            batch = torch.arange(num_systems, device=flat_pos.device)
            batch = batch.repeat_interleave(num_particles)
        with torch.no_grad():
            pattern = Pattern.knn(flat_pos.detach(), self.num_neighbors, box=box, batch=batch)
        if box is not None:
            reach = float(pattern.displacement.norm(dim=1).max())
            half = float(box.min()) / 2
            if reach >= half:
                raise ValueError(
                    f"box is too small for the neighbourhood: the {self.num_neighbors}-th "
                    f"neighbour lies at distance {reach:.4g}, not below half the smallest box "
                    f"length ({half:.4g}); use a larger box, more particles or fewer neighbours"
                )
        # Pattern.knn's caller order is by receiver, then distance.
        return pattern.edge_index[0].view(num_systems * num_particles, self.num_neighbors)

    def _full_pattern(self, num_particles: int, device: torch.device) -> Pattern:
        """All-to-all attention among each particle's tokens (one block of ``num_particles``
        groups), from the library's pattern cache."""
        size = self.tokens_per_particle

        def build() -> Pattern:
            owner = torch.arange(num_particles, device=device).repeat_interleave(size)
            return Pattern.full(batch=owner)

        return pattern_cache.get(
            (), ("ParticleTransformer.tokens", num_particles, size, device), build
        )

    def _evaluate(
        self,
        pos: Tensor,
        h: Tensor,
        h_self: Tensor,
        centres: Tensor,
        neighbours: Tensor,
        box: Tensor | None,
    ) -> Tensor:
        """Outputs ``[n, out_channels]`` of the particles ``centres`` with neighbours ``[n, K]``."""
        num, size = centres.numel(), self.tokens_per_particle
        centre_pos = pos.index_select(0, centres).unsqueeze(1)
        displacement = minimum_image(pos[neighbours] - centre_pos, box)
        features = torch.cat([displacement, h[neighbours]], dim=-1)
        if self.include_self:
            own_state = h_self.index_select(0, centres)[:, None]
            own = torch.cat([torch.zeros_like(centre_pos), own_state], -1)
            features = torch.cat([own, features], dim=1)

        tokens = self.embed(features).reshape(num * size, self.hidden_channels)
        pattern = self._full_pattern(num, tokens.device)
        attention_dropout = self.dropout if self.training else 0.0
        for layer in self.layers:
            tokens = layer(tokens, pattern, attention_dropout)
        tokens = tokens.view(num, size, self.hidden_channels)
        summary = tokens[:, 0] if self.include_self else tokens.mean(1)
        return self.decoder(summary)

    def _check_pos(self, pos: Tensor) -> tuple[bool, int, int]:
        if not isinstance(pos, Tensor) or not pos.is_floating_point():
            raise TypeError("pos must be a floating-point tensor [N, dim] or [B, N, dim]")
        if pos.dim() not in (2, 3) or pos.size(-1) != self.dim:
            raise ValueError(
                f"pos must have shape [N, {self.dim}] or [B, N, {self.dim}], got {list(pos.shape)}"
            )
        check_input(pos, "pos", self.embed[0].weight)
        if not bool(torch.isfinite(pos).all()):  # the neighbour search needs it on any device
            raise ValueError("pos must contain only finite values")
        batched = pos.dim() == 3
        num_systems = pos.size(0) if batched else 1
        num_particles = pos.size(-2)
        if num_systems < 1:
            raise ValueError("pos must hold at least one system")
        if self.num_neighbors >= num_particles:
            raise ValueError(
                f"num_neighbors ({self.num_neighbors}) must be smaller than the number of "
                f"particles per system in pos ({num_particles})"
            )
        return batched, num_systems, num_particles

    def _check_state(
        self, h: Tensor | None, pos: Tensor, num_systems: int, num_particles: int, name: str = "h"
    ) -> Tensor:
        if h is None:
            if self.in_channels != 0:
                raise ValueError(
                    f"{name} is required: the model has in_channels={self.in_channels}"
                )
            return pos.new_zeros(num_systems * num_particles, 0)
        if not isinstance(h, Tensor) or not h.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor [N, in_channels]")
        if h.dtype != pos.dtype:
            raise TypeError(f"{name} must have the dtype of pos ({pos.dtype}), got {h.dtype}")
        expected = [*pos.shape[:-1], self.in_channels]
        if list(h.shape) != expected:
            raise ValueError(f"{name} must have shape {expected}, got {list(h.shape)}")
        if h.device != pos.device:
            raise ValueError(f"{name} must be on the device of pos ({pos.device}), got {h.device}")
        check_finite(h, name)
        return h

    def _check_box(self, box: BoxLike | None, pos: Tensor) -> Tensor | None:
        if box is None:
            return None
        if isinstance(box, Tensor):
            if box.is_complex() or box.dtype == torch.bool:
                raise TypeError(f"box must be real, got dtype {box.dtype}")
            lengths = box.detach().to(device=pos.device, dtype=pos.dtype)
        elif isinstance(box, bool):
            raise TypeError("box must be a number, a sequence of numbers or a tensor, got bool")
        else:
            try:
                lengths = torch.as_tensor(box, dtype=pos.dtype, device=pos.device)
            except (TypeError, ValueError, RuntimeError) as error:
                raise TypeError(
                    f"box must be a number, a sequence of numbers or a tensor, got {box!r}"
                ) from error
        if lengths.dim() == 0:
            lengths = lengths.expand(self.dim)
        if tuple(lengths.shape) != (self.dim,):
            raise ValueError(
                f"box must be a scalar or have shape [{self.dim}], got {list(lengths.shape)}"
            )
        if not bool((torch.isfinite(lengths) & (lengths > 0)).all()):
            raise ValueError(f"box lengths must be finite and > 0, got {lengths.tolist()}")
        return lengths.contiguous()

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, dim={self.dim}, "
            f"num_neighbors={self.num_neighbors}, hidden_channels={self.hidden_channels}, "
            f"num_layers={self.num_layers}, heads={self.heads}, ff_channels={self.ff_channels})"
        )


class _EncoderLayer(Module):
    """Pre-LayerNorm transformer encoder layer whose attention runs on a token pattern."""

    def __init__(self, channels: int, heads: int, ff_channels: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = LayerNorm(channels)
        self.qkv = Linear(channels, 3 * channels)
        self.out_proj = Linear(channels, channels)
        self.norm2 = LayerNorm(channels)
        self.ff = Sequential(Linear(channels, ff_channels), GELU(), Linear(ff_channels, channels))

    def forward(self, tokens: Tensor, pattern: Pattern, attention_dropout: float) -> Tensor:
        num_tokens, channels = tokens.shape
        qkv = self.qkv(self.norm1(tokens)).view(num_tokens, 3, self.heads, -1)
        query, key, value = qkv.unbind(1)
        attended = sparse_attention(query, key, value, pattern, dropout=attention_dropout)
        update = self.out_proj(attended.reshape(num_tokens, channels))
        tokens = tokens + F.dropout(update, self.dropout, self.training)
        update = self.ff(self.norm2(tokens))
        return tokens + F.dropout(update, self.dropout, self.training)
