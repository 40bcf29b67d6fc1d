"""Point-cloud attention, forward + backward: octree windows vs kNN vs serialised patches.

Every configuration runs in its own subprocess (peak memory is its own). Inputs: ``N`` points of
a lidar-like scene (rolling ground and tree trunks/canopies, ``--scene``) or uniform in a
``100 x 100 x 10`` box (``--scene box``); ``q, k, v [N, 4, 32]`` float32 requiring grad; one
attention of 4 heads x 32 channels through :func:`gtlib.attention.attend`:

- ``octree``: :meth:`Pattern.octree` windows (``--window`` points at most, default depth),
  serialised gathers included (``x[perm]`` in, ``out[inverse]`` back); dense SDPA per block;
- ``octree_relay``: the same windows with one relay token per window (HOTFormerLoc):
  relay = window mean, relay <-> relay attention within the cloud, window + relay attention;
- ``patch``: serialised patches of ``--window`` points along the z-order curve, no cells
  (Point Transformer V3; ``Pattern.octree(..., depth=0)``);
- ``knn``: :meth:`Pattern.knn` with ``k = 16`` (self included), the engine's auto mode (the
  fused CPU kernel).

Pattern construction is timed apart (``setup_s``). "peak extra" is the peak RSS of the timed
steps above the RSS after a warm-up step (``step_peak_extra_bytes``), and ``peak_extra_bytes``
includes the first step (pattern caches). The ratio to kNN is computed within one run; note the
load (``load_before``).

    python benchmarks/pointcloud.py                          # 100k and 1M points
    python benchmarks/pointcloud.py --sizes 100000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import load_average, machine_summary, run_child, time_steps, write_json  # noqa: E402

HEADS, CHANNELS, K = 4, 32, 16
METHODS = ["octree", "octree_relay", "patch", "knn"]


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


def child(spec: str, repeat: int) -> None:
    import torch

    from gtlib.attention import Pattern, attend

    method, n, window, scene, threads = spec.split(":")
    n, window, threads = int(n), int(window), int(threads)
    torch.set_num_threads(threads)
    pos = make_points(n, scene)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(n, HEADS, CHANNELS, generator=gen).requires_grad_() for _ in range(3))
    start = time.perf_counter()
    info = {}
    if method == "knn":
        pattern = Pattern.knn(pos, K, loop=True)
        info["edges"] = pattern.num_edges

        def forward():
            return attend(pattern, v, query=q, key=k)

    else:
        depth = 0 if method == "patch" else None
        level = Pattern.octree(pos, window, depth=depth)[0]
        info.update(windows=level.num_windows, depth=level.depth,
                    mean_window=n / max(level.num_windows, 1))  # fmt: skip
        if method == "octree_relay":
            gather, relay = level.relay_gather(), level.relay_global()
            joint = level.window_groups(relays=True)
            info["edges"] = level.with_relays().num_edges + relay.num_edges + gather.num_edges

            def forward():
                qs, ks, vs = level.serialise(q), level.serialise(k), level.serialise(v)
                rq, rk, rv = (attend(gather, t, reduce="mean") for t in (qs, ks, vs))
                rv = rv + attend(relay, rv, query=rq, key=rk)
                out = joint.attend(torch.cat([vs, rv]), torch.cat([qs, rq]), torch.cat([ks, rk]))
                return level.deserialise(out[:n])

        else:
            groups = level.window_groups(caller_order=True)  # serialisation folded in
            info["edges"] = level.pattern.num_edges
            info["block_sizes"] = len(groups.pattern.blocks)

            def forward():
                return groups.attend(v, q, k)

    setup = time.perf_counter() - start
    grad = torch.randn(n, HEADS, CHANNELS, generator=gen)

    def step():
        q.grad = k.grad = v.grad = None
        forward().backward(grad)

    record = time_steps(step, repeat)
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
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeat)
        return
    summary = machine_summary(args.tuned)
    summary.update(heads=HEADS, channels=CHANNELS, k=K, window=args.window, scene=args.scene,
                   threads=args.threads, load_start=load_average(), results=[])  # fmt: skip
    print(f"{'method':<14}{'points':>9}{'edges':>12}{'setup s':>9}{'fwd+bwd s':>11}"
          f"{'peak GB':>9}{'vs knn':>8}")  # fmt: skip
    for n in [int(s) for s in args.sizes.split(",")]:
        rows = {}
        for method in args.methods.split(","):
            spec = f"{method}:{n}:{args.window}:{args.scene}:{args.threads}"
            record, error = run_child(__file__, spec, args.repeat, args.tuned)
            if record is None:
                print(f"{method:<14}{n:>9}  failed: {error}")
                summary["results"].append({"method": method, "points": n, "error": error})
                continue
            rows[method] = record
            summary["results"].append(record)
        for method, record in rows.items():
            if "knn" in rows:
                record["speedup_vs_knn"] = rows["knn"]["time_median_s"] / record["time_median_s"]
            peak = max(record["peak_extra_bytes"], record["step_peak_extra_bytes"] or 0)
            print(f"{method:<14}{n:>9}{record['edges']:>12}{record['setup_s']:>9.2f}"
                  f"{record['time_median_s']:>11.3f}{peak / 1e9:>9.2f}"
                  f"{record.get('speedup_vs_knn', float('nan')):>8.2f}")  # fmt: skip
    summary["load_end"] = load_average()
    out = args.out or str(Path(__file__).parent / "results" / f"pointcloud-{args.scene}.json")
    write_json(out, summary)


if __name__ == "__main__":
    main()
