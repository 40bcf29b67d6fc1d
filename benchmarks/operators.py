"""Neural operators, forward + backward: gtlib against neuraloperator (``neuralop``).

Every configuration runs in its own subprocess (with a time limit) so peak memory is its own:
"peak extra" is the process's peak RSS minus its RSS after the inputs were built.

* ``fno``: 2-D FNO, modes 12, width 32, 4 layers, batch 20, 1 -> 1 channels, at 64x64 and
  128x128. neuralop's FNO is configured close to gtlib's (no per-layer channel MLP, one-layer
  lifting, projection width 128); the parameter counts are recorded.
* ``spectral``: one SpectralConv 32 -> 32 channels, modes (12, 12), batch 20.
* ``gno``: the kernel integral on ``N`` random points in ``[0, 1]^3`` (queries = inputs), radius
  for ~30 neighbours, 16 channels, kernel MLP 6 -> 64 -> 64 -> 16 (raw coordinates, no
  sinusoidal embedding), ``"linear"`` transform, mean over neighbours. Neighbourhoods are built
  once outside the timing and given to both (neuralop's own search is an O(N^2) ``cdist``);
  neuralop runs its ``IntegralTransform`` with the plain-torch ``segment_csr`` (torch-scatter is
  not installed), whose per-receiver Python loop is quadratic in backward; a configuration that
  exceeds the time limit is recorded as a timeout, and larger sizes of that peer are skipped.

    python benchmarks/operators.py                      # everything, default allocator
    python benchmarks/operators.py --groups gno --timeout 120
    python benchmarks/operators.py --tuned              # MALLOC_MMAP_MAX_=0 for every run

Writes JSON (``--out``) and prints a table with times, memory and ratios gtlib / neuralop.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import load_average, machine_summary, time_steps, write_json  # noqa: E402

BATCH, MODES, WIDTH, LAYERS = 20, (12, 12), 32, 4
GNO_CHANNELS, GNO_HIDDEN, GNO_NEIGHBOURS = 16, 64, 30
CONFIGS = {
    "fno": [64, 128],
    "spectral": [64, 128],
    "gno": [5_000, 20_000, 100_000],
}
IMPLS = ["gtlib", "neuralop"]


def fno_problem(impl: str, size: int):
    import torch

    x = torch.randn(BATCH, 1, size, size, requires_grad=True)
    if impl == "gtlib":
        from gtlib.operators import FNO

        model = FNO(1, 1, MODES, hidden_channels=WIDTH, n_layers=LAYERS, projection_channels=128)
    else:
        from neuralop.models import FNO

        model = FNO(
            MODES,
            1,
            1,
            WIDTH,
            n_layers=LAYERS,
            lifting_channel_ratio=1,
            projection_channel_ratio=4,
            use_channel_mlp=False,
        )
    return x, model, lambda: model(x)


def spectral_problem(impl: str, size: int):
    import torch

    x = torch.randn(BATCH, WIDTH, size, size, requires_grad=True)
    if impl == "gtlib":
        from gtlib.operators import SpectralConv

        model = SpectralConv(WIDTH, WIDTH, MODES)
    else:
        from neuralop.layers.spectral_convolution import SpectralConv

        model = SpectralConv(WIDTH, WIDTH, MODES)
    return x, model, lambda: model(x)


def gno_radius(num_points: int) -> float:
    return (3 * GNO_NEIGHBOURS / (4 * 3.141592653589793 * num_points)) ** (1 / 3)


def gno_problem(impl: str, num_points: int):
    import torch

    from gtlib.operators.gno import GNO

    pos = torch.rand(num_points, 3)
    f = torch.randn(num_points, GNO_CHANNELS, requires_grad=True)
    radius = gno_radius(num_points)
    layers = [GNO_HIDDEN, GNO_HIDDEN]
    start = time.perf_counter()
    gno = GNO(
        GNO_CHANNELS,
        GNO_CHANNELS,
        3,
        radius,
        channel_mlp_layers=layers,
        pos_embedding_type=None,
        reduction="mean",
    )
    pattern = gno.neighbors(y=pos, x=pos)
    setup = time.perf_counter() - start
    info = {"num_edges": pattern.num_edges, "setup_s": setup, "radius": radius}
    if impl == "gtlib":
        return f, gno, (lambda: gno(y=pos, x=pos, f_y=f, pattern=pattern)), info

    from neuralop.layers.gno_block import GNOBlock

    block = GNOBlock(
        GNO_CHANNELS,
        GNO_CHANNELS,
        3,
        radius,
        reduction="mean",
        pos_embedding_type=None,
        channel_mlp_layers=list(layers),
        use_torch_scatter_reduce=False,
        use_open3d_neighbor_search=False,
    )
    neighbors = {"neighbors_index": pattern.col, "neighbors_row_splits": pattern.ptr}
    transform = block.integral_transform
    return f, block, (lambda: transform(y=pos, neighbors=neighbors, x=pos, f_y=f)), info


def run_one(group: str, impl: str, size: int, repeat: int) -> dict:
    """Runs in the child process."""
    import torch

    torch.manual_seed(0)
    info = {}
    if group == "gno":
        x, model, forward, info = gno_problem(impl, size)
    elif group == "fno":
        x, model, forward = fno_problem(impl, size)
    else:
        x, model, forward = spectral_problem(impl, size)

    def step() -> None:
        x.grad = None
        model.zero_grad(set_to_none=True)
        forward().sum().backward()

    record = {"group": group, "impl": impl, "size": size, **info}
    record.update(time_steps(step, repeat))
    record["params"] = sum(p.numel() for p in model.parameters())
    record["threads"] = torch.get_num_threads()
    return record


def run_child(spec: str, repeat: int, tuned: bool, timeout: float) -> tuple[dict | None, str]:
    env = dict(os.environ)
    if tuned:
        env["MALLOC_MMAP_MAX_"] = "0"
    load = load_average()
    cmd = [sys.executable, __file__, "--child", spec, "--repeat", str(repeat)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {timeout:.0f} s"
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or ["failed"])[-1]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    record["load_before"] = load
    return record, ""


def describe(group: str, size: int) -> str:
    if group == "gno":
        return f"N={size}"
    return f"{size}x{size}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", nargs="*", default=list(CONFIGS))
    parser.add_argument("--impls", nargs="*", default=IMPLS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per configuration")
    parser.add_argument("--tuned", action="store_true", help="MALLOC_MMAP_MAX_=0 for every run")
    parser.add_argument("--out", default="benchmarks/results/operators-default.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        group, impl, size = args.child.split(":")
        print(json.dumps(run_one(group, impl, int(size), args.repeat)))
        return

    results, failures = [], []
    for group in args.groups:
        timed_out = set()
        for size in CONFIGS[group]:
            for impl in args.impls:
                label = f"{group:8s} {impl:8s} {describe(group, size):>9s}"
                if impl in timed_out:
                    failures.append(
                        {"group": group, "impl": impl, "size": size, "error": "skipped"}
                    )
                    print(f"{label}  skipped: a smaller size already timed out", flush=True)
                    continue
                # Big gno configurations are slow; fewer repeats there.
                repeat = (
                    1 if group == "gno" and (impl == "neuralop" or size >= 100_000) else args.repeat
                )
                record, error = run_child(
                    f"{group}:{impl}:{size}", repeat, args.tuned, args.timeout
                )
                if record is None:
                    if error.startswith("timeout"):
                        timed_out.add(impl)
                    failures.append({"group": group, "impl": impl, "size": size, "error": error})
                    print(f"{label}  {error}", flush=True)
                    continue
                results.append(record)
                edges = f" E={record['num_edges']}" if "num_edges" in record else ""
                print(
                    f"{label}  {record['time_min_s']:8.3f} s  "
                    f"{record['peak_extra_bytes'] / 1e6:8.0f} MB{edges}  "
                    f"(load {record['load_before']:.1f})",
                    flush=True,
                )

    summary = machine_summary(args.tuned)
    summary["timeout_s"] = args.timeout
    summary["results"] = results
    summary["failures"] = failures
    print_table(summary)
    write_json(args.out, summary)


def print_table(summary: dict) -> None:
    by_key = {(r["group"], r["impl"], r["size"]): r for r in summary["results"]}
    failed = {(r["group"], r["impl"], r["size"]): r["error"] for r in summary["failures"]}
    print(f"\n{summary['date']}, {summary['machine']}, allocator: {summary['allocator']}")
    print("| configuration | gtlib | neuralop | time ratio | memory ratio |")
    print("|---|---|---|---|---|")
    for group, sizes in CONFIGS.items():
        for size in sizes:
            cells = []
            for impl in IMPLS:
                r = by_key.get((group, impl, size))
                if r is None:
                    cells.append(failed.get((group, impl, size), "-"))
                else:
                    cells.append(f"{r['time_min_s']:.3f} s, {r['peak_extra_bytes'] / 1e6:.0f} MB")
            ours, theirs = by_key.get((group, "gtlib", size)), by_key.get((group, "neuralop", size))
            if ours and theirs:
                time_ratio = f"{ours['time_min_s'] / theirs['time_min_s']:.2f}x"
                memory = ours["peak_extra_bytes"] / max(theirs["peak_extra_bytes"], 1)
                memory_ratio = f"{memory:.2f}x"
            else:
                time_ratio = memory_ratio = "-"
            if all(c == "-" for c in cells):
                continue
            name = f"{group} {describe(group, size)}"
            print(f"| {name} | {cells[0]} | {cells[1]} | {time_ratio} | {memory_ratio} |")
    print("(ratios: gtlib / neuralop; below 1 means gtlib is faster or leaner)")


if __name__ == "__main__":
    main()
