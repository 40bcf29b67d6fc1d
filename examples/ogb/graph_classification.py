"""Graph classification on an OGB molecule dataset (ogbg-mol* layout) with a GPS graph transformer.

Model (GraphGPS recipe, Rampasek et al. 2022): atom embeddings plus a projected positional
encoding -> ``--layers`` GPSConv layers (local GINEConv over bond embeddings + multi-head softmax
attention among the nodes of each graph) -> global mean pool -> MLP -> one logit per task.

- Atom/bond features: OGB's ``AtomEncoder``/``BondEncoder`` when ``ogb`` is installed and the
  features fit their vocabularies (9 atom / 3 bond columns of real ogbg-mol* data); otherwise a
  sum of per-column embeddings sized from the data (``--encoder`` forces one).
- ``--pe rwse``: random-walk structural encoding (``AddRandomWalkPE``, ``--walk-length`` 16);
  ``--pe lappe``: Laplacian eigenvectors (``AddLaplacianEigenvectorPE``, ``--k`` 8, zero-padded
  for graphs with fewer than k + 1 nodes) with a random sign flip per graph and eigenvector in
  every training step. Encodings are computed once and cached with the processed dataset.
- Loss: binary cross-entropy over labelled tasks (NaN labels masked); metric from the dataset
  (ROC-AUC for ogbg-molhiv) via OGB's ``Evaluator`` every epoch; the test value of the best
  validation epoch is the result.

Without a dataset folder under ``--root``, a synthetic ogbg-molhiv-like dataset (molecule-like
graphs labelled by a motif count, 9 integer atom and 3 bond feature columns) is generated first.

Run:

    python examples/ogb/graph_classification.py --pe rwse --epochs 30 --out results/molhiv.json

    python examples/ogb/graph_classification.py --root /data/ogb --name ogbg-molhiv --pe lappe \
        --layers 10 --checkpoint ckpt/gps.pt --resume

An interrupted run continues with the same command plus ``--resume`` (same ``--checkpoint``) and
reaches the same result as an uninterrupted run with the same seed.

Several processes (``torchrun --nproc_per_node N graph_classification.py ...``): DDP, with
``--batch-size`` graphs per process; each global batch of ``batch-size x N`` graphs (the batch
one process with ``--batch-size`` x N would draw) is split between the processes, evaluation
shards every split and gathers the predictions, and rank 0 alone writes. On GPUs the BatchNorm
layers become SyncBatchNorm (statistics of the global batch); on CPUs they normalise per process,
so use ``--norm layer`` (per-graph LayerNorm, no batch statistics) where N processes must take
the steps of one exactly (with ``--dropout 0 --attn-dropout 0`` and ``--pe rwse``: dropout
masks and LapPE sign flips are drawn per process).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import (
    add_common_arguments,
    check_common_arguments,
    dataset_folder_or_generate,
    finish,
    fit,
    positive_int,
    probability,
    results,
)
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GINEConv, global_mean_pool
from torch_geometric.transforms import AddLaplacianEigenvectorPE, AddRandomWalkPE, BaseTransform

from gtlib.datasets import Evaluator, OGBGraphDataset
from gtlib.datasets.generate import ogb_like
from gtlib.datasets.ogb import META_FILE_NAME
from gtlib.distributed import (
    ShardedBatchSampler,
    all_gather_cat,
    all_reduce,
    distributed_session,
    get_world_size,
    main_first,
    mean_weight,
    print_main,
    progress,
    seed_everything,
    shard,
    wrap_ddp,
)
from gtlib.nn import GPSConv

try:  # OGB's molecule feature encoders (vocabularies of the real ogbg-mol* features)
    from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
    from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims
except ImportError:  # pragma: no cover - ogb is optional
    AtomEncoder = BondEncoder = None

PE_KINDS = ("rwse", "lappe")
NORMS = {"batch": "batch_norm", "layer": "layer_norm"}  # --norm -> GPSConv's norm
ENCODERS = ("auto", "ogb", "embedding")
ATTN_TYPES = ("multihead", "exphormer")  # --attn-type -> GPSConv's attn_type


# --------------------------------------------------------------------------- positional encodings
class PositionalEncoding(BaseTransform):
    """Adds ``data.pe [N, dim]``: RWSE (``walk_length`` steps) or LapPE (``k`` eigenvectors).

    LapPE uses PyG's ``AddLaplacianEigenvectorPE`` and pads with zero columns when a graph has
    fewer than ``k + 1`` nodes (PyG's transform needs ``k < num_nodes``). The ``repr`` names the
    parameters, so the dataset cache (keyed by it) is rebuilt when they change.
    """

    def __init__(self, kind: str, walk_length: int = 16, k: int = 8) -> None:
        if kind not in PE_KINDS:
            raise ValueError(f"kind must be one of {PE_KINDS}, got {kind!r}")
        self.kind = kind
        self.walk_length = walk_length
        self.k = k
        self.dim = walk_length if kind == "rwse" else k

    def forward(self, data: Data) -> Data:
        if self.kind == "rwse":
            return AddRandomWalkPE(self.walk_length, attr_name="pe")(data)
        num_nodes = int(data.num_nodes)
        k = min(self.k, num_nodes - 1)
        if k >= 1:
            data = AddLaplacianEigenvectorPE(k, attr_name="pe", is_undirected=True)(data)
            pe = data.pe.float()
        else:
            pe = torch.zeros(num_nodes, 0)
        data.pe = torch.cat([pe, pe.new_zeros(num_nodes, self.k - pe.size(1))], dim=1)
        return data

    def __repr__(self) -> str:
        extra = f"walk_length={self.walk_length}" if self.kind == "rwse" else f"k={self.k}"
        return f"{self.__class__.__name__}(kind={self.kind}, {extra})"


# --------------------------------------------------------------------------------------- encoders
class EmbeddingSum(nn.Module):
    """Sum of one embedding per integer feature column (OGB's Atom/BondEncoder design)."""

    def __init__(self, vocabulary_sizes: list[int], channels: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(size, channels) for size in vocabulary_sizes)
        for embedding in self.embeddings:
            nn.init.xavier_uniform_(embedding.weight)

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() == 1:
            features = features.unsqueeze(1)
        out = 0
        for column, embedding in enumerate(self.embeddings):
            out = out + embedding(features[:, column])
        return out


def feature_encoders(
    dataset: OGBGraphDataset, channels: int, choice: str
) -> tuple[nn.Module, nn.Module, str]:
    """Atom and bond encoders: OGB's when they fit the data (or asked for), else EmbeddingSum."""
    x, edge_attr = dataset._data.x, dataset._data.edge_attr
    if x is None or edge_attr is None:
        raise SystemExit("error: the dataset needs integer node and edge features (molecules)")
    if x.dtype != torch.long or edge_attr.dtype != torch.long:
        raise SystemExit("error: node/edge features must be integers (categorical, as ogbg-mol*)")
    if (x.numel() and int(x.min()) < 0) or (edge_attr.numel() and int(edge_attr.min()) < 0):
        raise SystemExit("error: categorical node/edge features must be non-negative")
    x_sizes, e_sizes = _vocabulary_sizes(x), _vocabulary_sizes(edge_attr)
    ogb_fits = AtomEncoder is not None and _fits(x_sizes, get_atom_feature_dims())
    ogb_fits = ogb_fits and _fits(e_sizes, get_bond_feature_dims())
    if choice == "ogb" and not ogb_fits:
        reason = "ogb is not installed" if AtomEncoder is None else "features exceed OGB's vocab"
        raise SystemExit(f"error: --encoder ogb: cannot use OGB's encoders ({reason})")
    if choice == "ogb" or (choice == "auto" and ogb_fits):
        return AtomEncoder(channels), BondEncoder(channels), "ogb"
    return EmbeddingSum(x_sizes, channels), EmbeddingSum(e_sizes, channels), "embedding"


def _vocabulary_sizes(features: Tensor) -> list[int]:
    """``max + 1`` of each integer column (at least 1)."""
    features = features.view(features.size(0), -1)
    if features.size(0) == 0:
        return [1] * features.size(1)
    return (features.max(0).values + 1).tolist()


def _fits(sizes: list[int], vocabulary: list[int]) -> bool:
    return len(sizes) == len(vocabulary) and all(s <= v for s, v in zip(sizes, vocabulary))


# ------------------------------------------------------------------------------------------ model
class GPSGraphNet(nn.Module):
    """Atom encoder + PE -> GPSConv(GINEConv, multihead) x layers -> mean pool -> MLP.

    ``norm="batch"`` (GraphGPS) normalises with BatchNorm; ``"layer"`` with a per-graph LayerNorm
    in GPSConv and a per-node LayerNorm of the RWSE, so that no output depends on the other
    graphs of the batch.
    """

    def __init__(
        self,
        atom_encoder: nn.Module,
        bond_encoder: nn.Module,
        pe_kind: str,
        pe_dim: int,
        hidden: int,
        out_channels: int,
        heads: int,
        layers: int,
        dropout: float,
        attn_dropout: float,
        norm: str = "batch",
        attn_type: str = "multihead",
        exp_degree: int = 3,
        num_virtual: int = 1,
    ) -> None:
        super().__init__()
        if attn_type not in ATTN_TYPES:
            raise ValueError(f"attn_type must be one of {ATTN_TYPES}, got {attn_type!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {tuple(NORMS)}, got {norm!r}")
        self.pe_kind = pe_kind
        self.atom_encoder = atom_encoder
        self.bond_encoder = bond_encoder
        # RWSE values are probabilities of very different scales: normalise them first
        self.pe_norm = nn.Identity()
        if pe_kind == "rwse":
            self.pe_norm = nn.BatchNorm1d(pe_dim) if norm == "batch" else nn.LayerNorm(pe_dim)
        self.pe_encoder = nn.Linear(pe_dim, hidden)
        self.layers = nn.ModuleList()
        attn_kwargs: dict = {"dropout": attn_dropout}
        if attn_type == "exphormer":  # expander + virtual nodes, one expander per batch
            attn_kwargs.update(degree=exp_degree, num_virtual=num_virtual)
        for _ in range(layers):
            mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
            self.layers.append(
                GPSConv(
                    hidden,
                    GINEConv(mlp),
                    heads=heads,
                    dropout=dropout,
                    attn_type=attn_type,
                    attn_kwargs=attn_kwargs,
                    norm=NORMS[norm],
                )  # fmt: skip
            )
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, out_channels),
        )  # fmt: skip

    def forward(self, batch: Data) -> Tensor:
        pe = batch.pe
        if self.pe_kind == "lappe" and self.training:  # eigenvector signs are arbitrary
            signs = torch.randint(0, 2, (batch.num_graphs, pe.size(1)), device=pe.device)
            pe = pe * (2 * signs - 1).to(pe.dtype)[batch.batch]
        x = self.atom_encoder(batch.x) + self.pe_encoder(self.pe_norm(pe))
        edge_attr = self.bond_encoder(batch.edge_attr)
        for layer in self.layers:
            x = layer(x, batch.edge_index, batch.batch, edge_attr=edge_attr)
        return self.head(global_mean_pool(x, batch.batch, size=batch.num_graphs))


