"""gtlib quickstart: the sparse-attention core, a graph layer, a neural operator and an EPR.

Checks every mode against a dense masked-softmax reference (values and gradients), times
forward + backward on a larger random graph against PyG's softmax + scatter math, swaps
PyG's GATv2Conv for gtlib's (same weights, same numbers), trains a Fourier neural operator on
freshly solved Darcy problems and evaluates it zero-shot on a finer grid, and learns the
entropy production rate of a rotationally driven particle from stationary samples.

    python examples/quickstart.py            # ~2 minutes on 2 cores
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
    operator_section(small=args.small)
    entropy_section(small=args.small)


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


def operator_section(small: bool) -> None:
    """Solve Darcy problems, train gtlib.operators.FNO, evaluate at the training grid and finer."""
    from gtlib.datasets.generate import darcy
    from gtlib.operators import FNO, LpLoss

    n_train, n_test, epochs = (100, 20, 8) if small else (200, 40, 15)
    print(f"\n== FNO on Darcy flow: {n_train} solved 33x33 problems, {epochs} epochs ==")
    coarse = darcy(n_train + n_test, 33, seed=0, progress=False)
    fine = darcy(n_test, 65, seed=1, progress=False)

    def tensors(arrays):
        return (torch.from_numpy(arrays["coefficient"]).unsqueeze(1),
                torch.from_numpy(arrays["solution"]).unsqueeze(1))  # fmt: skip

    a, u = tensors(coarse)
    a_mean, a_std, u_scale = a[:n_train].mean(), a[:n_train].std(), u[:n_train].std()
    model = FNO(1, 1, n_modes=(12, 12), hidden_channels=24, n_layers=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * (n_train // 10))
    relative_l2 = LpLoss(d=2, p=2)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in torch.randperm(n_train).split(10):
            optimizer.zero_grad()
            loss = relative_l2(model((a[batch] - a_mean) / a_std) * u_scale, u[batch])
            loss.backward()
            optimizer.step()
            scheduler.step()
    print(f"  trained in {time.perf_counter() - start:.1f} s")
    with torch.no_grad():
        error = relative_l2(model((a[n_train:] - a_mean) / a_std) * u_scale, u[n_train:])
        a_fine, u_fine = tensors(fine)
        zero_shot = relative_l2(model((a_fine - a_mean) / a_std) * u_scale, u_fine)
    print(f"  test relative L2 at 33x33: {error.item():.4f}")
    print(f"  zero-shot relative L2 at 65x65 (same weights): {zero_shot.item():.4f}")


def entropy_section(small: bool) -> None:
    """Learn the score of a rotationally driven particle; its EPR against the closed form."""
    from gtlib.entropy import entropy_production, reference, train_score
    from gtlib.nn import MLPScore

    system = reference.rotating_particle(k=1.0, a=2.0, d=1.0)
    print(f"\n== entropy production of a rotationally driven particle (exact: {system.sigma}) ==")
    generator = torch.Generator().manual_seed(0)
    samples = reference.stationary_sample_linear(system.A, system.D, 200_000, generator).float()
    held_out = reference.stationary_sample_linear(system.A, system.D, 100_000, generator).float()
    A, D = system.A.float(), system.D.diagonal().float()

    def drift(x: torch.Tensor) -> torch.Tensor:
        return x @ A.T

    model = MLPScore(2, hidden_channels=32, drift=drift, diffusion=D)
    steps = 300 if small else 600
    start = time.perf_counter()
    train_score(model, samples, sigma=0.02, steps=steps, batch_size=1024, progress=False)
    estimate = entropy_production(held_out, drift, model, D)
    print(f"  denoising score matching, {steps} steps: {time.perf_counter() - start:.1f} s")
    print(
        f"  learned EPR {estimate.total:.3f} +- {estimate.stderr:.3f} "
        f"({100 * (estimate.total / system.sigma - 1):+.1f}% vs the closed form)"
    )


if __name__ == "__main__":
    main()
