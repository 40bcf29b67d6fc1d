"""Lidar place recognition across ground and aerial views with an octree transformer.

Data: a synthetic CS-Wild-Places-like set (:func:`gtlib.datasets.generate.place_recognition`:
forest and built-up scenes; per place two ground scans with range-dependent density and
occlusion and one top-down aerial scan, noise and random yaw), generated under ``--out`` when
``--data`` is not given. Places are split into train / valid / test: the models learn on the
train places, the valid places choose the epoch, and the reported metrics are on the held-out
test places, which influence no choice.

Models, trained alike and of the same size (same parameter count):

- ``octree``: :class:`gtlib.nn.OctreeTransformer` (HOTFormerLoc's shape): cylindrical octree
  windows about the sensor, relay tokens, a pyramid of levels with attentional pooling.
- ``knn``: the same network with both attention sub-layers of every block on
  :meth:`Pattern.knn <gtlib.attention.Pattern.knn>` (``--k`` nearest points) instead of octree
  windows and relay tokens.

Inputs per point: the cylindrical coordinates about the sensor (``r / max_range``,
``z / 10``), invariant to the scans' random yaw; the layers add their own encoding of the
position relative to the scan's centroid (``pos_encoding="cylindrical"``).

Training: symmetric InfoNCE (temperature ``--tau``) between the descriptors of a batch of places:
ground 1 <-> aerial, ground 2 <-> aerial and ground 1 <-> ground 2. Metrics: recall@1 and
recall@1% of ground queries (ground scan 1 of every test place) against the aerial database
(ground -> aerial) and against the second ground scans (ground -> ground).

Model selection, the same for both models: after every epoch the model describes the valid
places and its valid ground -> aerial recall@1 is recorded; the best epoch is the one with the
highest valid ground -> aerial recall@1, ties broken by the higher mean of valid ground -> aerial
recall@1 and recall@1%, then by the earlier epoch. The best epoch's weights are written
atomically to ``--out/<model>/best.pt`` (with the epoch and its valid recalls).

Every epoch writes ``--out/<model>/checkpoint.pt`` atomically (with the best epoch's weights and
score); ``--resume`` continues from it and reproduces an uninterrupted run exactly
(``--stop-after`` ends a run early on purpose). ``--out/results.json`` (written atomically) holds
the arguments, parameter counts, training times, per-epoch losses and valid recalls, the best
epoch, and the test recalls of both models: ``ground_to_aerial`` / ``ground_to_ground`` at the
best valid epoch (the reported result) and, labelled ``last_epoch``, at the last epoch.

Run (a few minutes on 2 CPU cores)::

    python examples/pointcloud/place_recognition.py --out runs/place_recognition
    python examples/pointcloud/place_recognition.py --quick --out /tmp/pr_quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import LayerNorm, Linear, Module, ModuleList, Sequential

from gtlib.attention import Pattern
from gtlib.datasets.generate import place_recognition, read_place_recognition
from gtlib.io import atomic_torch_save, atomic_write_text
from gtlib.nn import OctreeTransformer

# The baseline reuses the octree transformer's sub-layers so that both models have the same
# parameters; only the attention patterns differ.
from gtlib.nn._octree_blocks import AttentionalPooling, FeedForward, PatternAttention, cloud_mean

CHECKPOINT_FORMAT = "gtlib-place-recognition-example-v2"
SELECTION = (
    "highest valid ground->aerial recall@1, then the higher mean of valid "
    "ground->aerial recall@1 and recall@1%, then the earlier epoch"
)
# Arguments a resume may change. ``epochs`` extends (or ends) a run: the learning rate is constant
# and each epoch's order depends on (seed, epoch) alone, so a run resumed with more epochs equals
# the longer run from the start. ``models`` only chooses which models' folders are run.
RESUMABLE = {"resume", "stop_after", "no_progress", "threads", "out", "epochs", "models"}


# ---------------------------------------------------------------------- baseline
class KnnBlock(Module):
    """Pre-norm block: two kNN attention sub-layers and a feed-forward sub-layer (the same
    parameters as :class:`gtlib.nn._octree_blocks.OctreeBlock`)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm_relay, self.relay_attn = LayerNorm(channels), PatternAttention(channels, heads)
        self.norm_window, self.window_attn = LayerNorm(channels), PatternAttention(channels, heads)
        self.norm_ffn, self.ffn = LayerNorm(channels), FeedForward(channels)

    def forward(self, h: Tensor, pattern: Pattern) -> Tensor:
        normed = self.norm_relay(h)
        h = h + self.relay_attn(normed, normed, pattern)
        normed = self.norm_window(h)
        h = h + self.window_attn(normed, normed, pattern)
        return h + self.ffn(self.norm_ffn(h))