# --------------------------------------------------------------------------------------- training
def masked_bce(logits: Tensor, y: Tensor) -> Tensor:
    """Binary cross-entropy over the labelled (non-NaN) entries."""
    target = y.float()
    labelled = ~torch.isnan(target)
    return F.binary_cross_entropy_with_logits(logits[labelled], target[labelled])


def make_steps(
    args: argparse.Namespace,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loaders: dict[str, DataLoader],
    evaluator: Evaluator,
    metric: str,
    num_tasks: int,
) -> tuple[Callable[[int], float], Callable[[], dict[str, float]]]:
    """``train_epoch`` and ``evaluate`` closures.

    ``loaders["train"]`` draws its batches with a :class:`ShardedBatchSampler` (this rank's part
    of each global batch); the other loaders hold this rank's contiguous part of their split,
    whose predictions are gathered in order before the metric is computed.
    """
    device = args.device
    ddp = wrap_ddp(model)  # SyncBatchNorm on GPUs
    sampler: ShardedBatchSampler = loaders["train"].batch_sampler
    world_size = get_world_size()

    def train_epoch(epoch: int) -> float:
        model.train()
        sampler.set_epoch(epoch)
        shares = sampler.shares()  # graphs of every rank, per step (0: a placeholder)
        total, count = 0.0, 0
        batches = progress(loaders["train"], enabled=not args.no_progress, desc="train",
                           leave=False)  # fmt: skip
        for step, batch in enumerate(batches):
            graphs = sum(shares[step])  # of the global batch
            if graphs < 2:  # BatchNorm needs two samples in training
                continue
            batch = batch.to(device)
            optimizer.zero_grad()
            logits = ddp(batch)
            real = shares[step][sampler.rank] > 0
            labelled = int((~torch.isnan(batch.y.float())).sum()) if real else 0
            weight = mean_weight(labelled)  # the gradient of the global batch's mean
            if weight > 0:
                loss = masked_bce(logits, batch.y) * weight
            else:  # a placeholder or nothing labelled: take part in the all-reduce with zeros
                loss = logits.sum() * 0.0
            loss.backward()
            optimizer.step()
            total += loss.item() / world_size * graphs  # summed over ranks: global mean x graphs
            count += graphs
        return all_reduce(total, "sum") / max(count, 1)

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        model.eval()
        out = {}
        for part, loader in loaders.items():
            predictions = [torch.empty(0, num_tasks)]
            labels = [torch.empty(0, num_tasks)]
            for batch in progress(loader, enabled=not args.no_progress, desc=f"eval {part}",
                                  leave=False):  # fmt: skip
                batch = batch.to(device)
                predictions.append(model(batch).float().cpu())
                labels.append(batch.y.float().cpu().view(-1, num_tasks))
            y_pred = all_gather_cat(torch.cat(predictions))  # the whole split, in order
            y_true = all_gather_cat(torch.cat(labels))
            try:
                out[part] = float(evaluator.eval({"y_true": y_true, "y_pred": y_pred})[metric])
            except RuntimeError as exc:  # e.g. a split holding one class only: no ROC-AUC
                print_main(f"warning: {part} {metric} undefined ({exc})", file=sys.stderr)
                out[part] = float("nan")
        return out

    return train_epoch, evaluate


