"""Data-parallel training: every trainer under torchrun with two CPU processes (gloo).

For each entry point (``train_score``, ``examples/pde/train_operator.py``,
``examples/ogb/node_classification.py`` with gatv2 and LargeGT,
``examples/ogb/graph_classification.py``, ``examples/entropy/mips.py``) the tests check that

- two processes with per-process batch ``B`` take the steps of one process with batch ``2B`` on
  the same data and seed (parameters equal to float32 round-off),
- a checkpoint written by the two-process run resumes in one process and continues as an
  uninterrupted one-process run does,
- the evaluation metrics (gathered over the processes) are those of one process,
- only rank 0 writes files (an audit hook in every process records each file it opens for
  writing, renames, creates or removes under the test folder).

Every two-process run happens in ONE ``python -m torch.distributed.run --nproc_per_node 2`` launch
of this file (its ``__main__`` part is the driver; it runs the jobs one after the other in the
same process group), so the interpreter start and the imports are paid once; the one-process
runs call the scripts' ``main(argv)`` in the test process.

Parameters compared with a tolerance above float32 round-off: Adam divides each step by the
gradient's magnitude, so parameters whose gradient vanishes mathematically (the key bias of
softmax attention, biases in front of a normalisation) move by round-off-driven steps that differ
between any two summation orders. The node model therefore has one layer (no BatchNorm after its
biases) and the graph model's parameters are compared with ``atol=2e-4``; everything else agrees
to ~1e-6.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PDE_SCRIPT = EXAMPLES / "pde" / "train_operator.py"
NODE_SCRIPT = EXAMPLES / "ogb" / "node_classification.py"
GRAPH_SCRIPT = EXAMPLES / "ogb" / "graph_classification.py"
MIPS_SCRIPT = EXAMPLES / "entropy" / "mips.py"

# 17 training samples, global batch 8: batches of 8, 8 and 1 (rank 1 runs a placeholder)
PDE_ARGS = ["--model", "fno", "--n-train", "17", "--n-test", "7", "--resolution", "16",
            "--width", "8", "--modes", "4", "--layers", "2", "--scheduler", "cosine",
            "--epochs", "2", "--eval-resolution", "31", "--no-progress"]  # fmt: skip
NODE_ARGS = ["--num-nodes", "300", "--num-features", "16", "--num-classes", "5", "--hidden", "16",
             "--heads", "2", "--layers", "1", "--lr", "0.01", "--no-progress"]  # fmt: skip
GRAPH_ARGS = ["--num-graphs", "120", "--avg-nodes", "8", "--hidden", "16", "--heads", "2",
              "--layers", "1", "--pe", "rwse", "--walk-length", "8", "--norm", "layer",
              "--dropout", "0", "--attn-dropout", "0", "--no-progress"]  # fmt: skip
MIPS_ARGS = ["--particles", "16", "--snapshots", "6", "--trajectories", "4", "--burn-in", "0.2",
             "--spacing", "0.05", "--dt", "0.005", "--hidden", "16", "--layers", "1",
             "--heads", "2", "--ff", "16", "--neighbors", "4", "--steps", "6", "--bins", "4",
             "--eval-batch-size", "4", "--checkpoint-every", "100", "--no-progress"]  # fmt: skip
MIPS_FILE = "aoup_n16_phi0.6_v1_g1_s6x4_seed0.h5"  # what mips.py names the simulated data
SCORE_CONFIGS = {  # train_score: the noise of the global batch must be drawn as one process does
    "dsm": {"loss": "dsm", "sigma": 0.3},
    "sliced": {"loss": "sliced", "loss_kwargs": {"probe": "rademacher"}},
}
SCORE_STEPS, SCORE_STOP, SCORE_BATCH = 6, 3, 4  # per-rank batch 4 = one process with 8


# ----------------------------------------------------------------------------- shared helpers
def score_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
    ).double()


def score_data() -> torch.Tensor:
    return torch.randn(64, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


class Stop(Exception):
    """Raised by a train_score callback to interrupt a run (train_score checkpoints first)."""


def run_score(name: str, batch_size: int, checkpoint: Path, stop: int | None = None):
    """train_score on the toy problem; ``stop``: interrupt after that step."""
    from gtlib.entropy import train_score

    def callback(step: int, loss: float, model: torch.nn.Module) -> None:
        if step == stop:
            raise Stop

    try:
        return train_score(score_model(), score_data(), steps=SCORE_STEPS, batch_size=batch_size,
                           progress=False, seed=3, checkpoint=checkpoint, callback=callback,
                           **SCORE_CONFIGS[name])  # fmt: skip
    except Stop:
        return None


def load_script(path: Path, name: str):
    """Import an example script from its file (``examples/ogb`` on sys.path for ``_common``)."""
    if path.parent.name == "ogb" and str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------- the driver (under torchrun)
def _audit(watch: str, records: list) -> None:
    """Record every write-like file operation under ``watch`` (Python audit events)."""
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if isinstance(mode, str):
                writing = any(c in mode for c in "wax+")
            else:
                writing = bool(isinstance(flags, int) and flags & write_flags)
        elif event in ("os.rename", "os.remove", "os.rmdir", "os.truncate"):
            path, writing = args[1] if event == "os.rename" else args[0], True
        elif event == "os.mkdir":  # makedirs(exist_ok=True) on an existing folder changes nothing
            path, writing = args[0], not os.path.isdir(args[0])
        else:
            return
        if not writing or isinstance(path, int) or path is None:
            return
        path = os.path.abspath(os.fsdecode(path))
        if path.startswith(watch):
            records.append([event, path])

    sys.addaudithook(hook)


def _library_checks() -> dict[str, Any]:
    """Collectives, sampler and DDP helpers with two real processes."""
    from gtlib import distributed as d

    rank, world = d.get_rank(), d.get_world_size()
    assert world == 2 and d.is_distributed() and d.is_main() == (rank == 0)
    assert d.all_reduce(rank + 1) == 3 and d.all_reduce(float(rank), "mean") == 0.5
    assert d.all_reduce(rank, "max") == 1 and d.all_reduce(rank, "min") == 0
    assert torch.equal(d.all_reduce(torch.tensor([rank, 1])), torch.tensor([1, 2]))
    part = torch.arange(3.0) if rank == 0 else torch.empty(0)  # uneven, one part empty
    assert torch.equal(d.all_gather_cat(part), torch.arange(3.0))
    flags = torch.tensor([rank == 0, True, False])
    assert d.all_gather_cat(flags).tolist() == [True, True, False, False, True, False]
    assert d.broadcast_object({"rank": rank}) == {"rank": 0}
    assert d.on_main(lambda: d.get_rank()) == 0
    try:
        d.on_main(lambda: int("x"))
    except ValueError as exc:  # rank 0's error reaches every rank
        assert "invalid literal" in str(exc)
    else:
        raise AssertionError("on_main did not re-raise")
    sampler = d.ShardedBatchSampler(10, 2, shuffle=True, seed=1)
    assert (sampler.rank, sampler.world_size, len(sampler)) == (rank, 2, 3)
    mine = [index for batch in sampler for index in batch]
    everything = d.all_gather_cat(torch.tensor(mine))
    assert sorted(everything.tolist()) == list(range(10))
    assert d.shard(list(range(5))) == ([0, 1, 2] if rank == 0 else [3, 4])
    assert d.mean_weight(rank + 1) == pytest.approx((rank + 1) * 2 / 3)
    torch.manual_seed(rank)  # different weights: wrap_ddp and broadcast_module sync them
    model = torch.nn.Linear(3, 1)
    ddp = d.wrap_ddp(model)
    assert d.unwrap(ddp) is model and ddp is not model
    reference = d.broadcast_object([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference))
    model.weight.grad = torch.full_like(model.weight, float(rank))
    d.all_reduce_gradients(model)  # bias: no gradient anywhere, stays None
    assert torch.all(model.weight.grad == 0.5) and model.bias.grad is None
    # LargeGT's codebook (k-means EMA buffers, BatchNorm statistics, node assignments) learns
    # from the whole global batch on every rank, as one process with the doubled batch does
    import copy

    from gtlib.nn import LargeGT

    torch.manual_seed(3)
    large = LargeGT(4, 6, 3, num_tokens=3, num_nodes=20, mode="global", num_centroids=5,
                    global_dim=4, dropout=0.0)  # fmt: skip
    single = copy.deepcopy(large)
    query_in, n_id = torch.randn(8, large.codebook.size(1)), torch.randperm(20)[:8]
    half = slice(4 * rank, 4 * rank + 4)
    large.update_codebook(query_in[half], n_id[half])
    rows = slice(None) if rank == 0 else slice(0, 0)  # the reference: one rank, all 8 rows
    single.update_codebook(query_in[rows], n_id[rows])
    for name, buffer in single.named_buffers():
        assert torch.allclose(dict(large.named_buffers())[name], buffer, atol=1e-6), name
    return {"world_size": world, "gathered": everything.tolist(), "codebook_equal": True}


def _driver(spec_path: str) -> None:
    from datetime import timedelta

    from gtlib import distributed as d

    spec = json.loads(Path(spec_path).read_text())
    records: list = []
    _audit(spec["watch"], records)
    torch.set_num_threads(1)
    assert d.init_distributed(timeout=timedelta(seconds=120))  # this driver owns the group
    with d.distributed_session() as owns:  # already initialised: the scripts' mains reuse it
        assert owns is False
        modules: dict[str, Any] = {}
        summary: dict[str, Any] = {}
        for job in spec["jobs"]:
            if job["kind"] == "library":
                summary["library"] = _library_checks()
            elif job["kind"] == "train_score":
                run_score(job["name"], SCORE_BATCH, Path(job["checkpoint"]), stop=SCORE_STOP)
            else:
                path = Path(job["script"])
                if path not in modules:
                    modules[path] = load_script(path, f"ddp_{path.stem}")
                modules[path].main(job["argv"])
        audits = [None] * d.get_world_size()
        torch.distributed.all_gather_object(audits, records)
        if d.is_main():
            summary["audit"] = audits
            Path(spec["result"]).write_text(json.dumps(summary))
    d.destroy_distributed()
    # In one CI run (of several) rank 0 aborted in interpreter teardown after all of the above had
    # finished ("terminate called without an active exception": a c10d/gloo thread destroyed
    # while joinable). Everything this driver checks is written by now, so it leaves without
    # the teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ----------------------------------------------------------------------------- test fixtures
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ddp")


@pytest.fixture(scope="module")
def two(work: Path) -> dict[str, Any]:
    """Every two-process run, in one torchrun launch; returns the driver's summary."""
    runs, data = work / "two", work / "data"
    pde = ["--root", data / "pde", *PDE_ARGS, "--batch-size", "4", "--stop-after", "1"]
    node = ["--root", data / "ogb", *NODE_ARGS]
    graph = ["--root", data / "ogb", *GRAPH_ARGS, "--batch-size", "16", "--epochs", "1"]
    mips = ["--root", data / "mips", *MIPS_ARGS, "--batch-size", "2"]
    jobs = [
        {"kind": "library"},
        *({"kind": "train_score", "name": name, "checkpoint": str(runs / f"score_{name}.pt")}
          for name in SCORE_CONFIGS),  # fmt: skip
        {"script": PDE_SCRIPT, "argv": [*pde, "--out", runs / "pde"]},
        {"script": NODE_SCRIPT, "argv": [*node, "--batch-size", "32", "--epochs", "1",
                                         "--checkpoint", runs / "node.pt",
                                         "--out", runs / "node.json"]},  # fmt: skip
        {"script": NODE_SCRIPT, "argv": [*node, "--model", "largegt", "--num-tokens", "4",
                                         "--batch-size", "32", "--epochs", "1",
                                         "--out", runs / "largegt.json"]},  # fmt: skip
        {"script": GRAPH_SCRIPT, "argv": [*graph, "--checkpoint", runs / "graph.pt",
                                          "--out", runs / "graph.json"]},  # fmt: skip
        {"script": MIPS_SCRIPT, "argv": [*mips, "--checkpoint", runs / "mips/ck.pt",
                                         "--out", runs / "mips"]},  # fmt: skip
        {"script": MIPS_SCRIPT, "argv": [*mips, "--checkpoint", runs / "mips_stop.pt",
                                         "--stop-after", "3", "--out", runs / "mips_stop"]},
    ]  # fmt: skip
    for job in jobs:
        job.setdefault("kind", "script")
        job["argv"] = [str(arg) for arg in job.get("argv", [])]
        if "script" in job:
            job["script"] = str(job["script"])
    spec = {"watch": str(work), "jobs": jobs, "result": str(work / "summary.json")}
    (work / "spec.json").write_text(json.dumps(spec))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master-port", str(free_port()), __file__, str(work / "spec.json")]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=work,
                            timeout=600)  # fmt: skip
    output = f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert result.returncode == 0, f"torchrun failed:\n{output}"
    summary = json.loads((work / "summary.json").read_text())
    summary["runs"], summary["data"] = runs, data
    return summary