class KnnTransformer(Module):
    """The octree transformer's network with kNN attention (``k`` nearest points, self
    included) in place of octree windows and relay tokens."""

    def __init__(self, in_channels, hidden, out_channels, heads, levels, num_blocks, k) -> None:
        super().__init__()
        self.k = k
        self.lin_in = Linear(in_channels, hidden)
        self.pos_mlp = Sequential(Linear(2, hidden), torch.nn.GELU(), Linear(hidden, hidden))
        self.blocks = ModuleList(
            ModuleList(KnnBlock(hidden, heads) for _ in range(num_blocks)) for _ in range(levels)
        )
        self.pools = ModuleList(AttentionalPooling(hidden, heads) for _ in range(levels))
        self.lin_out = Linear(levels * hidden, out_channels)
        for pool in self.pools:
            pool.reset_parameters()

    def forward(self, pos: Tensor, x: Tensor, batch: Tensor, origin=None) -> Tensor:
        num_clouds = int(batch.max()) + 1
        pooling = Pattern.cross(batch, torch.arange(num_clouds))
        rel = pos - cloud_mean(pos, pooling)[batch]
        radius = cloud_mean(rel.square().sum(-1, keepdim=True), pooling).sqrt()
        rel = rel / radius.clamp_min(1e-12)[batch]
        rel = torch.stack([rel[:, :2].norm(dim=-1), rel[:, 2]], dim=-1)
        h = self.lin_in(x) + self.pos_mlp(rel)
        pattern = Pattern.knn(pos.detach(), self.k, batch=batch, loop=True)
        descriptors = []
        for level, blocks in enumerate(self.blocks):
            for block in blocks:
                h = block(h, pattern)
            descriptors.append(self.pools[level](h, pooling))
        return F.normalize(self.lin_out(torch.cat(descriptors, -1)), dim=-1)


