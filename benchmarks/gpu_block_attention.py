"""Block attention on one GPU: SDPA per block size against one ``flex_attention`` call.

    python benchmarks/gpu_block_attention.py                 # about a minute on one GPU
    python benchmarks/gpu_block_attention.py --out /tmp/block.json

The workloads are full attention within each graph of a batch (``Pattern.full(batch)``, 4
heads x 16 channels, forward + backward of ``out.square().sum()``):

* ``gps_mixed_3_sizes``: 64 graphs of 8 nodes, 4 of 2,000 and 16 of 300 (``benchmarks/gpu.py``'s
  GPSConv batch);
* ``many_sizes``: 200 graphs of 10-599 nodes (167 distinct sizes);
* ``molecules``: 512 graphs of 10-39 nodes (30 distinct sizes).

Variants: ``sdpa`` (gtlib's default, one ``scaled_dot_product_attention`` call per block size),
``flex`` (one compiled ``flex_attention`` call over all blocks, ``dense_attention(...,
flex=True)``) and ``flex_compiled_mask`` (the same with ``create_block_mask(_compile=True)``).
Time is the median of 5 steps after one warm-up, memory ``torch.cuda.max_memory_allocated``
above what was allocated before. Writes JSON (default ``results/gpu-block-attention.json``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import write_json  # noqa: E402

WORKLOADS = {
    "gps_mixed_3_sizes": lambda g: [8] * 64 + [2000] * 4 + [300] * 16,
    "many_sizes": lambda g: torch.randint(10, 600, (200,), generator=g).tolist(),
    "molecules": lambda g: torch.randint(10, 40, (512,), generator=g).tolist(),
}
VARIANTS = ("sdpa", "flex", "flex_compiled_mask")


def measure(name: str, sizes: list[int], variant: str, heads=4, channels=16, repeat=5) -> dict:
    import torch.nn.attention.flex_attention as flex_module

    from gtlib.attention import Pattern
    from gtlib.attention.backends.dense import dense_attention

    original = flex_module.create_block_mask
    if variant == "flex_compiled_mask":
        flex_module.create_block_mask = functools.partial(original, _compile=True)
    counts = torch.tensor(sizes, device="cuda")
    pattern = Pattern.full(torch.arange(len(sizes), device="cuda").repeat_interleave(counts))
    n = int(counts.sum())
    q, k, v = (torch.randn(n, heads, channels, device="cuda", requires_grad=True) for _ in "qkv")

    def step() -> None:
        out = dense_attention(q, k, v, pattern, channels**-0.5, 0.0, None, flex=variant != "sdpa")
        out.square().sum().backward()

    row = {"workload": name, "variant": variant, "nodes": n, "distinct_sizes": len(set(sizes))}
    try:
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = []
        for _ in range(repeat):
            torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        row["ms"] = 1e3 * sorted(times)[len(times) // 2]
        row["peak_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
    except Exception as error:  # noqa: BLE001 - a variant that fails is recorded as such
        row["error"] = f"{type(error).__name__}: {error}"[:300]
    finally:
        flex_module.create_block_mask = original
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = Path(__file__).parent / "results" / "gpu-block-attention.json"
    parser.add_argument("--out", default=str(default))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_block_attention.py needs a CUDA device")
    generator = torch.Generator().manual_seed(0)
    rows = [
        measure(name, make(generator), variant)
        for name, make in WORKLOADS.items()
        for variant in VARIANTS
    ]
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