# ------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser, default_name="ogbg-molhiv", default_lr=1e-3)
    parser.add_argument("--pe", choices=PE_KINDS, default="rwse", help="positional encoding")
    parser.add_argument("--walk-length", type=positive_int, default=16, help="RWSE steps")
    parser.add_argument("--k", type=positive_int, default=8, help="LapPE eigenvectors")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="graphs per batch")
    parser.add_argument("--attn-dropout", type=probability, default=0.5, help="attention dropout")
    parser.add_argument("--model", choices=("gps",), default="gps", help="model to train")
    parser.add_argument(
        "--attn-type",
        choices=ATTN_TYPES,
        default="multihead",
        help="GPS global attention: multihead (all pairs per graph) or exphormer (expander "
        "graph + virtual nodes, Shirzad et al. 2023)",
    )
    parser.add_argument(
        "--exp-degree", type=positive_int, default=3, help="exphormer: permutations per graph"
    )
    parser.add_argument(
        "--num-virtual", type=int, default=1, help="exphormer: virtual nodes per graph"
    )
    parser.add_argument("--encoder", choices=ENCODERS, default="auto", help="atom/bond encoder")
    parser.add_argument(
        "--norm",
        choices=tuple(NORMS),
        default="batch",
        help="batch: BatchNorm (GraphGPS); layer: per-graph LayerNorm (no batch statistics)",
    )
    gen = parser.add_argument_group("synthetic dataset (only used when generating it)")
    gen.add_argument("--num-graphs", type=positive_int, default=2000, help="graphs")
    gen.add_argument("--avg-nodes", type=positive_int, default=25, help="average nodes per graph")
    gen.add_argument("--data-seed", type=int, default=0, help="generator seed")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if args.avg_nodes < 2:
        parser.error(f"--avg-nodes must be at least 2, got {args.avg_nodes}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Train and evaluate; under torchrun, in the process group (rank 0 writes)."""
    with distributed_session():
        _main(argv)


def _main(argv: list[str] | None) -> None:
    args = parse_args(argv)
    seed_everything(args.seed)  # the same seed on every rank
    pe_transform = PositionalEncoding(args.pe, walk_length=args.walk_length, k=args.k)
    with main_first():  # rank 0 generates and processes the dataset, then the others read it
        generated = dataset_folder_or_generate(
            args.root,
            args.name,
            not args.no_generate,
            lambda: ogb_like(
                args.root,
                args.name,
                kind="graph",
                num_graphs=args.num_graphs,
                num_nodes=args.avg_nodes,
                avg_degree=2.2,  # molecules: about 1.1 bonds per atom
                num_features=9,  # ogbg-mol*: 9 atom and 3 bond feature columns
                num_edge_features=3,
                feature_dtype="int",
                seed=args.data_seed,
            ),
        )
        dataset = OGBGraphDataset(args.root, args.name, pre_transform=pe_transform)
    if dataset.task_type != "binary classification":
        raise SystemExit(
            f"error: {args.name}: task type {dataset.task_type!r}; this example trains binary "
            "classification (ogbg-mol* classification datasets)"
        )
    metric = dataset.eval_metric
    split = dataset.get_idx_split()
    # training: this rank's part of every global batch; evaluation: this rank's part of the split
    train_sampler = ShardedBatchSampler(
        split["train"].numel(), args.batch_size, shuffle=True, seed=args.seed
    )
    loaders = {
        part: DataLoader(
            dataset[index],
            batch_sampler=train_sampler,
            num_workers=args.num_workers,
        )
        if part == "train"
        else DataLoader(
            dataset[shard(index)],
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        )
        for part, index in split.items()
    }
    atom_encoder, bond_encoder, encoder_kind = feature_encoders(dataset, args.hidden, args.encoder)
    model = GPSGraphNet(
        atom_encoder, bond_encoder, args.pe, pe_transform.dim, args.hidden, dataset.num_tasks,
        args.heads, args.layers, args.dropout, args.attn_dropout, norm=args.norm,
        attn_type=args.attn_type, exp_degree=args.exp_degree, num_virtual=args.num_virtual,
    ).to(args.device)  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    evaluator = Evaluator(args.name, num_tasks=dataset.num_tasks, eval_metric=metric)
    train_epoch, evaluate = make_steps(
        args, model, optimizer, loaders, evaluator, metric, dataset.num_tasks
    )
    num_parameters = sum(p.numel() for p in model.parameters())
    print_main(
        f"{args.name}: {len(dataset)} graphs, {dataset.num_tasks} task(s), metric {metric}; "
        f"{encoder_kind} encoders, pe {pe_transform!r}, {num_parameters} parameters on "
        f"{args.device}" + (f" x {args.world_size} processes" if args.world_size > 1 else ""),
        file=sys.stderr,
    )
    state = fit(
        args=args,
        model=model,
        optimizer=optimizer,
        train_epoch=train_epoch,
        evaluate=evaluate,
        metric=metric,
    )
    synthetic = generated or (Path(dataset.dataset_dir) / META_FILE_NAME).exists()
    payload = results(
        script="graph_classification",
        args=args,
        state=state,
        metric=metric,
        dataset={
            "name": args.name,
            "root": str(args.root),
            "synthetic": bool(synthetic),
            "num_graphs": len(dataset),
            "num_tasks": dataset.num_tasks,
            "encoder": encoder_kind,
            "split_sizes": {part: int(index.numel()) for part, index in split.items()},
        },
        num_parameters=num_parameters,
    )
    finish(args, payload, state, metric)


if __name__ == "__main__":
    main()