# ---------------------------------------------------------------------- data and metrics
def features(scans: Tensor, max_range: float) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, M, 3]`` scans -> (pos ``[B*M, 3]``, yaw-invariant features ``[B*M, 2]``, batch)."""
    b, m, _ = scans.shape
    pos = scans.reshape(b * m, 3)
    x = torch.stack([pos[:, :2].norm(dim=-1) / max_range, pos[:, 2] / 10.0], dim=-1)
    return pos, x, torch.arange(b).repeat_interleave(m)


def describe(model: Module, scans: Tensor, max_range: float, chunk: int = 32) -> Tensor:
    out = []
    for first in range(0, scans.size(0), chunk):
        pos, x, batch = features(scans[first : first + chunk], max_range)
        out.append(model(pos, x, batch))
    return torch.cat(out)


def info_nce(a: Tensor, b: Tensor, tau: float) -> Tensor:
    logits = a @ b.t() / tau
    target = torch.arange(a.size(0))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def recalls(queries: Tensor, database: Tensor) -> dict[str, float]:
    """Recall@1 and recall@1% (top ``max(1, round(1% of the database))``), query ``i``'s match
    being database entry ``i``."""
    similarity = queries @ database.t()
    top = max(1, round(0.01 * database.size(0)))
    ranked = similarity.topk(top, dim=1).indices
    truth = torch.arange(queries.size(0))[:, None]
    return {
        "recall@1": float((ranked[:, :1] == truth).any(1).float().mean()),
        "recall@1%": float((ranked == truth).any(1).float().mean()),
        "top_1pct": top,
    }


def evaluate(model: Module, data: dict, idx: Tensor) -> dict[str, dict[str, float]]:
    """Recalls of ground scan 1 of the places ``idx`` against their aerial scans and their
    second ground scans (``model`` left in eval mode)."""
    ground, aerial, max_range = data["ground"], data["aerial"], data["max_range"]
    model.eval()
    with torch.no_grad():
        q = describe(model, ground[idx, 0], max_range)
        a = describe(model, aerial[idx], max_range)
        g = describe(model, ground[idx, 1], max_range)
    return {"ground_to_aerial": recalls(q, a), "ground_to_ground": recalls(q, g)}


def selection_score(valid: dict[str, dict[str, float]]) -> tuple[float, float]:
    """The key of :data:`SELECTION` (higher is better; ties go to the earlier epoch)."""
    r = valid["ground_to_aerial"]
    return (r["recall@1"], 0.5 * (r["recall@1"] + r["recall@1%"]))


# ---------------------------------------------------------------------- training
def build(args, name: str) -> Module:
    torch.manual_seed(args.seed)
    if name == "octree":
        return OctreeTransformer(2, args.hidden, args.descriptor, heads=args.heads,
                                 window_size=args.window, levels=args.levels,
                                 num_blocks=args.blocks, cylindrical=True,
                                 pos_encoding="cylindrical")  # fmt: skip
    return KnnTransformer(2, args.hidden, args.descriptor, args.heads, args.levels, args.blocks,
                          args.k)  # fmt: skip


def config_of(args) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def train_model(args, name: str, data: dict, train_idx: Tensor, valid_idx: Tensor,
                test_idx: Tensor) -> dict:  # fmt: skip
    model = build(args, name)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    folder = args.out / name
    checkpoint, best_file = folder / "checkpoint.pt", folder / "best.pt"
    state = {"epoch": 0, "history": [], "training_time_s": 0.0, "valid_time_s": 0.0,
             "best_epoch": 0, "best_score": None, "best_valid": None}  # fmt: skip
    best_model = None
    config = {k: v for k, v in config_of(args).items() if k not in RESUMABLE}
    if args.resume and checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise SystemExit(f"error: {checkpoint} is not a checkpoint of this script")
        if {k: v for k, v in saved["config"].items() if k not in RESUMABLE} != config:
            raise SystemExit(f"error: {checkpoint} was written with other arguments; resume "
                             "with the same ones")  # fmt: skip
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state, best_model = saved["state"], saved["best_model"]
        print(f"{name}: resumed after epoch {state['epoch']}", file=sys.stderr)
    ground, aerial, max_range = data["ground"], data["aerial"], data["max_range"]
    last = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
    for epoch in range(state["epoch"] + 1, last + 1):
        start = time.perf_counter()
        model.train()
        # the epoch's order depends on (seed, epoch) alone: a resumed run draws the same
        order = train_idx[torch.randperm(train_idx.numel(),
                                         generator=torch.Generator().manual_seed(
                                             args.seed * 1000 + epoch))]  # fmt: skip
        total, steps = 0.0, 0
        for first in range(0, order.numel() - 1, args.batch_size):
            places = order[first : first + args.batch_size]
            if places.numel() < 2:
                continue
            scans = torch.cat([ground[places, 0], ground[places, 1], aerial[places]])
            pos, x, batch = features(scans, max_range)
            d = model(pos, x, batch)
            g1, g2, a = d.chunk(3)
            loss = (info_nce(g1, a, args.tau) + info_nce(g2, a, args.tau)
                    + info_nce(g1, g2, args.tau)) / 3  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        elapsed = time.perf_counter() - start
        # model selection on the valid places only (timed apart from training)
        start = time.perf_counter()
        valid = evaluate(model, data, valid_idx)
        score = list(selection_score(valid))
        valid_elapsed = time.perf_counter() - start
        state["training_time_s"] += elapsed
        state["valid_time_s"] += valid_elapsed
        state["epoch"] = epoch
        state["history"].append({"epoch": epoch, "loss": total / max(steps, 1), "time_s": elapsed,
                                 "valid_time_s": valid_elapsed, "valid": valid})  # fmt: skip
        improved = state["best_score"] is None or score > state["best_score"]
        if improved:
            state["best_epoch"], state["best_score"], state["best_valid"] = epoch, score, valid
            best_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
            atomic_torch_save({"format": CHECKPOINT_FORMAT, "config": config, "epoch": epoch,
                               "selection": SELECTION, "valid": valid, "model": best_model},
                              best_file)  # fmt: skip
        if not args.no_progress:
            print(f"{name} epoch {epoch}: loss {total / max(steps, 1):.4f} ({elapsed:.1f} s), "
                  f"valid ground->aerial R@1 {score[0]:.3f}{' (best)' if improved else ''}",
                  file=sys.stderr)  # fmt: skip
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "config": config, "state": state,
                           "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "best_model": best_model}, checkpoint)  # fmt: skip
    last_test = evaluate(model, data, test_idx)
    if best_model is None:  # no epoch run (--epochs/--stop-after): the untrained model
        best_test = last_test
    else:
        model.load_state_dict(best_model)
        best_test = evaluate(model, data, test_idx)
    return {
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "epochs_run": state["epoch"],
        "training_time_s": state["training_time_s"],
        "valid_time_s": state["valid_time_s"],
        "history": state["history"],
        "selection": SELECTION,
        "best_epoch": state["best_epoch"],
        "best_valid": state["best_valid"],
        **best_test,
        "last_epoch": {"epoch": state["epoch"], **last_test},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None, help="a place_recognition HDF5 file")
    p.add_argument("--out", type=Path, default=Path("runs/place_recognition"))
    p.add_argument("--places", type=int, default=200, help="places to generate")
    p.add_argument("--points", type=int, default=512, help="points per scan to generate")
    p.add_argument("--models", default="octree,knn")
    p.add_argument("--epochs", type=int, default=None, help="default 12 (--quick: 2)")
    p.add_argument("--batch-size", type=int, default=16, help="places per batch")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--descriptor", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--levels", type=int, default=2)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--stop-after", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="a tiny run for tests")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.places, args.points, args.hidden = 24, 96, 8
        args.epochs = 2 if args.epochs is None else args.epochs
        args.descriptor, args.heads, args.window, args.levels, args.blocks = 8, 2, 16, 2, 1
        args.batch_size = 8
    args.epochs = 12 if args.epochs is None else args.epochs
    for name in ("places", "points", "epochs", "batch_size", "hidden", "k", "window"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    args.models = [m for m in args.models.split(",") if m]
    if not args.models or any(m not in ("octree", "knn") for m in args.models):
        p.error(f"--models must list octree and/or knn, got {args.models}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.data
    if path is None:
        path = args.out / "data" / f"places{args.places}_points{args.points}_seed{args.seed}.h5"
        if not path.exists():
            place_recognition(args.places, path, points=args.points, seed=args.seed,
                              progress=not args.no_progress)  # fmt: skip
    data = read_place_recognition(path)
    data["ground"], data["aerial"] = data["ground"].float(), data["aerial"].float()
    train_idx, valid_idx, test_idx = (torch.nonzero(data["split"] == s).view(-1) for s in range(3))
    for label, idx in (("train", train_idx), ("valid", valid_idx), ("test", test_idx)):
        if idx.numel() < 2:
            raise SystemExit(f"error: {path} has {idx.numel()} {label} places; need >= 2")
    results: dict[str, Any] = {"args": config_of(args), "data": str(path),
                               "train_places": train_idx.numel(),
                               "valid_places": valid_idx.numel(),
                               "test_places": test_idx.numel(), "models": {}}  # fmt: skip
    for name in args.models:
        results["models"][name] = train_model(args, name, data, train_idx, valid_idx, test_idx)
        r = results["models"][name]
        print(f"{name}: {r['num_parameters']} parameters, {r['training_time_s']:.1f} s training; "
              f"best valid epoch {r['best_epoch']}: test ground->aerial R@1 "
              f"{r['ground_to_aerial']['recall@1']:.3f} "
              f"R@1% {r['ground_to_aerial']['recall@1%']:.3f}; ground->ground R@1 "
              f"{r['ground_to_ground']['recall@1']:.3f} R@1% "
              f"{r['ground_to_ground']['recall@1%']:.3f}")  # fmt: skip
    # a resume that runs some of the models keeps the others' results from the same data
    previous = args.out / "results.json"
    if args.resume and previous.exists():
        earlier = json.loads(previous.read_text())
        if earlier.get("data") == results["data"]:
            for name, result in earlier.get("models", {}).items():
                results["models"].setdefault(name, result)
    atomic_write_text(args.out / "results.json", json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
