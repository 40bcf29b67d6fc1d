"""gtlib on one GPU against PyG: forward + backward time and peak memory (one prepared run).

    python benchmarks/gpu.py                      # everything, ~2-4 minutes on one GPU
    python benchmarks/gpu.py --sizes 50000:1000000 --repeat 5 --out /tmp/gpu.json

1. **Agreement first**: gtlib's ``GATv2Conv`` and ``TransformerConv`` (Triton kernels, chosen by
   ``mode="auto"`` on CUDA) against PyG's with copied weights (outputs and input gradients), the
   Triton core against the scatter reference, and ``GPSConv`` against PyG's on one graph.
   The run stops if they disagree.
2. **Layers** at (nodes, edges) = (50k, 1M), (100k, 4M), (1M, 16M), ``x [N, 128]``, 4 heads x 32,
   PyG's defaults (self-loops added): PyG, gtlib (Triton), and gtlib forced onto the plain-torch
   streaming mode. Time is the median of ``--repeat`` forward+backward steps after a warm-up;
   memory is ``torch.cuda.max_memory_allocated`` above the inputs and parameters. A run that
   runs out of memory is recorded as such.
3. **GPSConv** (GINConv local, multihead global) on a batch of mixed graph sizes (64 graphs of 8
   nodes, 4 of 2,000, 16 of 300): PyG pads every graph to the largest; gtlib attends within
   each graph (one SDPA call per block size; ``gtlib_flex``: one ``flex_attention`` call).

Writes JSON (``--out``, default ``benchmarks/results/gpu.json``) and prints a table of ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import write_json  # noqa: E402

IN_CHANNELS, HEADS, CHANNELS = 128, 4, 32
SIZES = [(50_000, 1_000_000), (100_000, 4_000_000), (1_000_000, 16_000_000)]
GPS_SIZES, GPS_CHANNELS = [8] * 64 + [2000] * 4 + [300] * 16, 64
LAYERS = {"gatv2": "GATv2Conv", "transformer": "TransformerConv"}
DEVICE = "cuda"  # --smoke: "cpu", tiny sizes, to check the script's plumbing without a GPU


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _allocated() -> int:
    return torch.cuda.memory_allocated() if DEVICE == "cuda" else 0


def measure(step, repeat: int) -> dict:
    """Median step time and peak memory above what was allocated before the first step."""
    _sync()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = _allocated()
    try:
        step()  # warm-up: compiles kernels, fills the caches
        _sync()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            step()
            _sync()
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"oom": True}
    peak = torch.cuda.max_memory_allocated() - base if DEVICE == "cuda" else 0
    return {"seconds": statistics.median(times), "all_seconds": times, "peak_bytes": peak}


def make_conv(layer: str, impl: str):
    if impl == "pyg":
        import torch_geometric.nn as module
    else:
        import gtlib.nn as module
    return getattr(module, LAYERS[layer])(IN_CHANNELS, CHANNELS, heads=HEADS).to(DEVICE)


class forced_mode:
    """Runs gtlib's convolutions on another core mode (e.g. the plain-torch streaming one)."""

    def __init__(self, mode: str | None) -> None:
        self.mode = mode

    def __enter__(self):
        from gtlib.nn import _conv_common

        self.saved = _conv_common.attention_mode
        if self.mode is not None:
            _conv_common.attention_mode = lambda returns_weights: self.mode
        return self

    def __exit__(self, *exc) -> None:
        from gtlib.nn import _conv_common

        _conv_common.attention_mode = self.saved


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def check_agreement(num_nodes: int = 20_000, num_edges: int = 300_000) -> dict:
    """gtlib vs PyG with copied weights, and the Triton core vs the scatter reference."""
    from gtlib.attention import Pattern, sparse_attention

    torch.manual_seed(0)
    report = {}
    x = torch.randn(num_nodes, IN_CHANNELS, device=DEVICE)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), device=DEVICE)
    for layer in LAYERS:
        pyg, ours = make_conv(layer, "pyg"), make_conv(layer, "gtlib")
        ours.load_state_dict(pyg.state_dict(), strict=True)
        outputs, grads = [], []
        for conv in (pyg, ours):
            xi = x.clone().requires_grad_()
            out = conv(xi, edge_index)
            out.backward(torch.ones_like(out))
            outputs.append(out.detach())
            grads.append(xi.grad)
        report[layer] = {"output": relative_error(outputs[1], outputs[0]),
                         "grad_x": relative_error(grads[1], grads[0])}  # fmt: skip
    pattern = Pattern.from_edge_index(edge_index, num_nodes)
    q, k, v = (torch.randn(num_nodes, HEADS, CHANNELS, device=DEVICE, requires_grad=True)
               for _ in range(3))  # fmt: skip
    for score in ("dot", "gatv2"):
        att = torch.randn(HEADS, CHANNELS, device=DEVICE) if score == "gatv2" else None
        fast = "triton" if DEVICE == "cuda" else "auto"
        a = sparse_attention(q, k, v, pattern, score=score, att=att, mode=fast)
        b = sparse_attention(q, k, v, pattern, score=score, att=att, mode="scatter")
        ga = torch.autograd.grad(a.sum(), (q, k, v))
        gb = torch.autograd.grad(b.sum(), (q, k, v))
        report[f"core_{score}"] = {
            "output": relative_error(a, b),
            "grads": max(relative_error(x, y) for x, y in zip(ga, gb, strict=True)),
        }
    gps = gps_problem("pyg", single=True), gps_problem("gtlib", single=True)
    gps[1][2].load_state_dict(gps[0][2].state_dict(), strict=True)
    gps_out = [forward().detach() for _, forward, _ in gps]
    report["gps"] = {"output": relative_error(gps_out[1], gps_out[0])}
    return report


