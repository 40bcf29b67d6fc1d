"""LargeGT's neighbourhood token sampler: 1-/2-hop candidates, K tokens, 3K-token sequences."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch_geometric.data import Data

from gtlib.attention import Pattern
from gtlib.distributed import ShardedBatchSampler
from gtlib.validation import check_bool, check_finite, check_index, check_int, check_tensor


class LargeGTLoader(DataLoader):
    r"""Mini-batches of LargeGT token sequences, from `"Graph Transformers for Large Graphs"
    <https://arxiv.org/abs/2306.10759>`_ (Dwivedi et al., 2023).

    For every seed node :math:`i` the loader samples ``num_tokens - 1`` nodes from the candidate
    multiset :math:`\mathcal{N}_1(i) \uplus \mathcal{N}_2(i)` (1-hop neighbours, then the set of
    nodes reached by a 2-step walk, :math:`i` itself included when it has a neighbour), exactly
    as the rows of :math:`A` and :math:`A^2` in the reference code:

    - at least ``num_tokens - 1`` candidates: a uniform sample without replacement;
    - fewer: the candidate list (1-hop in CSR order, then 2-hop ascending) repeated and cut;
    - none: uniform random nodes.

    The sequence of node ids is ``[i, sampled...]`` (``token_ids [B, K]``). Each node :math:`u`
    contributes three tokens :math:`x_u, (\hat{A}X)_u, (\hat{A}^2X)_u` with
    :math:`\hat{A} = D^{-1/2}(A + I)D^{-1/2}`, so a sequence holds :math:`3K` tokens.

    Memory: the graph is kept as a CSR by receiver (neighbours of :math:`i` are the senders
    :math:`j` of edges :math:`j \to i`, PyG's ``source_to_target`` flow). :math:`A^2` is never
    formed: 2-hop candidates are enumerated per batch from neighbours of neighbours. When a seed
    has more than ``max_two_hop_paths`` 2-step walks, that many walks are drawn uniformly instead
    (2-hop nodes then enter in proportion to their number of walks, an approximation for hubs).
    The hop features :math:`\hat{A}X, \hat{A}^2X` are computed once (float32, sparse products in
    row chunks of ``chunk_size``) and stored as ``hop_x [N, 3, F]``.

    Precompute once and share between loaders with :meth:`preprocess`; a :class:`Data` that
    already has ``rowptr``, ``col`` and ``hop_x`` is used as is.

    Each batch is a :class:`~torch_geometric.data.Data` with ``n_id [B]`` (seeds), ``token_ids
    [B, K]``, ``tokens [B, 3K, F]`` (token ``3t + h`` of sequence ``b`` is hop ``h`` of node
    ``token_ids[b, t]``), ``x [B, F]`` (seed features), ``y [B, ...]`` and ``pos_enc [B, P]`` when
    the data has them, and ``batch_size``.

    Sampling runs in :meth:`collate_fn`, i.e. in the DataLoader workers; randomness comes from
    torch's generator, which PyTorch seeds differently in each worker.

    Data-parallel training (``distributed=True``): the seed nodes are sharded by rank with a
    :class:`gtlib.distributed.ShardedBatchSampler`. Each step's *global* batch holds
    ``batch_size x world_size`` seeds, drawn (with ``shuffle``) from a permutation seeded with
    ``seed + epoch`` that is the same on every rank and for every world size, and rank ``r``
    takes its ``r``-th part; call :meth:`set_epoch` before each epoch. In one process this
    gives plain batches of ``batch_size`` seeds in that order, so ``world_size`` ranks with
    ``batch_size = B`` see the seeds of one process with ``B x world_size``. A rank whose part
    of a short last batch is empty gets a placeholder seed (see
    :meth:`~gtlib.distributed.ShardedBatchSampler.shares`).

    Args:
        data: a :class:`Data` with ``x [N, F]`` and ``edge_index [2, E]`` (optionally ``y``,
            ``pos_enc``), or the output of :meth:`preprocess`.
        input_nodes: seed nodes, an int64 index tensor or a bool mask ``[N]`` (default: all).
        num_tokens: :math:`K`, the nodes per sequence, seed included.
        max_two_hop_paths: 2-step walks enumerated per seed before switching to sampling them.
        chunk_size: rows per chunk of the hop-feature sparse products.
        distributed: shard the seeds by rank (see above); ``batch_size`` is then per rank.
        seed: seed of the order of the seeds with ``distributed=True`` and ``shuffle``.
        **kwargs: :class:`torch.utils.data.DataLoader` arguments (``batch_size``, ``shuffle``,
            ``drop_last``, ``num_workers``, ...); ``collate_fn`` is the loader's own (and with
            ``distributed=True``, so is the ``batch_sampler``).

    Shapes:
        batch ``n_id [B]``, ``token_ids [B, K]``, ``tokens [B, 3K, F]``, ``x [B, F]``.
    """

    def __init__(
        self,
        data: Data,
        input_nodes: Tensor | None = None,
        num_tokens: int = 100,
        max_two_hop_paths: int = 1024,
        chunk_size: int = 65536,
        *,
        distributed: bool = False,
        seed: int = 0,
        **kwargs,
    ) -> None:
        if "collate_fn" in kwargs:
            raise TypeError("LargeGTLoader does not take collate_fn; it samples in its own")
        if not isinstance(distributed, bool):
            raise TypeError(f"distributed must be a bool, got {type(distributed).__name__}")
        if distributed and ("batch_sampler" in kwargs or "sampler" in kwargs):
            raise TypeError("distributed=True builds its own batch_sampler; pass neither sampler")
        num_tokens = check_int(num_tokens, "num_tokens", minimum=1)
        max_two_hop_paths = check_int(max_two_hop_paths, "max_two_hop_paths", minimum=1)
        seed = check_int(seed, "seed")
        if not _is_preprocessed(data):
            data = self.preprocess(data, chunk_size=chunk_size)
        else:
            _check_preprocessed(data)
        num_nodes = data.hop_x.size(0)
        self.data = data
        self.num_tokens = num_tokens
        self.max_two_hop_paths = max_two_hop_paths
        self.input_nodes = _check_input_nodes(input_nodes, num_nodes)
        collate = _TokenCollater(data, self.input_nodes, num_tokens, max_two_hop_paths)
        self.shard_sampler: ShardedBatchSampler | None = None
        if distributed:
            self.shard_sampler = ShardedBatchSampler(
                self.input_nodes.numel(),
                kwargs.pop("batch_size", 1),
                shuffle=check_bool(kwargs.pop("shuffle", False), "shuffle"),
                seed=seed,
                drop_last=check_bool(kwargs.pop("drop_last", False), "drop_last"),
            )
            kwargs["batch_sampler"] = self.shard_sampler
        super().__init__(range(self.input_nodes.numel()), collate_fn=collate, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s order of the seeds (``distributed=True``; else a no-op)."""
        if self.shard_sampler is not None:
            self.shard_sampler.set_epoch(epoch)

    @staticmethod
    def preprocess(data: Data, chunk_size: int = 65536) -> Data:
        """CSR by receiver and hop features ``hop_x [N, 3, F]`` (X, ÂX, Â²X), computed once.

        Returns a :class:`Data` with ``rowptr [N + 1]``, ``col [nnz]`` (duplicate edges merged),
        ``hop_x`` and, when present in ``data``, ``y`` and ``pos_enc``.
        """
        if not isinstance(data, Data):
            raise TypeError(f"data must be a torch_geometric.data.Data, got {type(data)}")
        x = check_tensor(getattr(data, "x", None), "data.x", floating=True, dim=2, values=True)
        check_finite(x, "data.x")
        num_nodes = x.size(0)
        edge_index = check_tensor(getattr(data, "edge_index", None), "data.edge_index",
                                  integer=True, dim=2)  # fmt: skip
        if edge_index.size(0) != 2:
            raise ValueError(
                f"data.edge_index must have shape [2, E], got {list(edge_index.shape)}"
            )
        check_index(edge_index, "data.edge_index", num_nodes)
        chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
        rowptr, col = build_csr(edge_index.cpu(), num_nodes)
        hop_x = hop_features(rowptr, col, x.detach().cpu(), chunk_size=chunk_size)
        out = Data(rowptr=rowptr, col=col, hop_x=hop_x, num_nodes=num_nodes)
        for name in ("y", "pos_enc"):
            value = getattr(data, name, None)
            if value is not None:
                if not isinstance(value, Tensor) or value.dim() == 0 or value.size(0) != num_nodes:
                    raise ValueError(f"data.{name} must be a tensor with {num_nodes} rows")
                if name == "pos_enc":  # (y may hold NaN for missing labels, as in OGB)
                    check_finite(value, "data.pos_enc")
                out[name] = value.cpu()
        return out

    def __repr__(self) -> str:
        batch_size = self.batch_size
        if self.shard_sampler is not None:
            batch_size = self.shard_sampler.batch_size
        return (
            f"{self.__class__.__name__}(num_seeds={self.input_nodes.numel()}, "
            f"num_tokens={self.num_tokens}, batch_size={batch_size})"
        )


