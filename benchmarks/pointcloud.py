"""Point-cloud attention, forward + backward: octree windows vs kNN vs serialised patches.

Every configuration runs in its own subprocess (peak memory is its own). Inputs: ``N`` points of
a lidar-like scene (rolling ground and tree trunks/canopies, ``--scene``) or uniform in a
``100 x 100 x 10`` box (``--scene box``); ``q, k, v [N, 4, 32]`` float32 requiring grad; one
attention of 4 heads x 32 channels through :func:`gtlib.attention.attend` (the same channels and
heads for every method):

- ``octree``: :meth:`Pattern.octree` windows (``--window`` points at most, default depth), inputs
  in the caller's (random) point order: the window kernel reads and writes through the
  serialisation (``perm``), no gathers of its own;
- ``octree_sorted``: the same with the points already in z-order (the octree's own serialisation,
  as a network keeps its tokens between layers), so windows are contiguous runs;
- ``octree_relay``: the same windows with one relay token per window (HOTFormerLoc):
  relay = window mean, relay <-> relay attention within the cloud, window + relay attention
  (opt-in: relay <-> relay is quadratic in the number of windows);
- ``patch``: serialised patches of ``--window`` points along the z-order curve, no cells
  (Point Transformer V3; ``Pattern.octree(..., depth=0)``), points in z-order;
- ``knn``: :meth:`Pattern.knn` with ``k = 16`` (self included), the engine's auto mode (the
  fused CPU kernel), points in the caller's (random) order;
- ``knn_sorted``: the same with the points in z-order first (kNN's best setting: its gathers of
  neighbour rows hit the cache).

Pattern construction is timed apart (``setup_s``; for the sorted methods it includes the sort),
after a warm-up construction on 256 points (lazy imports and first calls are not counted).
"peak extra" is the peak RSS of the timed steps above the RSS after a warm-up step
(``step_peak_extra_bytes``), ``peak_extra_bytes`` includes the first step (pattern caches) and
``total_peak_extra_bytes`` the pattern construction too (above the RSS with the inputs
allocated). The ratios to ``knn`` and ``knn_sorted`` are computed within one run; note the load
(``load_before``).

    python benchmarks/pointcloud.py                          # 100k and 1M points
    python benchmarks/pointcloud.py --sizes 100000 --repeat 5 --window 16
    python benchmarks/pointcloud.py --pool                   # GTLIB_OUTPUT_POOL=1 for every method

``--pool`` turns on the compiled kernels' output pool (every method here runs on them, so all get
it): outputs of 32 MB or more reuse the blocks that earlier outputs freed, in huge pages, instead
of faulting in fresh pages every step (:mod:`gtlib.attention.backends._memory`). The warm-up step
pays for mapping the blocks, the timed steps reuse them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    current_rss,
    load_average,
    machine_summary,
    peak_rss,
    run_child,
    time_steps,
    write_json,
)

HEADS, CHANNELS, K = 4, 32, 16
METHODS = ["octree", "octree_sorted", "patch", "knn", "knn_sorted"]


def make_points(n: int, scene: str, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    if scene == "box":
        return torch.rand(n, 3, generator=gen) * torch.tensor([100.0, 100.0, 10.0])
    # a lidar-like surface scene: 60% ground, 25% trunks, 15% canopies
    size = 100.0
    n_ground, n_trunk = int(0.6 * n), int(0.25 * n)
    n_canopy = n - n_ground - n_trunk
    xy = torch.rand(n_ground, 2, generator=gen) * size
    z = 0.5 * torch.sin(xy[:, 0] / 7) + 0.3 * torch.cos(xy[:, 1] / 5)
    ground = torch.cat([xy, z[:, None]], 1)
    trees = torch.rand(400, 2, generator=gen) * size
    t = torch.randint(0, 400, (n_trunk,), generator=gen)
    phi = torch.rand(n_trunk, generator=gen) * 6.283
    trunk = torch.stack([trees[t, 0] + 0.3 * phi.cos(), trees[t, 1] + 0.3 * phi.sin(),
                         torch.rand(n_trunk, generator=gen) * 10], 1)  # fmt: skip
    c = torch.randint(0, 400, (n_canopy,), generator=gen)
    d = torch.randn(n_canopy, 3, generator=gen)
    d = d / d.norm(dim=1, keepdim=True) * torch.tensor([3.0, 3.0, 2.0])
    canopy = torch.stack([trees[c, 0], trees[c, 1], torch.full((n_canopy,), 11.0)], 1) + d
    return torch.cat([ground, trunk, canopy])


def z_order(pos):
    """The points' permutation along the z-order curve (the octree's serialisation)."""
    from gtlib.attention import Pattern

    return Pattern.octree(pos, 1 << 20, depth=0)[0].perm


def build(method: str, pos, window: int, q, k, v, info: dict):
    """The forward of one method (inputs permuted in place for the sorted ones)."""
    import torch

    from gtlib.attention import Pattern, attend

    if method in ("knn", "knn_sorted"):
        pattern = Pattern.knn(pos, K, loop=True)
        info["edges"] = pattern.num_edges
        return lambda: attend(pattern, v, query=q, key=k)
    depth = 0 if method == "patch" else None
    level = Pattern.octree(pos, window, depth=depth)[0]
    info.update(windows=level.num_windows, depth=level.depth, edges=level.pattern.num_edges,
                mean_window=pos.size(0) / max(level.num_windows, 1))  # fmt: skip
    if method != "octree_relay":
        groups = level.window_groups(caller_order=True)  # serialisation folded in
        return lambda: groups.attend(v, q, k)
    gather, relay = level.relay_gather(), level.relay_global()
    joint = level.window_groups(relays=True)
    info["edges"] += level.num_windows + relay.num_edges + gather.num_edges
    n = pos.size(0)

    def forward():
        qs, ks, vs = level.serialise(q), level.serialise(k), level.serialise(v)
        rq, rk, rv = (attend(gather, t, reduce="mean") for t in (qs, ks, vs))
        rv = rv + attend(relay, rv, query=rq, key=rk)
        out = joint.attend(torch.cat([vs, rv]), torch.cat([qs, rq]), torch.cat([ks, rk]))
        return level.deserialise(out[:n])

    return forward


def child(spec: str, repeat: int) -> None:
    import torch

    method, n, window, scene, threads = spec.split(":")
    n, window, threads = int(n), int(window), int(threads)
    torch.set_num_threads(threads)
    pos = make_points(n, scene)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(n, HEADS, CHANNELS, generator=gen).requires_grad_() for _ in range(3))
    grad = torch.randn(n, HEADS, CHANNELS, generator=gen)
    # one-time work out of the setup timing (lazy imports such as scipy's k-d tree, first calls)
    build(method, pos[:256], min(window, 64), q[:256], k[:256], v[:256], {})
    before_setup = current_rss()
    start = time.perf_counter()
    if method.endswith("_sorted") or method == "patch":
        pos = pos[z_order(pos)]  # the inputs are random draws: permuting pos alone suffices
    info = {}
    forward = build(method, pos, window, q, k, v, info)
    setup = time.perf_counter() - start

    def step():
        q.grad = k.grad = v.grad = None
        forward().backward(grad)

    record = time_steps(step, repeat)
    record["total_peak_extra_bytes"] = peak_rss() - before_setup
    record.update(method=method, points=n, window=window, scene=scene, threads=threads,
                  setup_s=setup, **info)  # fmt: skip
    print(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--scene", choices=("lidar", "box"), default="lidar")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tuned", action="store_true", help="MALLOC_MMAP_MAX_=0")
    parser.add_argument("--pool", action="store_true", help="GTLIB_OUTPUT_POOL=1 for every method")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeat)
        return
    summary = machine_summary(args.tuned, args.pool)
    pool = {"GTLIB_OUTPUT_POOL": "1"} if args.pool else {}
    summary.update(heads=HEADS, channels=CHANNELS, k=K, window=args.window, scene=args.scene,
                   threads=args.threads, output_pool="GTLIB_OUTPUT_POOL" in summary["allocator"],
                   load_start=load_average(),
                   results=[])  # fmt: skip
    print(f"{'method':<14}{'points':>9}{'edges':>12}{'setup s':>9}{'fwd+bwd s':>11}"
          f"{'peak GB':>9}{'vs knn':>8}{'vs sort':>8}")  # fmt: skip
    for n in [int(s) for s in args.sizes.split(",")]:
        rows = {}
        for method in args.methods.split(","):
            spec = f"{method}:{n}:{args.window}:{args.scene}:{args.threads}"
            record, error = run_child(__file__, spec, args.repeat, args.tuned, pool)
            if record is None:
                print(f"{method:<14}{n:>9}  failed: {error}")
                summary["results"].append({"method": method, "points": n, "error": error})
                continue
            rows[method] = record
            summary["results"].append(record)
        for method, record in rows.items():
            for base in ("knn", "knn_sorted"):
                if base in rows:
                    ratio = rows[base]["time_median_s"] / record["time_median_s"]
                    record[f"speedup_vs_{base}"] = ratio
            peak = max(record["total_peak_extra_bytes"], record["step_peak_extra_bytes"] or 0)
            print(f"{method:<14}{n:>9}{record['edges']:>12}{record['setup_s']:>9.2f}"
                  f"{record['time_median_s']:>11.3f}{peak / 1e9:>9.2f}"
                  f"{record.get('speedup_vs_knn', float('nan')):>8.2f}"
                  f"{record.get('speedup_vs_knn_sorted', float('nan')):>8.2f}")  # fmt: skip
    summary["load_end"] = load_average()
    out = args.out or str(Path(__file__).parent / "results" / f"pointcloud-{args.scene}.json")
    write_json(out, summary)


if __name__ == "__main__":
    main()
