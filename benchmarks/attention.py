"""Attention layers, forward + backward: gtlib's core against PyG (and DGL when installed).

Every configuration runs in its own subprocess so peak memory is its own: "peak extra" is the
process's peak RSS minus its RSS after the inputs (and the gtlib pattern) were built. Layers take
``x [N, 128]`` (requires grad) to 4 heads x 32 channels on a random graph with ``E`` edges.

    python benchmarks/attention.py                  # all sizes, default allocator
    python benchmarks/attention.py --sizes 50000:1000000 --repeat 5
    python benchmarks/attention.py --tuned          # MALLOC_MMAP_MAX_=0 for every peer
    python benchmarks/attention.py --sizes 50000:1000000 --tuned --rounds 2   # interleaved

``gtlib_*`` methods are whole attention layers (projections + core) like PyG's; ``core_*``
methods time the core alone (``q, k, v [N, 4, 32]`` requiring grad -> output), which is what the
memory floor refers to: a fused kernel must read a key and a value row per edge forward, and
recompute them plus read a query and an output-gradient row per edge backward, ~3 KB per edge at
4 x 32 float32 channels; the floor is that traffic at the copy bandwidth measured in the same run.
With ``--rounds R`` the whole list runs R times interleaved and each configuration keeps its best.
Writes JSON (``--out``) and prints a table with times, memory and ratios to PyG.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_summary, run_child, time_steps, write_json  # noqa: E402

IN_CHANNELS, HEADS, CHANNELS = 128, 4, 32
SIZES = [(10_000, 200_000), (50_000, 1_000_000), (100_000, 4_000_000)]
METHODS = [
    "pyg_gatv2",
    "pyg_transformer",
    "pyg_softmax_dot",
    "pyg_softmax_gatv2",
    "dgl_gatv2",
    "gtlib_dot_fused",
    "gtlib_dot_sparse",
    "gtlib_dot_stream",
    "gtlib_dot_scatter",
    "gtlib_gatv2_fused",
    "gtlib_gatv2_sparse",
    "gtlib_gatv2_stream",
    "gtlib_gatv2_scatter",
    "core_dot_fused",
    "core_dot_sparse",
    "core_dot_stream",
    "core_gatv2_fused",
    "core_gatv2_sparse",
    "core_gatv2_stream",
]
# Memory-hungry methods skipped at the largest size unless --all.
SKIP_LARGE = {"pyg_softmax_dot", "pyg_softmax_gatv2", "gtlib_dot_scatter", "gtlib_gatv2_scatter"}


def build_layer(method: str, num_nodes: int, edge_index):
    """Returns ``(forward, setup_seconds)``; ``forward()`` runs the layer once."""
    import torch

    if method.startswith("pyg_") and not method.startswith("pyg_softmax"):
        from torch_geometric.nn import GATv2Conv, TransformerConv

        if method == "pyg_gatv2":
            layer = GATv2Conv(IN_CHANNELS, CHANNELS, heads=HEADS, add_self_loops=False)
        else:
            layer = TransformerConv(IN_CHANNELS, CHANNELS, heads=HEADS)
        return (lambda x: layer(x, edge_index)), 0.0

    if method.startswith("pyg_softmax"):
        from torch_geometric.utils import scatter, softmax

        score = method.split("_")[-1]
        lin_q = torch.nn.Linear(IN_CHANNELS, HEADS * CHANNELS)
        lin_k = torch.nn.Linear(IN_CHANNELS, HEADS * CHANNELS)
        lin_v = torch.nn.Linear(IN_CHANNELS, HEADS * CHANNELS)
        att = torch.nn.Parameter(torch.randn(HEADS, CHANNELS) / CHANNELS**0.5)
        src, dst = edge_index

        def pyg_math(x):
            q = lin_q(x).view(-1, HEADS, CHANNELS)
            k = lin_k(x).view(-1, HEADS, CHANNELS)
            v = lin_v(x).view(-1, HEADS, CHANNELS)
            if score == "dot":
                scores = (q[dst] * k[src]).sum(-1) / CHANNELS**0.5
            else:
                hidden = torch.nn.functional.leaky_relu(q[dst] + k[src], 0.2)
                scores = (hidden * att).sum(-1)
            alpha = softmax(scores, dst, num_nodes=num_nodes)
            return scatter(alpha.unsqueeze(-1) * v[src], dst, 0, num_nodes, reduce="sum")

        return pyg_math, 0.0

    if method == "dgl_gatv2":
        import dgl
        from dgl.nn import GATv2Conv as DGLGATv2Conv

        start = time.perf_counter()
        graph = dgl.graph((edge_index[0], edge_index[1]), num_nodes=num_nodes)
        graph.create_formats_()
        setup = time.perf_counter() - start
        layer = DGLGATv2Conv(IN_CHANNELS, CHANNELS, HEADS, allow_zero_in_degree=True)
        return (lambda x: layer(graph, x)), setup

    from gtlib.attention import Pattern, sparse_attention

    kind, score, mode = method.split("_")
    start = time.perf_counter()
    pattern = Pattern.from_edge_index(edge_index, num_nodes)
    if mode == "sparse":
        pattern.transpose_csr()
        pattern.sparse_matrix(torch.zeros(pattern.num_edges))
        pattern.sparse_matrix(torch.zeros(pattern.num_edges), "transpose")
        if not pattern.unique_edges:
            pattern.sparse_matrix(torch.zeros(pattern.deduplicated()[1].numel()), "unique")
    setup = time.perf_counter() - start
    if kind == "core":
        return core_problem(pattern, score, mode), setup
    if score == "dot":  # TransformerConv's layer: query/key/value/skip projections
        lin_q = torch.nn.Linear(IN_CHANNELS, HEADS * CHANNELS)
        lin_k = torch.nn.Linear(IN_CHANNELS, HEADS * CHANNELS)
        lin_v = torch.nn.Linear(IN_CHANNELS, HEADS * CHANNELS)
        lin_skip = torch.nn.Linear(IN_CHANNELS, HEADS * CHANNELS)

        def gtlib_dot(x):
            q, k, v = (lin(x).view(-1, HEADS, CHANNELS) for lin in (lin_q, lin_k, lin_v))
            out = sparse_attention(q, k, v, pattern, mode=mode)
            return out.reshape(-1, HEADS * CHANNELS) + lin_skip(x)

        return gtlib_dot, setup
    # GATv2Conv's layer: lin_l (senders), lin_r (receivers), att, bias
    lin_l = torch.nn.Linear(IN_CHANNELS, HEADS * CHANNELS)
    lin_r = torch.nn.Linear(IN_CHANNELS, HEADS * CHANNELS)
    att = torch.nn.Parameter(torch.randn(HEADS, CHANNELS) / CHANNELS**0.5)
    bias = torch.nn.Parameter(torch.zeros(HEADS * CHANNELS))

    def gtlib_gatv2(x):
        x_l = lin_l(x).view(-1, HEADS, CHANNELS)
        x_r = lin_r(x).view(-1, HEADS, CHANNELS)
        out = sparse_attention(x_r, x_l, x_l, pattern, score="gatv2", att=att, mode=mode)
        return out.reshape(-1, HEADS * CHANNELS) + bias

    return gtlib_gatv2, setup


def core_problem(pattern, score: str, mode: str):
    """The core alone: ``x`` is split into q, k, v ``[N, 4, 32]`` (it holds their gradients)."""
    import torch

    from gtlib.attention import sparse_attention

    att = torch.randn(HEADS, CHANNELS) / CHANNELS**0.5

    def core(x):
        q, k, v = x.view(-1, 3, HEADS, CHANNELS).unbind(1)
        if score == "dot":
            return sparse_attention(q, k, v, pattern, mode=mode)
        return sparse_attention(q, k, v, pattern, score="gatv2", att=att, mode=mode)

    return core


def run_one(method: str, num_nodes: int, num_edges: int, repeat: int) -> dict:
    """Runs in the child process."""
    import torch

    torch.manual_seed(0)
    width = 3 * HEADS * CHANNELS if method.startswith("core") else IN_CHANNELS
    x = torch.randn(num_nodes, width, requires_grad=True)
    edge_index = torch.randint(0, num_nodes, (2, num_edges))
    forward, setup = build_layer(method, num_nodes, edge_index)

    def step() -> None:
        x.grad = None
        forward(x).sum().backward()

    record = {"method": method, "num_nodes": num_nodes, "num_edges": num_edges}
    record.update(time_steps(step, repeat, live=True))
    record.update({"setup_s": setup, "threads": torch.get_num_threads()})
    return record


def copy_bandwidth() -> float:
    """GB/s of a large float32 tensor copy (read + write bytes), best of 5."""
    import torch

    src = torch.randn(64 * 1024 * 1024)  # 256 MB
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def fused_bytes_per_edge() -> int:
    """The memory floor of a fused kernel per edge (4-byte floats): forward reads a key and a
    value row; backward re-reads them (receiver pass) and reads a query and an output-gradient
    row (sender pass)."""
    return 6 * HEADS * CHANNELS * 4


def sparse_dot_bytes_per_edge() -> int:
    """Bytes the sparse dot-product mode must move per edge, forward + backward (4-byte floats).

    Per head: forward SDDMM reads a key row and writes a score, the softmax reads/writes the
    score ~5 times, SpMM reads a value row, a weight and an index; backward SDDMM reads a value
    row, SpMMs for dq, dk, dv read a key, a query and an output-gradient row, with a weight and an
    index each, and the transposes gather two [E] arrays.
    """
    row = CHANNELS * 4
    per_head = (row + 4 + 4) + 5 * 4 + (row + 8) + (row + 4 + 4) + 3 * (row + 8) + 2 * 8
    return HEADS * per_head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", help="N:E pairs (default: the three standard)")
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tuned", action="store_true", help="MALLOC_MMAP_MAX_=0 for every run")
    parser.add_argument("--all", action="store_true", help="run every method at every size")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (best kept)")
    parser.add_argument("--out", default="benchmarks/results/attention.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        method, n, e = args.child.split(":")
        print(json.dumps(run_one(method, int(n), int(e), args.repeat)))
        return

    sizes = [tuple(map(int, s.split(":"))) for s in args.sizes] if args.sizes else SIZES
    best: dict[tuple, dict] = {}
    for _ in range(args.rounds):
        for num_nodes, num_edges in sizes:
            for method in args.methods:
                if num_edges >= 4_000_000 and method in SKIP_LARGE and not args.all:
                    continue
                spec = f"{method}:{num_nodes}:{num_edges}"
                record, error = run_child(__file__, spec, args.repeat, args.tuned)
                if record is None:
                    print(f"{method:22s} N={num_nodes:>7d} E={num_edges:>8d}  skipped: {error}")
                    continue
                key = (method, num_nodes, num_edges)
                if key not in best or record["time_min_s"] < best[key]["time_min_s"]:
                    best[key] = record
                print(
                    f"{method:22s} N={num_nodes:>7d} E={num_edges:>8d}  "
                    f"{record['time_min_s']:7.3f} s  {record['peak_extra_bytes'] / 1e9:6.2f} GB  "
                    f"(setup {record['setup_s']:.2f} s, load {record['load_before']:.1f})",
                    flush=True,
                )

    results = list(best.values())
    summary = machine_summary(args.tuned)
    summary["copy_bandwidth_GBps"] = copy_bandwidth()
    summary["sparse_dot_bytes_per_edge"] = sparse_dot_bytes_per_edge()
    summary["fused_bytes_per_edge"] = fused_bytes_per_edge()
    summary["rounds"] = args.rounds
    summary["results"] = results
    print_table(summary)
    write_json(args.out, summary)


def print_table(summary: dict) -> None:
    results = summary["results"]
    sizes = sorted({(r["num_nodes"], r["num_edges"]) for r in results}, key=lambda s: s[1])
    by_key = {(r["method"], r["num_nodes"], r["num_edges"]): r for r in results}
    print(f"\n{summary['date']}, {summary['machine']}, allocator: {summary['allocator']}")
    header = "| method | " + " | ".join(f"{n // 1000}k / {e / 1e6:g}M" for n, e in sizes) + " |"
    print(header)
    print("|---" * (len(sizes) + 1) + "|")
    for method in METHODS:
        cells = []
        for n, e in sizes:
            r = by_key.get((method, n, e))
            if r is None:
                cells.append("-")
                continue
            cell = f"{r['time_min_s']:.2f} s, {r['peak_extra_bytes'] / 1e9:.2f} GB"
            peer = "pyg_transformer" if "_dot" in method else "pyg_gatv2"
            base = by_key.get((peer, n, e))
            if method.startswith("gtlib") and base:
                time_ratio = r["time_min_s"] / base["time_min_s"]
                memory_ratio = r["peak_extra_bytes"] / max(base["peak_extra_bytes"], 1)
                cell += f" ({time_ratio:.2f}x / {memory_ratio:.2f}x)"
            cells.append(cell)
        if any(c != "-" for c in cells):
            print(f"| {method} | " + " | ".join(cells) + " |")
    print("(ratios: gtlib time / memory against PyG TransformerConv for dot, GATv2Conv for gatv2)")
    print("live tensors at a step's peak (PyTorch's CPU allocator, one profiled step):")
    for r in sorted(results, key=lambda r: (r["num_edges"], r["method"])):
        if not r["method"].startswith("gtlib") or "live_step_peak_bytes" not in r:
            continue
        peer = "pyg_transformer" if "_dot" in r["method"] else "pyg_gatv2"
        base = by_key.get((peer, r["num_nodes"], r["num_edges"]))
        mine = r["live_step_peak_bytes"]
        line = f"  {r['method']:22s} E={r['num_edges']:>8d}: {mine / 1e9:.2f} GB"
        if base and base.get("live_step_peak_bytes"):
            theirs = base["live_step_peak_bytes"]
            line += f", {peer} {theirs / 1e9:.2f} GB, {mine / theirs:.2f}x"
        print(line)
    bandwidth = summary["copy_bandwidth_GBps"]
    print(
        f"copy bandwidth {bandwidth:.1f} GB/s; fused floor {summary['fused_bytes_per_edge']} B/edge"
    )
    for r in sorted(results, key=lambda r: (r["num_edges"], r["method"])):
        if not r["method"].startswith(("gtlib", "core")):
            continue
        floor = summary["fused_bytes_per_edge"] * r["num_edges"] / (bandwidth * 1e9)
        print(
            f"{r['method']:22s} E={r['num_edges']:>8d}: {r['time_min_s']:.3f} s = "
            f"{r['time_min_s'] / floor:.2f}x the floor ({floor:.3f} s), "
            f"{floor / r['time_min_s']:.0%} of copy bandwidth"
        )


if __name__ == "__main__":
    main()