class _TokenCollater:
    """The picklable collate function: seed positions -> a batch of token sequences."""

    def __init__(self, data: Data, input_nodes: Tensor, num_tokens: int, max_paths: int) -> None:
        self.data = data
        self.input_nodes = input_nodes
        self.num_tokens = num_tokens
        self.max_paths = max_paths

    def __call__(self, positions: list[int]) -> Data:
        data = self.data
        seeds = self.input_nodes[torch.as_tensor(positions, dtype=torch.long)]
        token_ids = sample_tokens(data.rowptr, data.col, seeds, self.num_tokens, self.max_paths)
        hop_x = data.hop_x
        tokens = hop_x.index_select(0, token_ids.reshape(-1))
        tokens = tokens.view(seeds.numel(), 3 * self.num_tokens, hop_x.size(-1))
        batch = Data(n_id=seeds, token_ids=token_ids, tokens=tokens, x=hop_x[seeds, 0])
        for name in ("y", "pos_enc"):
            value = getattr(data, name, None)
            if value is not None:
                batch[name] = value[seeds]
        batch.batch_size = seeds.numel()
        return batch


def build_csr(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """CSR by receiver of a ``[2, E]`` (sender, receiver) tensor, duplicates merged.

    Returns ``(rowptr [N + 1], col [nnz])``: the senders of receiver ``i`` are
    ``col[rowptr[i]:rowptr[i + 1]]``, ascending.
    """
    rowptr, col, _ = Pattern.from_edge_index(edge_index, num_nodes).deduplicated()
    return rowptr, col


def hop_features(rowptr: Tensor, col: Tensor, x: Tensor, chunk_size: int = 65536) -> Tensor:
    r"""``[N, 3, F]`` float32 stack of :math:`X, \hat{A}X, \hat{A}^2X`.

    :math:`\hat{A}_{ij} = 1 / \sqrt{d_i d_j}` for :math:`j \in \mathcal{N}(i) \cup \{i\}`, with
    :math:`d_i = |\mathcal{N}(i) \setminus \{i\}| + 1` (self-loops of the input count once). The
    products run in row chunks so no temporary exceeds ``chunk_size x F``.
    """
    num_nodes = rowptr.numel() - 1
    receivers = torch.repeat_interleave(torch.arange(num_nodes), rowptr[1:] - rowptr[:-1])
    keep = (receivers != col).numpy()
    rows = np.concatenate([receivers.numpy()[keep], np.arange(num_nodes)])
    cols = np.concatenate([col.numpy()[keep], np.arange(num_nodes)])
    degree = np.bincount(rows, minlength=num_nodes).astype(np.float64)
    inv_sqrt = 1.0 / np.sqrt(degree)
    values = (inv_sqrt[rows] * inv_sqrt[cols]).astype(np.float32)
    norm_adj = sp.csr_matrix((values, (rows, cols)), shape=(num_nodes, num_nodes))
    del rows, cols, values
    out = torch.empty(num_nodes, 3, x.size(1), dtype=torch.float32)
    out[:, 0] = x
    for hop in (1, 2):
        previous = out[:, hop - 1].contiguous().numpy()
        for start in range(0, num_nodes, chunk_size):
            stop = min(start + chunk_size, num_nodes)
            out[start:stop, hop] = torch.from_numpy(norm_adj[start:stop] @ previous)
    return out


def sample_tokens(
    rowptr: Tensor,
    col: Tensor,
    seeds: Tensor,
    num_tokens: int,
    max_two_hop_paths: int = 1024,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``[B, num_tokens]`` node ids per seed: the seed, then ``num_tokens - 1`` sampled 1-/2-hop
    candidates (see :class:`LargeGTLoader` for the rules). Vectorised over the batch."""
    num_nodes = rowptr.numel() - 1
    num_seeds = seeds.numel()
    num_sampled = num_tokens - 1
    out = torch.empty(num_seeds, num_tokens, dtype=torch.long)
    out[:, 0] = seeds
    if num_sampled == 0 or num_seeds == 0:
        return out
    degree = rowptr[1:] - rowptr[:-1]

    # 1-hop: every seed's senders, grouped by seed, in CSR order
    hop1_count = degree[seeds]
    hop1_owner, hop1_offset = _expand(hop1_count)
    hop1 = col[rowptr[seeds][hop1_owner] + hop1_offset]

    # 2-hop: enumerate (or sample) 2-step walks i <- j <- k through the 1-hop entries j
    walk_count = degree[hop1]
    walks = torch.zeros(num_seeds, dtype=torch.long).index_add_(0, hop1_owner, walk_count)
    take = walks.clamp(max=max_two_hop_paths)
    walk_owner, walk_offset = _expand(take)
    over = walks[walk_owner] > max_two_hop_paths
    if bool(over.any()):
        draws = torch.rand(int(over.sum()), generator=generator, dtype=torch.float64)
        walk_offset[over] = (
            (draws * walks[walk_owner][over]).long().clamp(max=walks[walk_owner][over] - 1)
        )
    walk_end = torch.cumsum(walk_count, 0)  # inclusive ends of each 1-hop entry's walks
    walk_start = torch.cumsum(walks, 0) - walks
    flat = walk_start[walk_owner] + walk_offset
    entry = torch.searchsorted(walk_end, flat, right=True)
    within = flat - (walk_end[entry] - walk_count[entry])
    hop2 = col[rowptr[hop1[entry]] + within]
    key = torch.unique(walk_owner * num_nodes + hop2)
    hop2_owner = torch.div(key, num_nodes, rounding_mode="floor")
    hop2 = key - hop2_owner * num_nodes

    # candidates per seed: 1-hop list, then the 2-hop set
    owner = torch.cat([hop1_owner, hop2_owner])
    order = torch.sort(owner, stable=True).indices
    candidates = torch.cat([hop1, hop2])[order]
    owner = owner[order]
    count = torch.bincount(owner, minlength=num_seeds)
    start = torch.cumsum(count, 0) - count

    position = torch.arange(num_sampled).expand(num_seeds, num_sampled)
    enough = count >= num_sampled
    repeated = start[:, None] + position % count.clamp(min=1)[:, None]
    sampled = torch.randint(num_nodes, (num_seeds, num_sampled), generator=generator)
    if candidates.numel():
        shuffle = torch.sort(
            owner.double() + torch.rand(owner.numel(), generator=generator, dtype=torch.float64)
        ).indices
        shuffled = candidates[shuffle]
        safe_repeated = repeated.clamp(max=candidates.numel() - 1)
        picked = torch.where(
            enough[:, None],
            shuffled[(start[:, None] + position).clamp(max=candidates.numel() - 1)],
            candidates[safe_repeated],
        )
        sampled = torch.where((count > 0)[:, None], picked, sampled)
    out[:, 1:] = sampled
    return out


def _expand(counts: Tensor) -> tuple[Tensor, Tensor]:
    """For groups of ``counts`` items: each item's group and its offset within the group."""
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(counts.numel()), counts, output_size=total)
    offset = torch.arange(total) - (torch.cumsum(counts, 0) - counts)[owner]
    return owner, offset


def _is_preprocessed(data) -> bool:
    return isinstance(data, Data) and all(
        isinstance(getattr(data, name, None), Tensor) for name in ("rowptr", "col", "hop_x")
    )


def _check_preprocessed(data: Data) -> None:
    """The fields of :meth:`LargeGTLoader.preprocess`'s output: a CSR (``rowptr``, ``col``)
    over the ``N`` rows of ``hop_x [N, 3, F]`` (finite floats)."""
    hop_x = check_tensor(data.hop_x, "data.hop_x", floating=True, dim=3, values=True)
    if hop_x.size(1) != 3:
        raise ValueError(f"data.hop_x must have shape [N, 3, F], got {list(hop_x.shape)}")
    check_finite(hop_x, "data.hop_x")
    num_nodes = hop_x.size(0)
    rowptr = check_tensor(data.rowptr, "data.rowptr", integer=True, dim=1, values=True)
    col = check_tensor(data.col, "data.col", integer=True, dim=1, values=True)
    bad = rowptr.numel() != num_nodes + 1
    if not bad:
        bad = int(rowptr[0]) != 0 or int(rowptr[-1]) != col.numel()
        bad = bad or bool((rowptr[1:] < rowptr[:-1]).any())
    if bad:
        raise ValueError(
            f"data.rowptr must be {num_nodes + 1} non-decreasing offsets from 0 to "
            f"len(data.col) = {col.numel()}"
        )
    check_index(col, "data.col", num_nodes)


def _check_input_nodes(input_nodes, num_nodes: int) -> Tensor:
    if input_nodes is None:
        return torch.arange(num_nodes)
    if not isinstance(input_nodes, Tensor):
        raise TypeError(
            f"input_nodes must be a tensor (index or bool mask), got {type(input_nodes)}"
        )
    if input_nodes.dtype == torch.bool:
        if input_nodes.shape != (num_nodes,):
            raise ValueError(f"input_nodes as a mask must have shape [{num_nodes}]")
        return input_nodes.nonzero().flatten()
    check_tensor(input_nodes, "input_nodes", integer=True, dim=1)
    input_nodes = input_nodes.long().cpu()
    check_index(input_nodes, "input_nodes", num_nodes)
    return input_nodes