def states_close(first: dict, second: dict, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(
            first[key].double(), second[key].double(), atol=atol, rtol=rtol, msg=key
        )


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def approx(value, tol: float = 1e-5):
    return pytest.approx(value, rel=tol, abs=tol)


# -------------------------------------------------------------------- single-process library
def test_one_process_helpers_are_no_ops() -> None:
    from gtlib import distributed as d

    assert d.init_distributed() is False and not d.is_distributed()
    assert (d.get_rank(), d.get_world_size(), d.is_main()) == (0, 1, True)
    assert d.all_reduce(3) == 3 and d.all_reduce(2.5, "mean") == 2.5
    x = torch.arange(4.0)
    assert d.all_gather_cat(x) is x and d.broadcast_object(x) is x
    assert d.on_main(lambda a: a + 1, 1) == 2
    assert d.mean_weight(3) == 1.0 and torch.equal(d.shard(x), x)
    model = torch.nn.Linear(2, 2)
    assert d.wrap_ddp(model) is model and d.unwrap(model) is model
    with d.main_first():
        pass
    d.barrier()
    assert d.resolve_device("cpu") == torch.device("cpu")


def test_shard_bounds_partition() -> None:
    from gtlib.distributed import shard, shard_bounds

    for total in (0, 1, 5, 8):
        for world in (1, 2, 3):
            parts = [shard(list(range(total)), rank, world) for rank in range(world)]
            assert sum(parts, []) == list(range(total))
            sizes = [len(p) for p in parts]
            assert sizes == [t.numel() for t in torch.tensor_split(torch.arange(total), world)]
            assert shard_bounds(total, world - 1, world)[1] == total


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world", [2, 3])
def test_sampler_union_is_the_one_process_batch(world: int, drop_last: bool) -> None:
    """World size W with batch B yields, step by step, the batches of one process with B*W."""
    from gtlib.distributed import ShardedBatchSampler

    n, batch = 23, 3
    single = ShardedBatchSampler(n, batch * world, shuffle=True, seed=7, drop_last=drop_last)
    ranks = [
        ShardedBatchSampler(
            n, batch, shuffle=True, seed=7, drop_last=drop_last, rank=r, world_size=world
        )  # fmt: skip
        for r in range(world)
    ]
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        expected = list(single)
        shares = ranks[0].shares()
        per_rank = [list(sampler) for sampler in ranks]
        assert len(expected) == len(shares) == len(ranks[0])
        for step, batch_indices in enumerate(expected):
            real = [per_rank[r][step][: shares[step][r]] for r in range(world)]
            assert sum(real, []) == batch_indices  # the union, in order
            for r in range(world):  # a placeholder is one index of the batch
                if shares[step][r] == 0:
                    assert per_rank[r][step] == batch_indices[:1]
        covered = sorted(i for b in expected for i in b)
        assert covered == (sorted(covered) if drop_last else list(range(n)))
    assert list(single) != list(ShardedBatchSampler(n, batch * world, shuffle=True, seed=9))
    state = ranks[0].state_dict()
    other = ShardedBatchSampler(n, batch * world)
    other.load_state_dict(state)
    assert other.epoch == 1 and other.seed == 7


def test_sampler_and_helpers_reject_bad_arguments() -> None:
    from gtlib.distributed import ShardedBatchSampler, all_reduce, shard

    with pytest.raises(ValueError, match="batch_size"):
        ShardedBatchSampler(10, 0)
    with pytest.raises(TypeError, match="batch_size"):
        ShardedBatchSampler(10, 2.0)
    with pytest.raises(TypeError, match="data_source"):
        ShardedBatchSampler(object(), 2)
    with pytest.raises(ValueError, match="rank"):
        ShardedBatchSampler(10, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="epoch"):
        ShardedBatchSampler(10, 2).set_epoch(-1)
    with pytest.raises(ValueError, match="op"):
        all_reduce(1, "prod")
    with pytest.raises(TypeError, match="value"):
        all_reduce("1")
    with pytest.raises(TypeError, match="items"):
        shard(3)


def test_largegt_loader_shards_seed_nodes() -> None:
    """Two ranks' LargeGTLoader batches are the halves of one process's doubled batches."""
    from torch_geometric.data import Data

    from gtlib.distributed import ShardedBatchSampler
    from gtlib.loader import LargeGTLoader

    generator = torch.Generator().manual_seed(0)
    graph = Data(x=torch.randn(30, 4, generator=generator),
                 edge_index=torch.randint(30, (2, 90), generator=generator))  # fmt: skip
    shared = LargeGTLoader.preprocess(graph)
    seeds = torch.arange(3, 27)
    single = LargeGTLoader(shared, input_nodes=seeds, num_tokens=3, batch_size=8, shuffle=True,
                           distributed=True, seed=4)  # fmt: skip
    single.set_epoch(2)
    expected = [batch.n_id.tolist() for batch in single]
    parts = []
    for rank in range(2):
        sampler = ShardedBatchSampler(seeds.numel(), 4, shuffle=True, seed=4, rank=rank,
                                      world_size=2)  # fmt: skip
        sampler.set_epoch(2)
        loader = LargeGTLoader(shared, input_nodes=seeds, num_tokens=3, batch_sampler=sampler)
        parts.append([batch.n_id.tolist() for batch in loader])
    assert [a + b for a, b in zip(*parts)] == expected
    assert sorted(sum(expected, [])) == seeds.tolist()
    assert "batch_size=8" in repr(single)
    with pytest.raises(TypeError, match="distributed"):
        LargeGTLoader(shared, distributed=1)


# ------------------------------------------------------------------------- two-process runs
def test_library_under_two_processes(two: dict) -> None:
    assert two["library"]["world_size"] == 2
    assert sorted(two["library"]["gathered"]) == list(range(10))
    assert two["library"]["codebook_equal"]


def test_only_rank_zero_writes(two: dict) -> None:
    rank0, rank1 = two["audit"]
    assert rank1 == [], f"rank 1 wrote: {rank1[:10]}"
    written = {Path(path).name for _, path in rank0}
    assert {"checkpoint.pt", "results.json", "node.pt", "graph.json", "model.pt"} <= written
    runs = two["runs"]
    assert sorted(p.name for p in (runs / "pde").iterdir()) == [
        "checkpoint.pt", "prediction.png", "results.json"]  # fmt: skip
    assert not [p for p in runs.rglob("*") if p.name.endswith(".tmp")]  # atomic writes only


def test_train_score_matches_one_process(two: dict, tmp_path: Path, one_thread) -> None:
    """Global-batch noise: 2 x B == 1 x 2B, and the 2-process checkpoint resumes in one."""
    for name in SCORE_CONFIGS:
        two_checkpoint = load(two["runs"] / f"score_{name}.pt")
        assert two_checkpoint["step"] == SCORE_STOP
        assert two_checkpoint["config"]["global_batch_size"] == 2 * SCORE_BATCH
        run_score(name, 2 * SCORE_BATCH, tmp_path / f"{name}_one.pt", stop=SCORE_STOP)
        one_checkpoint = load(tmp_path / f"{name}_one.pt")
        states_close(two_checkpoint["model"], one_checkpoint["model"], atol=1e-12)
        states_close(two_checkpoint["ema"], one_checkpoint["ema"], atol=1e-12)
        assert two_checkpoint["losses"] == approx(one_checkpoint["losses"], 1e-10)
        resumed_path = tmp_path / f"{name}_resumed.pt"
        shutil.copy(two["runs"] / f"score_{name}.pt", resumed_path)
        resumed = run_score(name, 2 * SCORE_BATCH, resumed_path)
        straight = run_score(name, 2 * SCORE_BATCH, tmp_path / f"{name}_straight.pt")
        assert resumed.resumed_from == SCORE_STOP
        states_close(resumed.raw_state_dict, straight.raw_state_dict, atol=1e-12)
        assert resumed.losses == approx(straight.losses, 1e-10)
        with pytest.raises(ValueError, match="global batch"):  # another global batch: refused
            run_score(name, SCORE_BATCH, resumed_path)


def test_train_operator_matches_one_process(two: dict, work: Path, one_thread) -> None:
    script = load_script(PDE_SCRIPT, "ddp_test_train_operator")
    common = ["--root", str(two["data"] / "pde"), *PDE_ARGS, "--batch-size", "8"]
    twice = two["runs"] / "pde"
    one = work / "one" / "pde"
    payload = script.main([*common, "--stop-after", "1", "--out", str(one)])
    saved = json.loads((twice / "results.json").read_text())
    assert saved["config"]["world_size"] == 2 and saved["config"]["global_batch_size"] == 8
    states_close(load(twice / "checkpoint.pt")["model"], load(one / "checkpoint.pt")["model"])
    for key in ("train_loss", "test_rel_l2", "test_median_rel_l1_pct"):
        assert saved["history"][0][key] == approx(payload["history"][0][key]), key
    for key in ("test_rel_l2", "test_median_rel_l1_pct"):  # sharded test set, gathered
        assert saved[key] == approx(payload[key]), key
    assert saved["zero_shot"]["supported"] and saved["zero_shot"]["n"] == 7
    assert saved["zero_shot"]["rel_l2"] == approx(payload["zero_shot"]["rel_l2"])
    # the 2-process checkpoint continues in one process as the 1-process one does
    shutil.copytree(twice, work / "one" / "pde_resumed")
    shutil.copytree(one, work / "one" / "pde_straight")
    resumed = script.main([*common, "--resume", "--out", str(work / "one" / "pde_resumed")])
    straight = script.main([*common, "--resume", "--out", str(work / "one" / "pde_straight")])
    assert resumed["epochs_run"] == 2 and resumed["finished"]
    states_close(load(work / "one" / "pde_resumed" / "checkpoint.pt")["model"],
                 load(work / "one" / "pde_straight" / "checkpoint.pt")["model"])  # fmt: skip
    for key in ("train_loss", "test_rel_l2"):
        assert [r[key] for r in resumed["history"]] == approx([r[key] for r in straight["history"]])


def _ogb_compare(two: dict, work: Path, script_path: Path, name: str, argv: list[str],
                 batch: int, atol: float) -> None:  # fmt: skip
    """One process with the doubled batch vs the 2-process run, then resume in one process."""
    script = load_script(script_path, f"ddp_test_{script_path.stem}")
    common = [*argv, "--batch-size", str(batch)]
    one = work / "one"
    one.mkdir(exist_ok=True)
    script.main([*common, "--epochs", "1", "--checkpoint", str(one / f"{name}.pt"),
                 "--out", str(one / f"{name}.json")])  # fmt: skip
    twice = json.loads((two["runs"] / f"{name}.json").read_text())
    once = json.loads((one / f"{name}.json").read_text())
    assert twice["config"]["world_size"] == 2 and twice["config"]["global_batch_size"] == batch
    states_close(load(two["runs"] / f"{name}.pt")["model"], load(one / f"{name}.pt")["model"],
                 atol=atol)  # fmt: skip
    for key in ("loss", "train", "valid", "test"):  # gathered evaluation == one process's
        assert twice["history"][0][key] == approx(once["history"][0][key]), key
    for source, target in ((two["runs"] / f"{name}.pt", one / f"{name}_resumed.pt"),
                           (one / f"{name}.pt", one / f"{name}_straight.pt")):  # fmt: skip
        shutil.copy(source, target)
        script.main([*common, "--epochs", "2", "--resume", "--checkpoint", str(target),
                     "--out", str(target.with_suffix(".json"))])  # fmt: skip
    resumed = json.loads((one / f"{name}_resumed.json").read_text())
    straight = json.loads((one / f"{name}_straight.json").read_text())
    assert resumed["epochs_run"] == 2
    states_close(load(one / f"{name}_resumed.pt")["model"],
                 load(one / f"{name}_straight.pt")["model"], atol=atol)  # fmt: skip
    for key in ("loss", "train", "valid", "test"):
        assert [r[key] for r in resumed["history"]] == approx([r[key] for r in straight["history"]])


def test_node_classification_matches_one_process(two: dict, work: Path, one_thread) -> None:
    argv = ["--root", str(two["data"] / "ogb"), *NODE_ARGS]
    _ogb_compare(two, work, NODE_SCRIPT, "node", argv, batch=64, atol=1e-6)


def test_largegt_runs_sharded(two: dict) -> None:
    """LargeGT under DDP: sharded seeds, gathered evaluation over all nodes (its BatchNorm,
    token sampling and codebook are per process on CPUs, so no equality with one process)."""
    payload = json.loads((two["runs"] / "largegt.json").read_text())
    assert payload["config"]["model"] == "largegt" and payload["epochs_run"] == 1
    assert payload["config"]["global_batch_size"] == 64
    assert all(0.0 <= payload["best"][part] <= 1.0 for part in ("train", "valid", "test"))


def test_graph_classification_matches_one_process(two: dict, work: Path, one_thread) -> None:
    argv = ["--root", str(two["data"] / "ogb"), *GRAPH_ARGS]
    _ogb_compare(two, work, GRAPH_SCRIPT, "graph", argv, batch=32, atol=2e-4)


def test_mips_matches_one_process(two: dict, work: Path, one_thread) -> None:
    script = load_script(MIPS_SCRIPT, "ddp_test_mips")
    data = two["data"] / "mips" / MIPS_FILE
    common = ["--data", str(data), *MIPS_ARGS, "--batch-size", "4"]
    one = work / "one" / "mips"
    payload = script.main([*common, "--checkpoint", str(one / "ck.pt"), "--out", str(one)])
    twice_dir = two["runs"] / "mips"
    twice = json.loads((twice_dir / "results.json").read_text())
    assert twice["world_size"] == 2 and twice["global_batch_size"] == 4
    assert {p.name for p in twice_dir.iterdir()} == {
        "ck.pt", "model.pt", "results.json", "epr_map.png", "epr_hist.png"}  # fmt: skip
    two_state, one_state = load(twice_dir / "ck.pt"), load(one / "ck.pt")
    states_close(two_state["model"], one_state["model"])
    assert two_state["losses"] == approx(one_state["losses"])
    for key in ("total", "per_particle_mean", "score_free", "divergence"):
        assert twice["held_out"][key] == approx(payload["held_out"][key], 1e-4), key
    classes = payload["held_out"]["by_density"]  # gas / interface / bulk (class_means is tested)
    assert sum(c["fraction_of_particles"] for c in classes.values()) == approx(1.0)
    for name, item in classes.items():
        other = twice["held_out"]["by_density"][name]
        assert other["fraction_of_particles"] == item["fraction_of_particles"], name
        if math.isnan(item["mean_per_particle"]):  # a class no held-out particle is in
            assert other["mean_per_particle"] is None, name  # NaN is null in the JSON
        else:
            assert other["mean_per_particle"] == approx(item["mean_per_particle"], 1e-4), name
    # interrupted with 2 processes at step 3, finished in one
    resumed_path = work / "one" / "mips_resumed.pt"
    assert load(two["runs"] / "mips_stop.pt")["step"] == 3
    shutil.copy(two["runs"] / "mips_stop.pt", resumed_path)
    resumed = script.main([*common, "--checkpoint", str(resumed_path),
                           "--out", str(work / "one" / "mips_resumed")])  # fmt: skip
    assert resumed["resumed_from"] == 3
    states_close(load(resumed_path)["model"], one_state["model"])
    assert resumed["held_out"]["total"] == approx(payload["held_out"]["total"], 1e-4)


if __name__ == "__main__":  # the driver: python -m torch.distributed.run ... test_distributed.py
    _driver(sys.argv[1])
