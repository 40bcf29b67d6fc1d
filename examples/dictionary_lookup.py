"""DictionaryLookup (Brody et al., ICLR 2022): the task static GAT attention cannot fit.

A graph of size ``k`` has ``k`` query nodes (key ``i``, empty value) and ``k`` key-value nodes
(key ``i``, value ``perm[i]``), and every key-value node sends to every query node. Query ``i``
must output ``perm[i]``: it has to attend to the one key-value node whose key matches its own,
a ranking of senders that depends on the receiver. GATv2's dynamic attention can express it; GAT's
static attention ranks senders the same way for every receiver and cannot.

    python examples/dictionary_lookup.py --k 10 --epochs 60
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from gtlib.nn import GATConv, GATv2Conv


def make_dictionary_lookup(
    k: int, num_graphs: int = 32_000, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """All ``k!`` permutations if there are at most ``num_graphs``, else random ones.

    Returns ``(keys [G, 2k], values [G, 2k], targets [G, k])``; value ``k`` means "empty".
    """
    gen = torch.Generator().manual_seed(seed)
    if math.factorial(k) <= num_graphs:
        perms = torch.tensor(list(itertools.permutations(range(k))))
        perms = perms[torch.randperm(perms.size(0), generator=gen)]
    else:
        perms = torch.stack([torch.randperm(k, generator=gen) for _ in range(num_graphs)])
    count = perms.size(0)
    keys = torch.arange(k).repeat(2).expand(count, 2 * k)
    values = torch.cat([torch.full((count, k), k), perms], dim=1)
    return keys, values, perms


def bipartite_edges(k: int, num_graphs: int) -> Tensor:
    """Every key-value node (k..2k-1) sends to every query node (0..k-1), per graph."""
    senders = torch.arange(k, 2 * k).repeat_interleave(k)
    receivers = torch.arange(k).repeat(k)
    offsets = (torch.arange(num_graphs) * 2 * k).repeat_interleave(k * k)
    return torch.stack([senders.repeat(num_graphs), receivers.repeat(num_graphs)]) + offsets


class LookupModel(torch.nn.Module):
    """Embedding of (key, value) -> one attention layer -> linear classifier over k values."""

    def __init__(self, k: int, attention: str, hidden: int = 128) -> None:
        super().__init__()
        self.k = k
        self.key_embedding = torch.nn.Embedding(k, hidden)
        self.value_embedding = torch.nn.Embedding(k + 1, hidden)
        if attention == "gatv2":
            self.conv = GATv2Conv(hidden, hidden, heads=1, add_self_loops=False, share_weights=True)
        elif attention == "gat":
            self.conv = GATConv(hidden, hidden, heads=1, add_self_loops=False)
        else:
            raise ValueError(f"attention must be 'gat' or 'gatv2', got {attention!r}")
        self.classifier = torch.nn.Linear(hidden, k)

    def forward(self, keys: Tensor, values: Tensor, edge_index: Tensor) -> Tensor:
        x = F.relu(self.key_embedding(keys.reshape(-1)) + self.value_embedding(values.reshape(-1)))
        x = F.relu(self.conv(x, edge_index))
        queries = x.view(keys.size(0), 2 * self.k, -1)[:, : self.k]
        return self.classifier(queries)  # [G, k, k]


def accuracy(model, keys, values, targets, batch_size: int) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, keys.size(0), batch_size):
            part = slice(start, start + batch_size)
            edges = bipartite_edges(model.k, keys[part].size(0))
            logits = model(keys[part], values[part], edges)
            correct += int((logits.argmax(-1) == targets[part]).sum())
    return correct / targets.numel()


def train(
    attention: str,
    k: int = 10,
    num_graphs: int = 32_000,
    epochs: int = 60,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    target_accuracy: float = 1.0,
    progress: bool = True,
) -> dict:
    """Trains one model; stops early once the training accuracy reaches ``target_accuracy``."""
    torch.manual_seed(seed)
    keys, values, targets = make_dictionary_lookup(k, num_graphs, seed)
    split = int(0.8 * keys.size(0))
    model = LookupModel(k, attention)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    edges = bipartite_edges(k, batch_size)  # the same Tensor object: its pattern is cached
    history = []
    start_time = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(split)
        for start in range(0, split - batch_size + 1, batch_size):
            batch = order[start : start + batch_size]
            logits = model(keys[batch], values[batch], edges)
            loss = F.cross_entropy(logits.reshape(-1, k), targets[batch].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        train_acc = accuracy(model, keys[:split], values[:split], targets[:split], 4096)
        history.append(train_acc)
        if progress:
            print(f"{attention:6s} epoch {epoch:3d}  loss {loss.item():.4f}  train {train_acc:.4f}")
        if train_acc >= target_accuracy:
            break
    test_acc = accuracy(model, keys[split:], values[split:], targets[split:], 4096)
    return {
        "attention": attention,
        "k": k,
        "num_graphs": keys.size(0),
        "epochs": len(history),
        "train_accuracy": history[-1],
        "test_accuracy": test_acc,
        "seconds": time.perf_counter() - start_time,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--num-graphs", type=int, default=32_000)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--out", default=None, help="results JSON")
    args = parser.parse_args()
    results = [
        train(attention, args.k, args.num_graphs, args.epochs) for attention in ("gatv2", "gat")
    ]
    for r in results:
        print(
            f"{r['attention']:6s} train {r['train_accuracy']:.3f}  test {r['test_accuracy']:.3f}"
            f"  ({r['epochs']} epochs, {r['seconds']:.0f} s)"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
