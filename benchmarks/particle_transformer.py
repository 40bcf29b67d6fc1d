"""ParticleTransformer scaling: score evaluation time and peak memory against the particle count.

Each configuration runs in its own subprocess with 2 threads; memory is peak RSS above the RSS
after building the inputs.

    python benchmarks/particle_transformer.py          # forward at N = 1k, 4k, 16k; train at 1k, 4k
    python benchmarks/particle_transformer.py --sizes 1024 4096 --train-sizes --repeat 1
    python benchmarks/particle_transformer.py --chunk-size 0      # no chunking

Particles are uniform at packing fraction 0.5 (radius 1) in a periodic 2-D box,
``L = sqrt(N pi / 0.5)``, with an active force ``g_i ~ N(0, I)`` as the per-particle state. The
model has its default size (K = 64, width 128, 4 layers, 4 heads, feed-forward 256) and outputs
the score for ``x`` and ``g`` (4 channels). ``forward`` evaluates it without gradients;
``train`` runs forward and backward with respect to the parameters (chunks are recomputed in
the backward pass). Configurations from 8k particles on are timed once, without a warm-up
run. Linear scaling in ``N`` means ``t(N_max) / t(N_min) / (N_max / N_min) ~ 1``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    current_rss,
    machine_summary,
    peak_rss,
    run_child,
    time_steps,
    write_json,
)

SIZES = [1024, 4096, 16384]
TRAIN_SIZES = [1024, 4096]
MODES = ["forward", "train"]
PACKING_FRACTION, THREADS, CHUNK_SIZE = 0.5, 2, 1024


def run_one(num: int, mode: str, chunk_size: int, repeat: int) -> dict:
    import torch

    from gtlib.attention import Pattern
    from gtlib.nn.particle_transformer import ParticleTransformer

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    length = math.sqrt(num * math.pi / PACKING_FRACTION)
    pos = torch.rand(num, 2) * length
    g = torch.randn(num, 2)
    model = ParticleTransformer(2, 4, chunk_size=chunk_size or None)

    start = time.perf_counter()
    Pattern.knn(pos, model.num_neighbors, box=length)
    knn_s = time.perf_counter() - start

    if mode == "forward":
        model.eval()

        def step() -> None:
            with torch.no_grad():
                model(pos, g, box=length)

    else:

        def step() -> None:
            model.zero_grad(set_to_none=True)
            model(pos, g, box=length).square().sum().backward()

    record = {"num_particles": num, "mode": mode, "chunk_size": chunk_size or None}
    if repeat > 0:
        record.update(time_steps(step, repeat))
    else:  # large runs: one timed call, no warm-up
        baseline = current_rss()
        start = time.perf_counter()
        step()
        elapsed = time.perf_counter() - start
        record.update(
            time_min_s=elapsed,
            time_median_s=elapsed,
            times_s=[elapsed],
            peak_extra_bytes=peak_rss() - baseline,
        )
    record["time_per_particle_s"] = record["time_min_s"] / num
    record["knn_s"] = knn_s
    record["peak_rss_bytes"] = peak_rss()
    record["threads"] = torch.get_num_threads()
    record["parameters"] = sum(p.numel() for p in model.parameters())
    record["box_length"] = length
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", type=int, default=SIZES, help="forward sizes")
    parser.add_argument("--train-sizes", nargs="*", type=int, default=TRAIN_SIZES)
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE, help="0: no chunking")
    parser.add_argument(
        "--repeat", type=int, default=None, help="timed runs after a warm-up (default 3 below 8k)"
    )
    parser.add_argument("--tuned", action="store_true", help="MALLOC_MMAP_MAX_=0 for every run")
    parser.add_argument("--out", default="benchmarks/results/particle-transformer.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        num, mode, chunk_size = args.child.split(":")
        print(json.dumps(run_one(int(num), mode, int(chunk_size), args.repeat)))
        return

    results = []
    plan = {"forward": args.sizes, "train": args.train_sizes}
    for mode, sizes in plan.items():
        for num in sizes:
            repeat = args.repeat if args.repeat is not None else (3 if num < 8192 else 0)
            spec = f"{num}:{mode}:{args.chunk_size}"
            record, error = run_child(__file__, spec, repeat, args.tuned)
            if record is None:
                print(f"{mode:8s} N={num:6d} skipped: {error}")
                continue
            results.append(record)
            print(
                f"{mode:8s} N={num:6d} {record['time_min_s']:8.2f} s "
                f"{record['time_per_particle_s'] * 1e3:7.3f} ms/particle "
                f"peak RSS {record['peak_rss_bytes'] / 1e9:5.2f} GB "
                f"(knn {record['knn_s']:.2f} s, load {record['load_before']:.1f})",
                flush=True,
            )

    summary = machine_summary(args.tuned)
    summary.update(
        model="ParticleTransformer(2, 4) defaults: K=64, hidden 128, 4 layers, 4 heads, ff 256",
        packing_fraction=PACKING_FRACTION,
        threads=THREADS,
        chunk_size=args.chunk_size or None,
        results=results,
    )
    scaling = {}
    print(f"\n{summary['date']}, {summary['machine']}, {THREADS} threads, chunk {args.chunk_size}")
    print("| mode | N | time (s) | time / particle (ms) | peak RSS (GB) | extra RSS (GB) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['mode']} | {r['num_particles']} | {r['time_min_s']:.2f} | "
            f"{r['time_per_particle_s'] * 1e3:.3f} | {r['peak_rss_bytes'] / 1e9:.2f} | "
            f"{r['peak_extra_bytes'] / 1e9:.2f} |"
        )
    for mode in MODES:
        rows = sorted((r for r in results if r["mode"] == mode), key=lambda r: r["num_particles"])
        if len(rows) >= 2:
            small, large = rows[0], rows[-1]
            ratio = (large["time_min_s"] / small["time_min_s"]) / (
                large["num_particles"] / small["num_particles"]
            )
            scaling[mode] = ratio
            print(
                f"{mode}: t({large['num_particles']}) / t({small['num_particles']}) / "
                f"{large['num_particles'] // small['num_particles']} = {ratio:.2f}"
            )
    summary["scaling_ratio"] = scaling
    write_json(args.out, summary)


if __name__ == "__main__":
    main()
