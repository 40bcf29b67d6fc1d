"""gtlib layers against their PyG twins (and DGL's GATv2Conv), forward + backward.

Every configuration runs in its own subprocess; memory is peak RSS above the inputs.

    python benchmarks/layers.py                        # all layers
    python benchmarks/layers.py --layers gatv2 gps --repeat 5
    python benchmarks/layers.py --tuned                # MALLOC_MMAP_MAX_=0 for every run
    python benchmarks/layers.py --release-memory       # GTLIB_RELEASE_MEMORY=1 for gtlib's runs

GATv2Conv, TransformerConv and GATConv: 50k nodes, 1M random edges, x [N, 128], 4 heads x 32,
PyG's defaults (self-loops added). GPSConv (multihead, GINConv as the local conv): a batch of
64 graphs of 8 nodes and 4 graphs of 2,000 nodes, 64 channels, 4 heads: PyG pads every graph to
2,000 nodes, gtlib attends within each graph only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_summary, run_child, time_steps, write_json  # noqa: E402

LAYERS = {
    "gatv2": ["pyg", "gtlib", "dgl"],
    "transformer": ["pyg", "gtlib"],
    "gat": ["pyg", "gtlib"],
    "gps": ["pyg", "gtlib"],
    # one graph of 100k nodes: gtlib's GPS with Exphormer attention; PyG's GPSConv multihead for
    # comparison only with --layers exphormer_pyg (quadratic: ~470 s per step here)
    "exphormer": ["gtlib"],
    "exphormer_pyg": ["pyg"],
}
EXPHORMER_NODES, EXPHORMER_EDGES = 100_000, 500_000
NUM_NODES, NUM_EDGES, IN_CHANNELS, HEADS, CHANNELS = 50_000, 1_000_000, 128, 4, 32
GPS_SIZES, GPS_CHANNELS = [8] * 64 + [2000] * 4, 64


def conv_problem(layer: str, impl: str):
    import torch

    torch.manual_seed(0)
    x = torch.randn(NUM_NODES, IN_CHANNELS, requires_grad=True)
    edge_index = torch.randint(0, NUM_NODES, (2, NUM_EDGES))
    if impl == "dgl":
        import dgl
        from dgl.nn import GATv2Conv as DGLGATv2Conv

        graph = dgl.add_self_loop(
            dgl.remove_self_loop(dgl.graph(tuple(edge_index), num_nodes=NUM_NODES))
        )
        conv = DGLGATv2Conv(IN_CHANNELS, CHANNELS, HEADS)
        return x, lambda: conv(graph, x)
    if impl == "pyg":
        import torch_geometric.nn as module
    else:
        import gtlib.nn as module
    conv_class = {"gatv2": "GATv2Conv", "transformer": "TransformerConv", "gat": "GATConv"}[layer]
    conv = getattr(module, conv_class)(IN_CHANNELS, CHANNELS, heads=HEADS)
    return x, lambda: conv(x, edge_index)


def gps_problem(impl: str):
    import torch
    from torch_geometric.nn import GINConv

    torch.manual_seed(0)
    sizes = torch.tensor(GPS_SIZES)
    batch = torch.repeat_interleave(torch.arange(len(GPS_SIZES)), sizes)
    starts = torch.cumsum(sizes, 0) - sizes
    edges = []
    for start, size in zip(starts.tolist(), GPS_SIZES):  # a ring plus random chords per graph
        ring = torch.arange(size)
        chords = torch.randint(0, size, (2, 2 * size))
        local = torch.cat([torch.stack([ring, (ring + 1) % size]), chords], 1)
        edges.append(torch.cat([local, local.flip(0)], 1) + start)
    edge_index = torch.cat(edges, 1)
    x = torch.randn(batch.numel(), GPS_CHANNELS, requires_grad=True)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(GPS_CHANNELS, GPS_CHANNELS),
        torch.nn.ReLU(),
        torch.nn.Linear(GPS_CHANNELS, GPS_CHANNELS),
    )
    if impl == "pyg":
        from torch_geometric.nn import GPSConv
    else:
        from gtlib.nn import GPSConv
    layer = GPSConv(GPS_CHANNELS, GINConv(mlp), heads=HEADS)
    return x, lambda: layer(x, edge_index, batch)


def exphormer_problem(impl: str):
    """GPS (GINConv local) on one graph: Exphormer attention (gtlib) or dense multihead (PyG)."""
    import torch
    from torch_geometric.nn import GINConv

    torch.manual_seed(0)
    x = torch.randn(EXPHORMER_NODES, GPS_CHANNELS, requires_grad=True)
    edge_index = torch.randint(0, EXPHORMER_NODES, (2, EXPHORMER_EDGES))
    batch = torch.zeros(EXPHORMER_NODES, dtype=torch.long)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(GPS_CHANNELS, GPS_CHANNELS),
        torch.nn.ReLU(),
        torch.nn.Linear(GPS_CHANNELS, GPS_CHANNELS),
    )
    if impl == "pyg":
        from torch_geometric.nn import GPSConv

        layer = GPSConv(GPS_CHANNELS, GINConv(mlp), heads=HEADS)
    else:
        from gtlib.nn import GPSConv

        layer = GPSConv(GPS_CHANNELS, GINConv(mlp), heads=HEADS, attn_type="exphormer",
                        attn_kwargs={"degree": 3, "num_virtual": 1})  # fmt: skip
    return x, lambda: layer(x, edge_index, batch)


def run_one(layer: str, impl: str, repeat: int) -> dict:
    import torch

    if layer.startswith("exphormer"):
        x, forward = exphormer_problem(impl)
    else:
        x, forward = gps_problem(impl) if layer == "gps" else conv_problem(layer, impl)

    def step() -> None:
        x.grad = None
        forward().sum().backward()

    record = {"layer": layer, "impl": impl}
    record.update(time_steps(step, repeat, live=True))
    record["threads"] = torch.get_num_threads()
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layers", nargs="*", default=[name for name in LAYERS if name != "exphormer_pyg"]
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tuned", action="store_true", help="MALLOC_MMAP_MAX_=0 for every run")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (best kept)")
    parser.add_argument(
        "--release-memory",
        action="store_true",
        help="GTLIB_RELEASE_MEMORY=1 for gtlib's runs (free heap pages released each backward)",
    )
    parser.add_argument("--out", default="benchmarks/results/layers.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        layer, impl = args.child.split(":")
        print(json.dumps(run_one(layer, impl, args.repeat)))
        return

    best: dict[tuple, dict] = {}
    for _ in range(args.rounds):
        for layer in args.layers:
            for impl in LAYERS[layer]:
                release = args.release_memory and impl == "gtlib"
                extra = {"GTLIB_RELEASE_MEMORY": "1"} if release else {}
                record, error = run_child(
                    __file__, f"{layer}:{impl}", args.repeat, args.tuned, extra
                )
                if record is None:
                    print(f"{layer:12s} {impl:6s} skipped: {error}")
                    continue
                if (layer, impl) not in best or (
                    record["time_min_s"] < best[(layer, impl)]["time_min_s"]
                ):
                    best[(layer, impl)] = record
                print(
                    f"{layer:12s} {impl:6s} {record['time_min_s']:7.3f} s  "
                    f"{record['peak_extra_bytes'] / 1e9:6.2f} GB  "
                    f"(load {record['load_before']:.1f})",
                    flush=True,
                )
    results = list(best.values())
    summary = machine_summary(args.tuned)
    summary["rounds"] = args.rounds
    summary["release_memory"] = args.release_memory
    summary["results"] = results
    print(f"\n{summary['date']}, {summary['machine']}, allocator: {summary['allocator']}")
    print("| layer | PyG | gtlib | gtlib / PyG time, memory | DGL |")
    print("|---|---|---|---|---|")
    by_key = {(r["layer"], r["impl"]): r for r in results}

    for layer in args.layers:
        cells = []
        for impl in ("pyg", "gtlib"):
            r = by_key.get((layer, impl))
            cells.append(
                f"{r['time_min_s']:.2f} s, {r['peak_extra_bytes'] / 1e9:.2f} GB" if r else "-"
            )
        pyg, ours, dgl = (by_key.get((layer, impl)) for impl in ("pyg", "gtlib", "dgl"))
        ratio = "-"
        if pyg and ours:
            ratio = (
                f"{ours['time_min_s'] / pyg['time_min_s']:.2f}x, "
                f"{ours['peak_extra_bytes'] / max(pyg['peak_extra_bytes'], 1):.2f}x"
            )
        dgl_cell = (
            f"{dgl['time_min_s']:.2f} s, {dgl['peak_extra_bytes'] / 1e9:.2f} GB" if dgl else "-"
        )
        print(f"| {layer} | {cells[0]} | {cells[1]} | {ratio} | {dgl_cell} |")
    memory_lines = {
        "step_peak_extra_bytes": "steady-state step memory (peak RSS of the timed steps above "
        "the RSS after warm-up):",
        "live_step_peak_bytes": "live tensors at a step's peak (PyTorch's CPU allocator, one "
        "profiled step):",
    }
    for field, title in memory_lines.items():
        print(title)
        for layer in args.layers:
            pyg, ours = (by_key.get((layer, impl)) for impl in ("pyg", "gtlib"))
            if pyg and ours and pyg.get(field) and ours.get(field):
                mine, theirs = ours[field], pyg[field]
                print(f"  {layer}: gtlib {mine / 1e9:.2f} GB, PyG {theirs / 1e9:.2f} GB, "
                      f"{mine / theirs:.2f}x")  # fmt: skip
    write_json(args.out, summary)


if __name__ == "__main__":
    main()
