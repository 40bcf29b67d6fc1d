"""Node classification on an OGB node dataset (ogbn-arxiv layout) with gtlib's graph transformers.

Models (``--model``):

- ``gatv2``, ``transformer``: a stack of ``--layers`` GATv2Conv / TransformerConv layers trained
  full-batch on the whole graph (ReLU, BatchNorm and dropout between layers; the last layer
  averages its heads into the class logits). The graph is made undirected, self-loops are added
  once and one :class:`gtlib.attention.Pattern` is built for all layers and epochs.
- ``gps``: GPSConv layers, full-batch, with a GATv2Conv (``--local-conv gatv2``) or GINConv
  (``gin``) local branch. Softmax attention over all N nodes of one large graph needs N^2 scores,
  so the global branch is linear: ``--attn-type performer`` (default; FAVOR+ over all nodes,
  O(N) time and memory) or ``sparse`` (BigBird: a window of 3 in node order, 2 random nodes
  and 1 global token per node, O(N) edges; one random pattern per forward shared by all layers).
- ``largegt``: LargeGT (local token transformer + global codebook attention) on mini-batches of
  ``--batch-size`` seed nodes from LargeGTLoader; hop features are computed once and shared by
  the train and evaluation loaders. ``--layers`` does not apply (LargeGT has one layer).

Each epoch reports the OGB metric (``Evaluator``) on train/valid/test; the test value of the best
validation epoch is the result. Without a dataset folder under ``--root``, a synthetic
ogbn-arxiv-like graph (learnable planted-partition labels) is generated there first.

Run (small synthetic graph, CPU):

    python examples/ogb/node_classification.py --model gatv2 --epochs 50 --out results/arxiv.json

    python examples/ogb/node_classification.py --model largegt --root /data/ogb --name ogbn-arxiv \
        --batch-size 1024 --checkpoint ckpt/largegt.pt --resume

Interrupted runs continue with the same command plus ``--resume`` (and the same ``--checkpoint``)
and reach the same result as an uninterrupted run with the same seed.

Several processes (``torchrun --nproc_per_node N node_classification.py ...``, one per GPU, or
CPU processes with gloo): the model is wrapped in DistributedDataParallel and rank 0 alone writes
the checkpoint and the results. Full-batch models (gatv2, transformer, gps) run the forward pass on
the whole graph in every process (with the same random draws) and split the *loss* over the
training nodes, so N processes take exactly the steps of one; this replicates rather than divides
the work, and is there so that the same command runs everywhere. LargeGT divides the work:
``--batch-size`` is per process, each global batch of ``batch-size x N`` seed nodes is split
between the processes (LargeGTLoader with ``distributed=True``) and evaluation shards the nodes and
gathers the logits. LargeGT's BatchNorm becomes SyncBatchNorm on GPUs (on CPUs it normalises
per process); its k-means codebook is a buffer, which DDP copies from rank 0 to the others at every
step, so the codebook follows rank 0's seeds only.
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
    positive_float,
    positive_int,
    results,
)
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import GINConv
from torch_geometric.utils import add_self_loops, remove_self_loops, to_undirected

from gtlib.attention import Pattern
from gtlib.datasets import Evaluator, OGBNodeDataset
from gtlib.datasets.generate import ogb_like
from gtlib.datasets.ogb import META_FILE_NAME
from gtlib.distributed import (
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
from gtlib.loader import LargeGTLoader
from gtlib.nn import GATv2Conv, GPSConv, LargeGT, TransformerConv

MODELS = ("gatv2", "transformer", "gps", "largegt")


# ---------------------------------------------------------------------------------------- models
class AttentionStack(nn.Module):
    """``layers`` GATv2Conv or TransformerConv layers over one fixed pattern (with self-loops).

    Hidden layers concatenate ``heads`` heads of ``hidden // heads`` channels, followed by
    BatchNorm, ReLU and dropout; the last layer averages ``heads`` heads of ``out_channels``.
    """

    def __init__(
        self,
        kind: str,
        in_channels: int,
        hidden: int,
        out_channels: int,
        heads: int,
        layers: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels = in_channels
        for layer in range(layers):
            last = layer == layers - 1
            per_head = out_channels if last else hidden // heads
            if kind == "gatv2":
                # self-loops are already in the pattern
                conv = GATv2Conv(channels, per_head, heads=heads, concat=not last,
                                 add_self_loops=False)  # fmt: skip
            else:
                conv = TransformerConv(channels, per_head, heads=heads, concat=not last)
            self.convs.append(conv)
            if not last:
                self.norms.append(nn.BatchNorm1d(hidden))
            channels = hidden

    def forward(self, x: Tensor, pattern: Pattern) -> Tensor:
        x = F.dropout(x, self.dropout, self.training)
        for layer, conv in enumerate(self.convs):
            x = conv(x, pattern)
            if layer < len(self.norms):
                x = F.relu(self.norms[layer](x))
                x = F.dropout(x, self.dropout, self.training)
        return x


class GPSNet(nn.Module):
    """Linear encoder -> ``layers`` GPSConv (local GATv2/GIN + linear global attention) -> Linear.

    ``attn_type`` is ``"performer"`` or ``"sparse"`` (BigBird); see the module docstring.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        out_channels: int,
        heads: int,
        layers: int,
        dropout: float,
        local_conv: str,
        attn_type: str,
    ) -> None:
        super().__init__()
        self.local_conv = local_conv
        self.attn_type = attn_type
        self.encoder = nn.Linear(in_channels, hidden)
        attn_kwargs = {"head_channels": hidden // heads} if attn_type == "performer" else {}
        self.layers = nn.ModuleList()
        for _ in range(layers):
            if local_conv == "gatv2":
                conv = GATv2Conv(hidden, hidden // heads, heads=heads, add_self_loops=False)
            else:
                mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
                conv = GINConv(mlp)
            self.layers.append(
                GPSConv(
                    hidden,
                    conv,
                    heads=heads,
                    dropout=dropout,
                    attn_type=attn_type,
                    attn_kwargs=attn_kwargs,
                )  # fmt: skip
            )
        self.head = nn.Linear(hidden, out_channels)

    def forward(self, x: Tensor, pattern: Pattern, edge_index: Tensor) -> Tensor:
        x = self.encoder(x)
        global_pattern = None
        if self.attn_type == "sparse":  # one random BigBird pattern per forward, all layers
            global_pattern = GPSConv.bigbird_pattern(None, num_nodes=x.size(0)).to(x.device)
        local_graph = pattern if self.local_conv == "gatv2" else edge_index
        for layer in self.layers:
            x = layer(x, local_graph, None, global_pattern=global_pattern)
        return self.head(x)


# ------------------------------------------------------------------------------------------ data
def load_graph(args: argparse.Namespace) -> tuple[OGBNodeDataset, Data, dict[str, Tensor], bool]:
    """The dataset (generated if absent), its graph prepared for training, and the split."""
    generated = dataset_folder_or_generate(
        args.root,
        args.name,
        not args.no_generate,
        lambda: ogb_like(
            args.root,
            args.name,
            kind="node",
            num_nodes=args.num_nodes,
            avg_degree=args.avg_degree,
            num_features=args.num_features,
            num_classes=args.num_classes,
            seed=args.data_seed,
            progress=not args.no_progress,
        ),
    )
    dataset = OGBNodeDataset(args.root, args.name)
    data = dataset[0]
    if data.x is None:
        raise SystemExit(f"error: {args.name}: the dataset has no node features (node-feat)")
    if dataset.task_type not in ("multiclass classification", "binary classification"):
        raise SystemExit(f"error: {args.name}: task type {dataset.task_type!r} is not supported")
    split = dataset.get_idx_split()
    num_nodes = int(data.num_nodes)
    # citation graphs are directed; attention models use both directions (standard for arxiv)
    edge_index, _ = remove_self_loops(to_undirected(data.edge_index, num_nodes=num_nodes))
    graph = Data(x=data.x.float(), y=data.y, edge_index=edge_index, num_nodes=num_nodes)
    return dataset, graph, split, generated


# ------------------------------------------------------------------------------------ training
class Task:
    """Loss and OGB-format predictions for multiclass (acc) or multi-label binary tasks."""

    def __init__(self, dataset: OGBNodeDataset, name: str) -> None:
        self.multiclass = dataset.task_type == "multiclass classification"
        self.num_tasks = dataset.num_tasks
        self.out_channels = dataset.num_classes if self.multiclass else self.num_tasks
        self.metric = dataset.eval_metric
        self.evaluator = Evaluator(name, num_tasks=self.num_tasks, eval_metric=self.metric)

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.multiclass:
            return F.cross_entropy(logits, y[:, 0].long())
        target = y.float()
        labelled = ~torch.isnan(target)
        return F.binary_cross_entropy_with_logits(logits[labelled], target[labelled])

    def count(self, y: Tensor) -> int:
        """The number of terms :meth:`loss` averages over for labels ``y``."""
        if self.multiclass:
            return int(y.size(0))
        return int((~torch.isnan(y.float())).sum())

    def predictions(self, logits: Tensor) -> Tensor:
        """``y_pred`` for the evaluator: class ids ``[n, 1]`` or scores ``[n, tasks]``."""
        return logits.argmax(dim=-1, keepdim=True) if self.multiclass else logits

    def evaluate(self, logits: Tensor, y: Tensor, split: dict[str, Tensor]) -> dict[str, float]:
        y_pred = self.predictions(logits).cpu()
        y = y.cpu()
        return {
            part: float(
                self.evaluator.eval({"y_true": y[index], "y_pred": y_pred[index]})[self.metric]
            )
            for part, index in split.items()
        }


def make_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def build_full_batch(
    args: argparse.Namespace, graph: Data, split: dict[str, Tensor], task: Task
) -> tuple[nn.Module, torch.optim.Optimizer, Callable[[int], float], Callable[[], dict]]:
    """Model, optimizer, ``train_epoch`` and ``evaluate`` for the full-batch models.

    Under DDP every rank computes the forward pass on the whole graph (identical random draws:
    same seed) and the loss on its contiguous part of the training nodes, weighted so that the
    averaged gradient is the one of the loss over all training nodes. Evaluation needs no
    gather: every rank has all the logits.
    """
    device = args.device
    x, y = graph.x.to(device), graph.y.to(device)
    edge_index = graph.edge_index.to(device)
    looped, _ = add_self_loops(edge_index, num_nodes=graph.num_nodes)
    pattern = Pattern.from_edge_index(looped, num_nodes=graph.num_nodes)  # built once
    train_index = split["train"].to(device)
    if args.model == "gps":
        model = GPSNet(x.size(1), args.hidden, task.out_channels, args.heads, args.layers,
                       args.dropout, args.local_conv, args.attn_type)  # fmt: skip
    else:
        model = AttentionStack(args.model, x.size(1), args.hidden, task.out_channels,
                               args.heads, args.layers, args.dropout)  # fmt: skip
    model = model.to(device)
    optimizer = make_optimizer(args, model)
    # every rank normalises over all nodes: BatchNorm statistics agree without SyncBatchNorm
    ddp = wrap_ddp(model, sync_batchnorm=False)
    local_index = shard(train_index)  # this rank's part of the loss
    weight = mean_weight(task.count(y[local_index]), task.count(y[train_index]))

    def forward(module: nn.Module) -> Tensor:
        if args.model == "gps":
            return module(x, pattern, edge_index)
        return module(x, pattern)

    def train_epoch(epoch: int) -> float:
        model.train()
        optimizer.zero_grad()
        logits = forward(ddp)
        if weight > 0:
            loss = task.loss(logits[local_index], y[local_index]) * weight
        else:  # no labelled training node here: take part in the all-reduce with zeros
            loss = logits.sum() * 0.0
        loss.backward()
        optimizer.step()
        return all_reduce(loss.item(), "mean")  # the loss over all training nodes

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        model.eval()
        return task.evaluate(forward(model), y, split)

    return model, optimizer, train_epoch, evaluate


def build_largegt(
    args: argparse.Namespace, graph: Data, split: dict[str, Tensor], task: Task
) -> tuple[nn.Module, torch.optim.Optimizer, Callable[[int], float], Callable[[], dict]]:
    """Model, optimizer, ``train_epoch`` and ``evaluate`` for LargeGT on LargeGTLoader batches.

    Training batches are global batches of ``batch_size x world_size`` seeds split by rank;
    evaluation runs every rank on its contiguous part of the nodes and gathers the logits.
    """
    device = args.device
    shared = LargeGTLoader.preprocess(graph)  # CSR and hop features, computed once
    loader_kwargs = {
        "num_tokens": args.num_tokens,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "persistent_workers": False,
    }
    train_loader = LargeGTLoader(shared, input_nodes=split["train"], shuffle=True,
                                 distributed=True, seed=args.seed, **loader_kwargs)  # fmt: skip
    num_nodes = int(graph.num_nodes)
    # this rank's part of all nodes, in order
    eval_loader = LargeGTLoader(shared, input_nodes=shard(torch.arange(num_nodes)), shuffle=False,
                                **loader_kwargs)  # fmt: skip
    model = LargeGT(
        graph.x.size(1),
        args.hidden,
        task.out_channels,
        num_tokens=args.num_tokens,
        num_nodes=num_nodes,
        heads=args.heads,
        num_centroids=min(args.num_centroids, num_nodes),
        dropout=args.dropout,
    ).to(device)
    optimizer = make_optimizer(args, model)
    ddp = wrap_ddp(model)
    world_size = get_world_size()

    def train_epoch(epoch: int) -> float:
        model.train()
        train_loader.set_epoch(epoch)
        shares = train_loader.shard_sampler.shares()  # seeds of every rank, per step
        total, count = 0.0, 0
        batches = progress(train_loader, enabled=not args.no_progress, desc="train", leave=False)
        for step, batch in enumerate(batches):
            if min(shares[step]) < 2:  # BatchNorm needs two samples in training (on all ranks)
                continue
            batch = batch.to(device)
            optimizer.zero_grad()
            logits = ddp(batch)
            weight = mean_weight(task.count(batch.y))
            if weight > 0:
                loss = task.loss(logits, batch.y) * weight
            else:  # nothing labelled here: take part in the all-reduce with zeros
                loss = logits.sum() * 0.0
            loss.backward()
            optimizer.step()
            seeds = sum(shares[step])
            total += loss.item() / world_size * seeds  # summed over ranks: global mean x seeds
            count += seeds
        return all_reduce(total, "sum") / max(count, 1)

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        model.eval()
        batches = progress(eval_loader, enabled=not args.no_progress, desc="eval", leave=False)
        logits = [model(batch.to(device)) for batch in batches]
        local = torch.cat(logits) if logits else torch.empty(0, task.out_channels, device=device)
        return task.evaluate(all_gather_cat(local), graph.y, split)  # every node once, in order

    return model, optimizer, train_epoch, evaluate


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=MODELS, default="gatv2", help="model to train")
    add_common_arguments(parser, default_name="ogbn-arxiv", default_lr=5e-3)
    gen = parser.add_argument_group("synthetic dataset (only used when generating it)")
    gen.add_argument("--num-nodes", type=positive_int, default=5000, help="nodes")
    gen.add_argument("--avg-degree", type=positive_float, default=8.0, help="average degree")
    gen.add_argument("--num-features", type=positive_int, default=128, help="feature columns")
    gen.add_argument("--num-classes", type=positive_int, default=40, help="classes")
    gen.add_argument("--data-seed", type=int, default=0, help="generator seed")
    gps = parser.add_argument_group("gps")
    gps.add_argument("--local-conv", choices=("gatv2", "gin"), default="gatv2")
    gps.add_argument(
        "--attn-type",
        choices=("performer", "sparse"),
        default="performer",
        help="linear global attention (full softmax attention over one large graph is O(N^2))",
    )
    lgt = parser.add_argument_group("largegt")
    lgt.add_argument("--batch-size", type=positive_int, default=256, help="seed nodes per batch")
    lgt.add_argument("--num-tokens", type=positive_int, default=20, help="nodes per sequence K")
    lgt.add_argument(
        "--num-centroids", type=positive_int, default=4096, help="codebook size (<= num nodes)"
    )
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if args.num_classes < 2:
        parser.error(f"--num-classes must be at least 2, got {args.num_classes}")
    if args.num_nodes < 2:
        parser.error(f"--num-nodes must be at least 2, got {args.num_nodes}")
    if args.model == "largegt" and args.batch_size < 2:
        parser.error("--batch-size must be at least 2 for largegt (BatchNorm)")
    return args


def main(argv: list[str] | None = None) -> None:
    """Train and evaluate; under torchrun, in the process group (rank 0 writes)."""
    with distributed_session():
        _main(argv)


def _main(argv: list[str] | None) -> None:
    args = parse_args(argv)
    seed_everything(args.seed)  # the same seed on every rank
    with main_first():  # rank 0 generates and processes the dataset, then the others read it
        dataset, graph, split, generated = load_graph(args)
    task = Task(dataset, args.name)
    build = build_largegt if args.model == "largegt" else build_full_batch
    model, optimizer, train_epoch, evaluate = build(args, graph, split, task)
    print_main(
        f"{args.name}: {graph.num_nodes} nodes, {graph.edge_index.size(1)} edges (undirected), "
        f"{task.out_channels} outputs, metric {task.metric}; model {args.model} "
        f"({sum(p.numel() for p in model.parameters())} parameters) on {args.device}"
        + (f" x {args.world_size} processes" if args.world_size > 1 else ""),
        file=sys.stderr,
    )
    state = fit(
        args=args,
        model=model,
        optimizer=optimizer,
        train_epoch=train_epoch,
        evaluate=evaluate,
        metric=task.metric,
    )
    synthetic = generated or (Path(dataset.dataset_dir) / META_FILE_NAME).exists()
    payload = results(
        script="node_classification",
        args=args,
        state=state,
        metric=task.metric,
        dataset={
            "name": args.name,
            "root": str(args.root),
            "synthetic": bool(synthetic),
            "num_nodes": int(graph.num_nodes),
            "num_edges": int(graph.edge_index.size(1)),
            "num_features": int(graph.x.size(1)),
            "num_outputs": task.out_channels,
            "split_sizes": {part: int(index.numel()) for part, index in split.items()},
        },
        num_parameters=sum(p.numel() for p in model.parameters()),
    )
    finish(args, payload, state, task.metric)


if __name__ == "__main__":
    main()