def gps_problem(impl: str, single: bool = False):
    from torch_geometric.nn import GINConv

    torch.manual_seed(0)
    sizes_list = [300] if single else GPS_SIZES
    sizes = torch.tensor(sizes_list)
    batch = torch.repeat_interleave(torch.arange(len(sizes_list)), sizes).to(DEVICE)
    starts = (torch.cumsum(sizes, 0) - sizes).tolist()
    edges = []
    for start, size in zip(starts, sizes_list, strict=True):  # a ring plus random chords
        ring = torch.arange(size)
        chords = torch.randint(0, size, (2, 2 * size))
        local = torch.cat([torch.stack([ring, (ring + 1) % size]), chords], 1)
        edges.append(torch.cat([local, local.flip(0)], 1) + start)
    edge_index = torch.cat(edges, 1).to(DEVICE)
    x = torch.randn(batch.numel(), GPS_CHANNELS, device=DEVICE, requires_grad=True)
    mlp = torch.nn.Sequential(torch.nn.Linear(GPS_CHANNELS, GPS_CHANNELS), torch.nn.ReLU(),
                              torch.nn.Linear(GPS_CHANNELS, GPS_CHANNELS))  # fmt: skip
    if impl == "pyg":
        from torch_geometric.nn import GPSConv
    else:
        from gtlib.nn import GPSConv
    layer = GPSConv(GPS_CHANNELS, GINConv(mlp), heads=HEADS).to(DEVICE).eval()
    return x, lambda: layer(x, edge_index, batch), layer


def run_layers(sizes, repeat: int, skip_pyg_above: int) -> list[dict]:
    records = []
    for num_nodes, num_edges in sizes:
        torch.manual_seed(0)
        x = torch.randn(num_nodes, IN_CHANNELS, device=DEVICE, requires_grad=True)
        edge_index = torch.randint(0, num_nodes, (2, num_edges), device=DEVICE)
        for layer in LAYERS:
            for impl, mode in (("pyg", None), ("gtlib", None), ("gtlib_stream", "stream")):
                record = {"layer": layer, "impl": impl, "nodes": num_nodes, "edges": num_edges}
                if impl == "pyg" and num_edges > skip_pyg_above:
                    record["skipped"] = True
                    records.append(record)
                    continue
                conv = make_conv(layer, "pyg" if impl == "pyg" else "gtlib")

                def step(conv=conv, x=x, edge_index=edge_index) -> None:
                    x.grad = None
                    conv(x, edge_index).sum().backward()

                with forced_mode(mode):
                    record.update(measure(step, repeat))
                del conv
                records.append(record)
                print(json.dumps(record), flush=True)
    return records


