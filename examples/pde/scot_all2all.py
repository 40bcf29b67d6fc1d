"""ScOT trained all2all vs on fixed steps: errors at a lead time the all2all model never saw.

Poseidon's all2all training uses every pair (t_i, t_j), i <= j, of a trajectory with the lead time
t_j - t_i; with time-conditioned norms the model is continuous in the lead time. This script
trains two small ScOTs on generated Navier–Stokes vorticity: one all2all with the pairs of lead
``--held-out-lead`` removed, one only on lead ``--fixed-lead`` (one stored step), then reports the
relative L2 test error at lead 1, 3 and the held-out lead: directly, and for the fixed-step model
also by autoregressive rollout.

    gtlib-data generate navier_stokes_2d --n 80 --resolution 32 --t-final 10 --n-snapshots 11 \\
        --splits 0.8 0 0.2 --out data/ns32
    python examples/pde/scot_all2all.py --data data/ns32/navier_stokes_2d --mode all2all
    python examples/pde/scot_all2all.py --data data/ns32/navier_stokes_2d --mode fixed
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gtlib.datasets import PDEDataset
from gtlib.operators import LpLoss, ScOT


def load(path: str, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    fields = dict(input_fields=["vorticity"], target_fields=["vorticity"], all2all=True)
    dataset = PDEDataset(path, split=split, **fields)
    items = [dataset[i] for i in range(len(dataset))]
    return tuple(torch.stack([item[key] for item in items]) for key in ("x", "y", "lead_time"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="The Well dataset folder <base>/<name>")
    parser.add_argument("--mode", choices=["all2all", "fixed"], required=True)
    parser.add_argument("--held-out-lead", type=float, default=5.0)
    parser.add_argument("--fixed-lead", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    x, y, lead = load(args.data, "train")
    x_test, y_test, lead_test = load(args.data, "test")
    scale, lead_scale = x.std(), float(lead.max())
    available = sorted(set(lead.tolist()) & set(lead_test.tolist()))
    for name, value in (("--held-out-lead", args.held_out_lead), ("--fixed-lead", args.fixed_lead)):
        if value not in available:
            parser.error(f"{name} {value:g} is not a lead time of the data: {available}")
    if args.mode == "all2all":
        keep = (lead != args.held_out_lead) & (lead > 0)
    else:
        keep = lead == args.fixed_lead
    x, y, lead = x[keep], y[keep], lead[keep]

    torch.manual_seed(args.seed)
    side = x.shape[-1]
    model = ScOT(1, 1, side, patch_size=2, embed_dim=32, depths=(2, 2), heads=(2, 4),
                 window_size=4, skip_connection_blocks=(2, 0), periodic=True)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    relative_l2 = LpLoss(d=2)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for _ in range(args.steps):
        batch = torch.randint(len(x), (args.batch_size,), generator=generator)
        prediction = model(x[batch] / scale, lead[batch] / lead_scale) * scale
        loss = relative_l2(prediction, y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start

    model.eval()
    errors = {}
    with torch.no_grad():
        for target_lead in (1.0, 3.0, args.held_out_lead):
            pick = lead_test == target_lead
            direct = model(x_test[pick] / scale, lead_test[pick] / lead_scale) * scale
            errors[f"lead {target_lead:g} direct"] = relative_l2(direct, y_test[pick]).item()
            rollout_steps = target_lead / args.fixed_lead
            if args.mode == "fixed" and rollout_steps == round(rollout_steps):
                state = x_test[pick]
                step = torch.full((state.shape[0],), args.fixed_lead / lead_scale)
                for _ in range(round(rollout_steps)):
                    state = model(state / scale, step) * scale
                errors[f"lead {target_lead:g} rollout"] = relative_l2(state, y_test[pick]).item()
    results = {"mode": args.mode, "train_pairs": len(x), "train_seconds": seconds, **errors}
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
