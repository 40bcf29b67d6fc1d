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
    progress,
    results,
    seed_everything,
)
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import GINConv
from torch_geometric.utils import add_self_loops, remove_self_loops, to_undirected

from gtlib.attention import Pattern
from gtlib.datasets import Evaluator, OGBNodeDataset
from gtlib.datasets.generate import ogb_like
from gtlib.datasets.ogb import META_FILE_NAME
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
) -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], float], Callable[[], dict]]:
    """Model, optimizer, ``train_epoch`` and ``evaluate`` for the full-batch models."""
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

    def forward() -> Tensor:
        if args.model == "gps":
            return model(x, pattern, edge_index)
        return model(x, pattern)

    def train_epoch() -> float:
        model.train()
        optimizer.zero_grad()
        logits = forward()
        loss = task.loss(logits[train_index], y[train_index])
        loss.backward()
        optimizer.step()
        return loss.item()

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        model.eval()
        return task.evaluate(forward(), y, split)

    return model, optimizer, train_epoch, evaluate


def build_largegt(
    args: argparse.Namespace, graph: Data, split: dict[str, Tensor], task: Task
) -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], float], Callable[[], dict]]:
    """Model, optimizer, ``train_epoch`` and ``evaluate`` for LargeGT on LargeGTLoader batches."""
    device = args.device
    shared = LargeGTLoader.preprocess(graph)  # CSR and hop features, computed once
    loader_kwargs = {
        "num_tokens": args.num_tokens,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "persistent_workers": False,
    }
    train_loader = LargeGTLoader(shared, input_nodes=split["train"], shuffle=True, **loader_kwargs)
    eval_loader = LargeGTLoader(shared, shuffle=False, **loader_kwargs)  # all nodes, in order
    num_nodes = int(graph.num_nodes)
    model = LargeGT(
        graph.x.size(1),
        args.hidden,
        task.out_channels,
        num_tokens=args.num_tokens,
        num_nodes=num_nodes,
        num_heads=args.heads,
        num_centroids=min(args.num_centroids, num_nodes),
        dropout=args.dropout,
    ).to(device)
    optimizer = make_optimizer(args, model)

    def train_epoch() -> float:
        model.train()
        total, count = 0.0, 0
        for batch in progress(train_loader, not args.no_progress, desc="train"):
            if batch.batch_size < 2:  # BatchNorm needs two samples in training
                continue
            batch = batch.to(device)
            optimizer.zero_grad()
            loss = task.loss(model(batch), batch.y)
            loss.backward()
            optimizer.step()
            total += loss.item() * batch.batch_size
            count += batch.batch_size
        return total / max(count, 1)

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        model.eval()
        logits = [
            model(batch.to(device))
            for batch in progress(eval_loader, not args.no_progress, desc="eval")
        ]
        return task.evaluate(torch.cat(logits), graph.y, split)

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
    args = parse_args(argv)
    seed_everything(args.seed)
    dataset, graph, split, generated = load_graph(args)
    task = Task(dataset, args.name)
    build = build_largegt if args.model == "largegt" else build_full_batch
    model, optimizer, train_epoch, evaluate = build(args, graph, split, task)
    print(
        f"{args.name}: {graph.num_nodes} nodes, {graph.edge_index.size(1)} edges (undirected), "
        f"{task.out_channels} outputs, metric {task.metric}; model {args.model} "
        f"({sum(p.numel() for p in model.parameters())} parameters) on {args.device}",
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
