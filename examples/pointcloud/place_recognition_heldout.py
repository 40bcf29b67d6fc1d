"""Place recognition on a large set of held-out places: the octree transformer against its kNN twin.

The test split of ``place_recognition.py`` holds few places (80 of 400), so one test place is
1.25 points of recall and the two models' difference is within the noise of one run. This script
takes the models that runs of ``place_recognition.py`` selected (``<run>/<model>/best.pt``, the
epoch chosen on the valid places) and evaluates them, unchanged, on places generated afresh with
a seed no run trained on (``--seed``): new scenes, never seen in training or model selection.

Metrics, per run and model:

- ``blocks``: ground -> aerial and ground -> ground recall@1 with databases of ``--database``
  places (the size of the runs' own test split, so the numbers compare with theirs): the held-out
  places are cut into disjoint blocks of that size and every ground query is ranked against the
  aerial scans (or second ground scans) of its block; the recall is the mean over all queries;
- ``full``: the same against one database of all held-out places (harder: more distractors).

The comparison is paired: both models answer the same queries. For every run the per-query
difference (octree hit minus kNN hit) is averaged; across runs the script reports the mean and
sample standard deviation of the per-run differences, and a 95% interval of the mean difference
from a bootstrap over places (the same resampled places for every run).

    python examples/pointcloud/place_recognition_heldout.py \\
        --runs runs/pr_valid_seed0 runs/pr_valid_seed1 runs/pr_valid_seed2 \\
        --places 960 --seed 1000 --out runs/pr_heldout/results.json

The output JSON (written atomically) holds the arguments, the data file, the per-run recalls
and the paired statistics.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gtlib.datasets.generate import place_recognition, read_place_recognition
from gtlib.io import atomic_write_text

MODELS = ("octree", "knn")
TASKS = {"ground_to_aerial": "aerial", "ground_to_ground": "ground2"}


def _training_script():
    """``place_recognition.py`` (next to this file): its models, features and checkpoint format."""
    path = Path(__file__).resolve().parent / "place_recognition.py"
    spec = importlib.util.spec_from_file_location("pointcloud_place_recognition", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_model(script, run: Path, name: str) -> tuple[torch.nn.Module, dict]:
    """The model of ``run/name/best.pt`` (the epoch the run selected), in eval mode."""
    path = run / name / "best.pt"
    if not path.exists():
        raise SystemExit(f"error: {path} does not exist (train with place_recognition.py first)")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved.get("format") != script.CHECKPOINT_FORMAT:
        raise SystemExit(f"error: {path} is not a best.pt of place_recognition.py")
    model = script.build(argparse.Namespace(**saved["config"]), name)
    model.load_state_dict(saved["model"])
    model.eval()
    return model, {"epoch": saved["epoch"], "points": saved["config"].get("points")}


def hits(queries: Tensor, database: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """Per-query recall@1 hits (query ``i`` matches entry ``i``): within disjoint blocks of
    ``block`` places (the tail shorter than a block is dropped) and against all places."""
    n = queries.size(0)
    full = (queries @ database.t()).argmax(1) == torch.arange(n)
    used = n // block * block
    q = queries[:used].view(-1, block, queries.size(1))
    d = database[:used].view(-1, block, database.size(1))
    blocks = (q @ d.transpose(1, 2)).argmax(2) == torch.arange(block)
    return blocks.reshape(-1), full


def bootstrap_interval(diffs: Tensor, samples: int, seed: int) -> list[float]:
    """95% interval of the mean over runs of the mean over places of ``diffs`` ``[runs, places]``,
    resampling places (the same draw for every run)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, diffs.size(1), (samples, diffs.size(1)), generator=gen)
    means = diffs[:, idx].mean(dim=(0, 2))
    return [float(means.quantile(0.025)), float(means.quantile(0.975))]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--runs", type=Path, nargs="+", required=True, help="place_recognition --out dirs"
    )
    p.add_argument("--places", type=int, default=960, help="held-out places to generate")
    p.add_argument("--points", type=int, default=None, help="points per scan (default: the runs')")
    p.add_argument("--seed", type=int, default=1000, help="generator seed (no run trained on it)")
    p.add_argument("--database", type=int, default=80, help="places per database block")
    p.add_argument("--data", type=Path, default=None, help="an existing held-out HDF5 file")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/pr_heldout/results.json"))
    args = p.parse_args(argv)
    args.runs = list(dict.fromkeys(args.runs))  # each run once
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.database < 2 or args.places < args.database:
        raise SystemExit("error: need --database >= 2 and --places >= --database")
    script = _training_script()

    models = {(run, name): load_model(script, run, name) for run in args.runs for name in MODELS}
    points = {info["points"] for _, info in models.values()}
    if args.points is None:
        if len(points) != 1:
            raise SystemExit(f"error: the runs used different --points {sorted(points)}; pick one")
        args.points = points.pop()
    path = (
        args.data
        or args.out.parent / f"heldout_places{args.places}_points{args.points}_seed{args.seed}.h5"
    )
    if args.data is None and not path.exists():
        place_recognition(args.places, path, points=args.points, seed=args.seed)
    data = read_place_recognition(path)
    ground, aerial, max_range = data["ground"].float(), data["aerial"].float(), data["max_range"]

    settings = {k: [str(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, Path)
                else v for k, v in vars(args).items()}  # fmt: skip
    results: dict[str, Any] = {"args": settings, "data": str(path), "places": ground.size(0),
                               "runs": {}}  # fmt: skip
    per_query: dict[str, dict[str, list[Tensor]]] = {name: {} for name in MODELS}
    for (run, name), (model, info) in models.items():
        start = time.perf_counter()
        with torch.no_grad():
            q = script.describe(model, ground[:, 0], max_range)
            databases = {"aerial": script.describe(model, aerial, max_range),
                         "ground2": script.describe(model, ground[:, 1], max_range)}  # fmt: skip
        entry = {"best_epoch": info["epoch"], "describe_s": time.perf_counter() - start}
        for task, key in TASKS.items():
            block, full = hits(q, databases[key], args.database)
            entry[task] = {"recall@1_blocks": float(block.float().mean()),
                           "recall@1_full": float(full.float().mean())}  # fmt: skip
            per_query[name].setdefault(task, []).append(block.float())
        results["runs"].setdefault(str(run), {})[name] = entry
        print(f"{run} {name}: ground->aerial R@1 {entry['ground_to_aerial']['recall@1_blocks']:.3f}"
              f" (database {args.database}), {entry['ground_to_aerial']['recall@1_full']:.3f} "
              f"(all {ground.size(0)})", file=sys.stderr)  # fmt: skip

    paired = {}
    for task in TASKS:
        diffs = torch.stack(per_query["octree"][task]) - torch.stack(per_query["knn"][task])
        per_run = diffs.mean(1)
        paired[task] = {
            "octree_mean": float(torch.stack(per_query["octree"][task]).mean()),
            "knn_mean": float(torch.stack(per_query["knn"][task]).mean()),
            "diff_per_run": per_run.tolist(),
            "diff_mean": float(per_run.mean()),
            "diff_sd_over_runs": float(per_run.std()) if per_run.numel() > 1 else 0.0,
            "octree_better_runs": int((per_run > 0).sum()),
            "diff_95ci_bootstrap_places": bootstrap_interval(diffs, args.bootstrap, args.seed),
        }
    results["paired_blocks"] = paired
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=2))
    g2a = paired["ground_to_aerial"]
    print(f"ground->aerial R@1 (database {args.database}): octree {g2a['octree_mean']:.3f}, "
          f"kNN {g2a['knn_mean']:.3f}, difference {g2a['diff_mean']:+.3f} "
          f"(95% {g2a['diff_95ci_bootstrap_places'][0]:+.3f} .. "
          f"{g2a['diff_95ci_bootstrap_places'][1]:+.3f}); octree better in "
          f"{g2a['octree_better_runs']}/{len(args.runs)} runs")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
