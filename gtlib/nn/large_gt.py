"""LargeGT: a local token transformer and a global codebook attention for large graphs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data

from gtlib.attention import Pattern, attend, sparse_attention
from gtlib.attention.cache import pattern_cache
from gtlib.distributed import all_gather_cat
from gtlib.validation import (
    check_finite,
    check_index,
    check_input,
    check_int,
    check_real,
    check_tensor,
    renamed_arguments,
)

MODES = ("full", "local", "global")


def _check_arguments(in_channels, hidden_channels, out_channels, num_tokens, num_nodes, mode,
                     heads, num_centroids, global_dim, pos_channels, dropout, attn_dropout,
                     decay, local_chunk_size) -> None:  # fmt: skip
    for name, value in (
        ("in_channels", in_channels),
        ("hidden_channels", hidden_channels),
        ("out_channels", out_channels),
        ("num_tokens", num_tokens),
        ("heads", heads),
        ("num_centroids", num_centroids),
        ("global_dim", global_dim),
        ("local_chunk_size", local_chunk_size),
    ):
        check_int(value, name, minimum=1)
    check_int(pos_channels, "pos_channels", minimum=0)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if hidden_channels % heads != 0:
        raise ValueError(
            f"hidden_channels ({hidden_channels}) must be a multiple of heads ({heads})"
        )
    if mode != "local" and num_nodes is None:
        raise ValueError(f"mode={mode!r} needs num_nodes (a positive int), got None")
    if num_nodes is not None:
        check_int(num_nodes, "num_nodes", minimum=1)
    for name, value in (("dropout", dropout), ("attn_dropout", attn_dropout)):
        if not 0.0 <= check_real(value, name) < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {value}")
    if not 0.0 < check_real(decay, "decay") < 1.0:
        raise ValueError(f"decay must lie in (0, 1), got {decay}")


class LargeGT(nn.Module):
    r"""LargeGT from `"Graph Transformers for Large Graphs"
    <https://arxiv.org/abs/2306.10759>`_ (Dwivedi et al., 2023), trained on mini-batches of
    :class:`~gtlib.loader.LargeGTLoader`.

    **Local module** (``mode`` ``"local"`` or ``"full"``). Each seed :math:`i` comes with a
    sequence of :math:`T = 3K` tokens (its sampled 1-/2-hop nodes, each as
    :math:`x_u, (\hat{A}X)_u, (\hat{A}^2X)_u`, seed first). Tokens are encoded
    (``Linear-ReLU-Dropout-Linear``), embedded (``Linear``), passed through one pre-LN transformer
    layer

    .. math::
        Z \leftarrow Z + \mathrm{MHA}(\mathrm{LN}(Z)), \qquad
        Z \leftarrow Z + W_2\,\mathrm{GELU}(W_1 \mathrm{LN}(Z))

    (self-attention among the :math:`T` tokens of each sequence), normalised
    (:math:`O = \mathrm{LN}(Z)`) and read out by attention over the non-seed tokens:

    .. math::
        \beta_t = \operatorname{softmax}_{t \geq 1}\big(w^\top [o_0 \,\|\, o_t] + b\big), \qquad
        h^{\text{local}}_i = o_0 + \sum_{t \geq 1} \beta_t o_t.

    **Global module** (``mode`` ``"global"`` or ``"full"``). The seed feature is encoded
    (``Linear-BatchNorm-ReLU-Dropout-Linear``), projected to ``global_dim`` and concatenated with
    the optional positional encoding: :math:`q_i \in \mathbb{R}^{D}`,
    :math:`D = \text{global\_dim} + \text{pos\_channels}`. An EMA k-means codebook keeps
    ``num_centroids`` centroids :math:`\mu_c \in \mathbb{R}^D`, and every node of the graph is
    assigned to one (buffer ``node_centroid [num_nodes]``). Seeds attend to the centroids with
    the log-size of each cluster as bias:

    .. math::
        h^{\text{global}}_i = \sum_c \operatorname{softmax}_c\Big(
            \frac{(W_Q q_i)^\top W_K \mu_c}{\sqrt{C}} + \log n_c\Big)\,
            W_V \mu_c^{[:\text{global\_dim}]},

    where :math:`n_c` counts the nodes assigned to :math:`c` (centroids with :math:`n_c = 0` get
    weight 0). In training mode, after the attention, the codebook takes one EMA k-means step
    (decay :math:`\gamma`, Laplace smoothing :math:`\epsilon = 10^{-5}`) on
    :math:`z = \mathrm{BN}(q)` (non-affine BatchNorm, batch statistics):

    .. math::
        a_i &= \arg\min_c \lVert z_i - e_c \rVert^2, \quad
        N_c \leftarrow \gamma N_c + (1 - \gamma)\,|\{i : a_i = c\}|, \quad
        N_c \leftarrow \frac{N_c + \epsilon}{n + M\epsilon}\, n \;\; (n = \textstyle\sum_c N_c), \\
        W_c &\leftarrow \gamma W_c + (1 - \gamma) \textstyle\sum_{a_i = c} z_i, \quad
        e_c = W_c / N_c, \quad
        \mu_c = e_c \sqrt{\sigma^2_{\text{run}} + 10^{-5}} + m_{\text{run}},

    and ``node_centroid[n_id] = a``. Eval mode changes nothing.

    **Head.** ``full`` concatenates :math:`h^{\text{local}}` and :math:`h^{\text{global}}`;
    the result goes through ``Linear-BN-ReLU-Dropout-Linear-BN-ReLU-Dropout`` and a final
    ``Linear`` to ``out_channels``.

    Differences from the reference code: heads split ``hidden_channels`` (the reference gives
    every head ``hidden_channels`` channels), the transformer layer has its GELU FFN and a
    residual without projection, and the codebook's EMA statistics start at one count per
    centroid holding its initial position (the reference starts the counts at zero, which sends
    centroids unused in the first step to ~1e5 times their initial position).

    All attention (token self-attention, readout, centroid attention) runs on
    :func:`gtlib.attention.sparse_attention`.

    Args:
        in_channels: node feature size :math:`F`.
        hidden_channels: model width (a multiple of ``heads``).
        out_channels: number of classes.
        num_tokens: :math:`K`, nodes per sequence (the loader's ``num_tokens``).
        num_nodes: nodes in the graph (size of the assignment buffer); needed unless
            ``mode="local"``.
        mode: ``"full"``, ``"local"`` or ``"global"``.
        heads: attention heads (``num_heads`` is its deprecated name).
        num_centroids: codebook size :math:`M`.
        global_dim: size of the projected seed feature in the global module.
        pos_channels: size of ``batch.pos_enc`` (0: none).
        dropout: feed-forward dropout.
        attn_dropout: attention-weight dropout.
        decay: codebook EMA decay :math:`\gamma`.
        local_chunk_size: sequences per call of the token self-attention (the all-to-all
            pattern keeps only its ``[sequences, 3K]`` blocks, so this only bounds temporaries).

    Shapes:
        batch (a :class:`~torch_geometric.data.Data` from the loader): ``tokens [B, 3K, F]``
        (local/full), ``x [B, F]`` and ``n_id [B]`` (global/full), ``pos_enc [B, P]`` when
        ``pos_channels > 0`` -> logits ``[B, out_channels]``.
    """

    @renamed_arguments(num_heads="heads")
    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        num_tokens: int,
        num_nodes: int | None = None,
        mode: str = "full",
        heads: int = 2,
        num_centroids: int = 4096,
        global_dim: int = 64,
        pos_channels: int = 0,
        dropout: float = 0.5,
        attn_dropout: float = 0.0,
        decay: float = 0.99,
        local_chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        _check_arguments(in_channels, hidden_channels, out_channels, num_tokens, num_nodes, mode,
                         heads, num_centroids, global_dim, pos_channels, dropout, attn_dropout,
                         decay, local_chunk_size)  # fmt: skip

        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.out_channels = out_channels
        self.num_tokens = num_tokens
        self.num_nodes = num_nodes
        self.mode = mode
        self.heads = heads
        self.num_centroids = num_centroids
        self.global_dim = global_dim
        self.pos_channels = pos_channels
        self.dropout = float(dropout)
        self.attn_dropout = float(attn_dropout)
        self.decay = float(decay)
        self.local_chunk_size = local_chunk_size
        hidden = hidden_channels
        self.uses_local = mode in ("local", "full")
        self.uses_global = mode in ("global", "full")

        if self.uses_local:
            self._build_local(in_channels, hidden, dropout)
        if self.uses_global:
            self._build_global(in_channels, hidden, dropout, global_dim + pos_channels)
        branches = int(self.uses_local) + int(self.uses_global)
        self.head = nn.Sequential(
            nn.Linear(branches * hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, out_channels),
        )  # fmt: skip
        self.reset_parameters()

    def _build_local(self, in_channels: int, hidden: int, dropout: float) -> None:
        """The local branch: sequence encoder, token attention, feed-forward and readout."""
        self.seq_encoder = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
        )  # fmt: skip
        self.token_embed = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden)
        self.lin_query = nn.Linear(hidden, hidden)
        self.lin_key = nn.Linear(hidden, hidden)
        self.lin_value = nn.Linear(hidden, hidden)
        self.lin_out = nn.Linear(hidden, hidden)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden)
        )
        self.final_norm = nn.LayerNorm(hidden)
        self.readout = nn.Linear(2 * hidden, 1)

    def _build_global(
        self, in_channels: int, hidden: int, dropout: float, codebook_dim: int
    ) -> None:
        """The global branch: node encoder, projections and the codebook buffers."""
        self.node_encoder = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, hidden),
        )  # fmt: skip
        self.lin_proj_g = nn.Linear(hidden, self.global_dim)
        self.lin_query_g = nn.Linear(codebook_dim, hidden)
        self.lin_key_g = nn.Linear(codebook_dim, hidden)
        self.lin_value_g = nn.Linear(self.global_dim, hidden)
        self.codebook_norm = nn.BatchNorm1d(codebook_dim, affine=False)
        self.register_buffer("codebook", torch.empty(self.num_centroids, codebook_dim))
        self.register_buffer("codebook_output", torch.empty(self.num_centroids, codebook_dim))
        self.register_buffer("ema_cluster_size", torch.empty(self.num_centroids))
        self.register_buffer("ema_sum", torch.empty(self.num_centroids, codebook_dim))
        self.register_buffer("node_centroid", torch.empty(self.num_nodes, dtype=torch.long))

    def reset_parameters(self) -> None:
        """Re-initialises weights, the codebook (random centroids) and random assignments."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        if self.uses_global:
            with torch.no_grad():
                self.codebook.normal_()
                self.codebook_output.copy_(self.codebook)
                self.ema_cluster_size.fill_(1.0)
                self.ema_sum.copy_(self.codebook)
                self.node_centroid.random_(0, self.num_centroids)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Data) -> Tensor:
        """Logits ``[B, out_channels]`` of a loader batch; updates the codebook in training."""
        if not isinstance(batch, Data):
            raise TypeError(f"batch must be a torch_geometric.data.Data, got {type(batch)}")
        outputs = []
        like = next(self.parameters())
        if self.uses_local:
            tokens = check_input(getattr(batch, "tokens", None), "batch.tokens", like, dim=3)
            expected = (3 * self.num_tokens, self.in_channels)
            if tokens.shape[1:] != expected:
                raise ValueError(
                    f"batch.tokens must be a tensor [B, {expected[0]}, {expected[1]}], got "
                    f"{list(tokens.shape)}"
                )
            outputs.append(self.local_forward(tokens))
        if self.uses_global:
            outputs.append(self.global_forward(*self._global_inputs(batch, like)))
        if len(outputs) == 2 and outputs[0].size(0) != outputs[1].size(0):
            raise ValueError("batch.tokens and batch.x must have the same number of seeds")
        return self.head(torch.cat(outputs, dim=-1))

    def _global_inputs(self, batch: Data, like: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``batch.x``, ``batch.n_id`` and ``batch.pos_enc`` checked for the global branch."""
        x = check_input(getattr(batch, "x", None), "batch.x", like, dim=2)
        if x.size(1) != self.in_channels:
            raise ValueError(f"batch.x must be a tensor [B, {self.in_channels}], got "
                             f"{list(x.shape)}")  # fmt: skip
        n_id = check_tensor(getattr(batch, "n_id", None), "batch.n_id", integer=True)
        if n_id.shape != (x.size(0),):
            raise ValueError(f"batch.n_id must be an index tensor [{x.size(0)}], got "
                             f"{list(n_id.shape)}")  # fmt: skip
        check_index(n_id, "batch.n_id", self.num_nodes)
        if not self.pos_channels:
            return x, n_id, None
        pos_enc = getattr(batch, "pos_enc", None)
        if not isinstance(pos_enc, Tensor) or pos_enc.shape != (x.size(0), self.pos_channels):
            raise ValueError(f"batch.pos_enc must be a tensor [B, {self.pos_channels}]")
        check_finite(pos_enc, "batch.pos_enc")
        return x, n_id, pos_enc

    def local_forward(self, tokens: Tensor) -> Tensor:
        """``[B, 3K, F]`` token sequences -> ``[B, hidden]`` readouts."""
        num_seqs, seq_len, _ = tokens.shape
        heads, hidden = self.heads, self.hidden_channels
        head_dim = hidden // heads
        z = self.token_embed(self.seq_encoder(tokens)).reshape(num_seqs * seq_len, hidden)

        y = self.attn_norm(z)
        query = self.lin_query(y).view(-1, heads, head_dim)
        key = self.lin_key(y).view(-1, heads, head_dim)
        value = self.lin_value(y).view(-1, heads, head_dim)
        attn_p = self.attn_dropout if self.training else 0.0
        parts = []
        for first in range(0, num_seqs, self.local_chunk_size):
            count = min(self.local_chunk_size, num_seqs - first)
            rows = slice(first * seq_len, (first + count) * seq_len)
            pattern = self._sequence_pattern(count, seq_len, z.device)
            parts.append(
                sparse_attention(query[rows], key[rows], value[rows], pattern, dropout=attn_p)
            )
        attended = (torch.cat(parts) if parts else value[:0]).reshape(-1, hidden)
        z = z + F.dropout(self.lin_out(attended), self.dropout, self.training)
        z = z + F.dropout(self.ffn(self.ffn_norm(z)), self.dropout, self.training)
        out = self.final_norm(z).view(num_seqs, seq_len, hidden)

        seed, others = out[:, 0], out[:, 1:]
        pair = torch.cat([seed.unsqueeze(1).expand_as(others), others], dim=-1)
        score = self.readout(pair)  # [B, T - 1, 1]
        # softmax over each seed's tokens of a per-token (static) score
        pattern = self._readout_pattern(num_seqs, seq_len - 1, z.device)
        pooled = attend(
            pattern,
            others.reshape(-1, 1, hidden),
            score="static",
            src_score=score.reshape(-1, 1),
            negative_slope=None,
        )
        return seed + pooled[:, 0]

    def global_forward(self, x: Tensor, n_id: Tensor, pos_enc: Tensor | None = None) -> Tensor:
        """Seed features ``[B, F]`` -> ``[B, hidden]`` attention over the codebook centroids."""
        heads, hidden = self.heads, self.hidden_channels
        head_dim = hidden // heads
        query_in = self.lin_proj_g(self.node_encoder(x))
        if pos_enc is not None:
            query_in = torch.cat([query_in, pos_enc.to(query_in.dtype)], dim=-1)
        counts = torch.bincount(self.node_centroid, minlength=self.num_centroids)
        used = counts.nonzero().flatten()
        centroids = self.codebook_output.index_select(0, used).to(query_in.dtype)
        query = self.lin_query_g(query_in).view(-1, heads, head_dim)
        key = self.lin_key_g(centroids).view(-1, heads, head_dim)
        value = self.lin_value_g(centroids[:, : self.global_dim]).view(-1, heads, head_dim)
        num_seeds, num_used = query.size(0), used.numel()
        pattern = self._bipartite_pattern(num_used, num_seeds, x.device)
        log_count = torch.log(counts.index_select(0, used).to(query.dtype))
        bias = log_count.repeat(num_seeds)[:, None].expand(-1, heads).contiguous()
        attn_p = self.attn_dropout if self.training else 0.0
        out = sparse_attention(query, key, value, pattern, bias=bias, dropout=attn_p)
        if self.training:
            self.update_codebook(query_in.detach(), n_id)
        return out.reshape(num_seeds, hidden)

    @torch.no_grad()
    def update_codebook(self, query_in: Tensor, n_id: Tensor) -> Tensor:
        """One EMA k-means step on ``[B, D]`` inputs; returns and stores their assignments.

        Under DDP every rank steps with the whole global batch (all ranks' inputs in rank order,
        as one process sees them), so the buffers agree and no rank's seeds are lost; the
        assignments returned are the global batch's."""
        query_in, n_id = all_gather_cat(query_in), all_gather_cat(n_id)
        normed = self.codebook_norm(query_in).to(self.codebook.dtype)
        distances = (
            normed.pow(2).sum(1, keepdim=True)
            + self.codebook.pow(2).sum(1)
            - 2.0 * normed @ self.codebook.t()
        )
        assignment = distances.argmin(dim=1)
        counts = torch.bincount(assignment, minlength=self.num_centroids).to(normed.dtype)
        decay, eps = self.decay, 1e-5
        cluster_size = self.ema_cluster_size * decay + (1.0 - decay) * counts
        total = cluster_size.sum()
        cluster_size = (cluster_size + eps) / (total + self.num_centroids * eps) * total
        self.ema_cluster_size.copy_(cluster_size)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, assignment, normed)
        self.ema_sum.mul_(decay).add_(sums, alpha=1.0 - decay)
        self.codebook.copy_(self.ema_sum / cluster_size.unsqueeze(1))
        running_std = torch.sqrt(self.codebook_norm.running_var + self.codebook_norm.eps)
        self.codebook_output.copy_(self.codebook * running_std + self.codebook_norm.running_mean)
        self.node_centroid[n_id] = assignment
        return assignment

    # ------------------------------------------------------------------ patterns
    def _sequence_pattern(self, num_seqs: int, seq_len: int, device: torch.device) -> Pattern:
        """All-to-all within each token sequence (dense blocks)."""

        def build() -> Pattern:
            batch = torch.arange(num_seqs, device=device).repeat_interleave(seq_len)
            return Pattern.full(batch)

        return pattern_cache.get((), ("large_gt.seq", num_seqs, seq_len, str(device)), build)

    def _bipartite_pattern(self, num_src: int, num_dst: int, device: torch.device) -> Pattern:
        """Every seed attends to every used centroid; cached by the two counts."""

        def build() -> Pattern:
            senders = torch.arange(num_src, device=device).repeat(num_dst)
            receivers = torch.arange(num_dst, device=device).repeat_interleave(num_src)
            edge_index = torch.stack([senders, receivers])
            return Pattern.from_edge_index(edge_index, num_nodes=(num_src, num_dst))

        key = ("large_gt.bipartite", num_src, num_dst, str(device))
        return pattern_cache.get((), key, build)

    def _readout_pattern(self, num_seqs: int, length: int, device: torch.device) -> Pattern:
        """Each seed pools its own ``length`` tokens."""

        def build() -> Pattern:
            senders = torch.arange(num_seqs * length, device=device)
            receivers = torch.div(senders, length, rounding_mode="floor")
            edge_index = torch.stack([senders, receivers])
            return Pattern.from_edge_index(edge_index, num_nodes=(num_seqs * length, num_seqs))

        return pattern_cache.get((), ("large_gt.readout", num_seqs, length, str(device)), build)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, "
            f"{self.out_channels}, num_tokens={self.num_tokens}, mode='{self.mode}', "
            f"heads={self.heads}, num_centroids={self.num_centroids})"
        )