def run_gps(repeat: int) -> list[dict]:
    records = []
    for impl, flex in (("pyg", None), ("gtlib", None), ("gtlib_flex", True)):
        if flex and DEVICE == "cpu":  # --smoke: flex has no backward on the CPU
            continue
        x, forward, layer = gps_problem("pyg" if impl == "pyg" else "gtlib")
        layer.train()

        def step(x=x, forward=forward) -> None:
            x.grad = None
            forward().sum().backward()

        record = {"layer": "gps_mixed", "impl": impl, "nodes": x.size(0)}
        with forced_flex(flex):
            record.update(measure(step, repeat))
        records.append(record)
        print(json.dumps(record), flush=True)
    return records


class forced_flex:
    """``flex=True`` sends block patterns to one ``flex_attention`` call (the default is SDPA,
    one call per block size)."""

    def __init__(self, flex: bool | None) -> None:
        self.flex = flex

    def __enter__(self):
        from gtlib.attention.backends import dense

        self.saved = dense.dense_attention
        if self.flex is not None:
            saved, flex = self.saved, self.flex

            def patched(*args, **kwargs):
                kwargs["flex"] = flex
                return saved(*args, **kwargs)

            dense.dense_attention = patched
            import gtlib.attention.engine as engine

            self.engine_saved = engine.dense_attention
            engine.dense_attention = patched
        return self

    def __exit__(self, *exc) -> None:
        from gtlib.attention.backends import dense

        dense.dense_attention = self.saved
        if self.flex is not None:
            import gtlib.attention.engine as engine

            engine.dense_attention = self.engine_saved


def print_table(summary: dict) -> None:
    print(f"\n{summary['device']}, torch {summary['torch']}")
    rows = {}
    for r in summary["layers"] + summary["gps"]:
        rows[(r["layer"], r.get("nodes"), r.get("edges"), r["impl"])] = r

    def text(r) -> str:
        if r is None or r.get("skipped"):
            return "skipped"
        if r.get("oom"):
            return "out of memory"
        return f"{r['seconds'] * 1e3:8.1f} ms {r['peak_bytes'] / 2**30:7.2f} GiB"

    print(
        f"{'layer':<12}{'size':>14}  {'impl':<13}{'time, peak memory':>28}  vs PyG (time, memory)"
    )
    for (layer, nodes, edges, impl), r in rows.items():
        size = f"{nodes // 1000}k/{edges / 1e6:g}M" if edges else f"{nodes} nodes"
        base = rows.get((layer, nodes, edges, "pyg"))
        ratio = ""
        if impl != "pyg" and base and "seconds" in base and "seconds" in r:
            ratio = (f"{r['seconds'] / base['seconds']:.2f}x, "
                     f"{r['peak_bytes'] / max(base['peak_bytes'], 1):.2f}x")  # fmt: skip
        elif impl != "pyg" and base and base.get("oom") and "seconds" in r:
            ratio = "PyG out of memory"
        print(f"{layer:<12}{size:>14}  {impl:<13}{text(r):>28}  {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="*", default=[f"{n}:{e}" for n, e in SIZES])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-pyg-above", type=int, default=math.inf,
                        help="edges above which PyG is not run")  # fmt: skip
    parser.add_argument("--out", default=None,
                        help="JSON (default: results/gpu.json; with --smoke a temporary "
                        "file, never the measured results)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes on the CPU: checks the script itself")  # fmt: skip
    args = parser.parse_args()
    global DEVICE, GPS_SIZES
    if args.smoke:
        DEVICE, GPS_SIZES = "cpu", [8] * 4 + [50] * 2
        args.sizes = ["2000:20000"]
        if args.out is None:
            args.out = str(Path(tempfile.gettempdir()) / "gtlib-gpu-smoke.json")
    elif not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device (or --smoke)")
    if args.out is None:
        args.out = str(Path(__file__).parent / "results" / "gpu.json")
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None

    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes]
    started = time.perf_counter()
    agreement = check_agreement(*((2000, 20000) if args.smoke else ()))
    print("agreement (max relative error):", json.dumps(agreement), flush=True)
    worst = max(v for entry in agreement.values() for v in entry.values())
    if worst > 1e-3:
        sys.exit(f"gtlib and the references disagree (max relative error {worst:.2e})")
    summary = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke run)",
        "torch": torch.__version__,
        "triton": triton_version,
        "agreement": agreement,
        "layers": run_layers(sizes, args.repeat, args.skip_pyg_above),
        "gps": run_gps(args.repeat),
    }
    summary["seconds"] = time.perf_counter() - started
    write_json(args.out, summary)
    print_table(summary)


if __name__ == "__main__":
    main()
