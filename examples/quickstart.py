"""gtlib quickstart: the sparse-attention core on a generated graph, then a graph layer.

Checks every mode against a dense masked-softmax reference (values and gradients), times
forward + backward on a larger random graph against PyG's softmax + scatter math, and swaps
PyG's GATv2Conv for gtlib's (same weights, same numbers).

    python examples/quickstart.py            # ~1 minute on 2 cores
    python examples/quickstart.py --small    # seconds
"""

from __future__ import annotations

import argparse
import time

import torch

from gtlib.attention import Pattern, sparse_attention


def dense_reference(query, key, value, pattern: Pattern):
    """Masked softmax over a dense [H, N_dst, N_src] score matrix (needs unique edges)."""
    mask = torch.zeros(pattern.num_dst, pattern.num_src, dtype=torch.bool)
    mask[pattern.row, pattern.col] = True
    scores = torch.einsum("ihc,jhc->hij", query, key) / query.size(-1) ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows without senders -> 0
    return torch.einsum("hij,jhc->ihc", weights, value)


def random_graph(num_nodes: int, num_edges: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, num_nodes * num_nodes, (num_edges,), generator=gen).unique()
    return torch.stack([pairs % num_nodes, pairs // num_nodes])


def time_call(step, repeat: int = 3) -> float:
    step()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run with small graphs")
    args = parser.parse_args()
    torch.manual_seed(0)
    heads, channels = 4, 32

    print("== agreement with a dense masked-softmax reference (float64) ==")
    num_nodes = 300 if args.small else 1500
    edge_index = random_graph(num_nodes, 20 * num_nodes)
    pattern = Pattern.from_edge_index(edge_index, num_nodes)
    q, k, v = (
        torch.randn(num_nodes, heads, channels, dtype=torch.float64, requires_grad=True)
        for _ in range(3)
    )
    expected = dense_reference(q, k, v, pattern)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for mode in ("scatter", "sparse", "stream"):
        out = sparse_attention(q, k, v, pattern, mode=mode)
        got_grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        value_error = (out - expected).abs().max().item()
        grad_error = max((g - e).abs().max().item() for g, e in zip(got_grads, expected_grads))
        print(
            f"  {mode:8s} max |out - ref| = {value_error:.1e}   max |grad - ref| = {grad_error:.1e}"
        )

    batch = torch.repeat_interleave(torch.arange(4), torch.tensor([7, 50, 120, 300]))
    blocks = Pattern.full(batch)
    xq, xk, xv = (
        torch.randn(batch.numel(), heads, channels, dtype=torch.float64) for _ in range(3)
    )
    dense_error = (
        (sparse_attention(xq, xk, xv, blocks, mode="dense") - dense_reference(xq, xk, xv, blocks))
        .abs()
        .max()
        .item()
    )
    print(
        f"  dense    (per-graph all-to-all, graphs of 7..300 nodes) max error = {dense_error:.1e}"
    )

    num_nodes, num_edges = (10_000, 200_000) if args.small else (50_000, 1_000_000)
    print(f"\n== forward + backward, {num_nodes} nodes, {num_edges} edges, 4 heads x 32 ==")
    edge_index = torch.randint(0, num_nodes, (2, num_edges))
    start = time.perf_counter()
    pattern = Pattern.from_edge_index(edge_index, num_nodes)
    print(f"  building the pattern: {time.perf_counter() - start:.2f} s (once per graph)")
    q, k, v = (torch.randn(num_nodes, heads, channels, requires_grad=True) for _ in range(3))

    def pyg_math():
        from torch_geometric.utils import scatter, softmax

        src, dst = edge_index
        scores = (q[dst] * k[src]).sum(-1) / channels**0.5
        alpha = softmax(scores, dst, num_nodes=num_nodes)
        out = scatter(alpha.unsqueeze(-1) * v[src], dst, 0, num_nodes, reduce="sum")
        out.sum().backward()

    reference_time = time_call(pyg_math)
    print(f"  PyG softmax + scatter: {reference_time:.3f} s")
    for mode in ("sparse", "stream", "scatter"):
        seconds = time_call(
            lambda mode=mode: sparse_attention(q, k, v, pattern, mode=mode).sum().backward()
        )
        print(f"  gtlib {mode:8s}: {seconds:.3f} s  ({seconds / reference_time:.2f}x PyG)")

    graph_section(edge_index, num_nodes)


def graph_section(edge_index: torch.Tensor, num_nodes: int) -> None:
    """gtlib.nn.GATv2Conv is PyG's GATv2Conv on the core: load PyG's weights, compare."""
    import torch_geometric.nn as pyg_nn

    from gtlib.nn import GATv2Conv

    print(f"\n== GATv2Conv(128, 32, heads=4) with PyG's weights, {num_nodes} nodes ==")
    x = torch.randn(num_nodes, 128, requires_grad=True)
    theirs = pyg_nn.GATv2Conv(128, 32, heads=4)
    ours = GATv2Conv(128, 32, heads=4)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    difference = (ours(x, edge_index) - theirs(x, edge_index)).abs().max().item()
    print(f"  max |gtlib - PyG| = {difference:.1e}")
    for name, layer in (("PyG", theirs), ("gtlib", ours)):
        seconds = time_call(lambda layer=layer: layer(x, edge_index).sum().backward(), repeat=2)
        print(f"  {name:6s} forward + backward: {seconds:.3f} s")


if __name__ == "__main__":
    main()
