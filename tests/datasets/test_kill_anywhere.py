"""Kill anywhere, resume exactly: :func:`simulate` and :func:`train_score` under ``SIGKILL``.

A driver process (this file run as a script, so torch is imported once) runs each job once
without interruption as the reference, then runs it again in forked children that it kills with
``SIGKILL``, resuming after every kill, until a child completes. Kills land

* at random instants (a timer in the driver), and
* inside the checkpoint writes, exactly: the child wraps the functions a write goes through and
  kills itself in the middle of one of them: after part of the snapshot bytes are appended, with
  a half-written sidecar/checkpoint temporary (``torch.save`` truncated), before and after the
  ``fsync`` and the ``os.replace`` of an atomic write, between the data sets of the final HDF5
  file.

Every completed run must equal the reference bit for bit (returned arrays and the file it wrote;
for ``train_score`` the weights, EMA weights, losses and the checkpoint), and its folder must hold
the result file alone: no ``.partial`` file, sidecar or temporary left.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork") or not hasattr(signal, "SIGKILL"), reason="needs fork and SIGKILL"
)


def _run_driver(tmp_path: Path, kills: int, seed: int, jobs: str, timeout: float) -> dict:
    report = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, __file__, "--dir", str(tmp_path), "--kills", str(kills)]
    command += ["--seed", str(seed), "--jobs", jobs, "--report", str(report)]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads(report.read_text())


def _check(report: dict, job: str, kills: int) -> None:
    summary = report[job]
    assert summary["failures"] == [], summary["failures"]
    assert summary["landed"] >= kills
    assert summary["runs_compared"] >= 1
    # Kills landed inside the writes, not only between them.
    assert summary["in_write"] >= 1, summary["by_kind"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _run_driver(
        tmp_path_factory.mktemp("kill"), kills=8, seed=0, jobs="simulate,train", timeout=300
    )


def test_simulate_resumes_exactly_after_sigkill(quick_report: dict) -> None:
    _check(quick_report, "simulate", 8)


def test_train_score_resumes_exactly_after_sigkill(quick_report: dict) -> None:
    _check(quick_report, "train", 8)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_many_kills(tmp_path: Path, seed: int) -> None:
    report = _run_driver(tmp_path, kills=60, seed=seed, jobs="simulate,train", timeout=1500)
    _check(report, "simulate", 60)
    _check(report, "train", 60)


# ------------------------------------------------------------------------------------------------
# The driver (runs in its own process; never imported by pytest's collection of the tests above)
class _Kill:
    """Patches that SIGKILL the (forked) child at the ``k``-th call of one write function."""

    def __init__(self, kind: str, k: int, fraction: float) -> None:
        self.kind, self.k, self.fraction, self.calls = kind, k, fraction, 0

    def due(self) -> bool:
        self.calls += 1
        return self.calls == self.k

    @staticmethod
    def now() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def install(self) -> None:  # noqa: C901 - one small wrapper per kind
        import h5py
        import torch

        import gtlib.datasets._particle_simulate as simulator  # where simulate() looks it up

        kill = self
        if self.kind == "append":
            real_append = simulator._append_snapshots

            def append(path: str, offset: int, data: bytes) -> None:
                if kill.due():
                    with open(path, "r+b" if os.path.exists(path) else "wb") as handle:
                        handle.seek(offset)
                        handle.write(data[: int(len(data) * kill.fraction)])
                        handle.flush()
                    kill.now()
                real_append(path, offset, data)

            simulator._append_snapshots = append
        elif self.kind == "torch.save":
            real_save = torch.save

            def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
                real_save(obj, f, *args, **kwargs)
                if kill.due():
                    size = os.path.getsize(f)
                    os.truncate(f, int(size * kill.fraction))
                    kill.now()

            torch.save = save
        elif self.kind in ("replace-before", "replace-after"):
            real_replace = os.replace

            def replace(src: Any, dst: Any) -> None:
                due = kill.due()
                if due and kill.kind == "replace-before":
                    kill.now()
                real_replace(src, dst)
                if due:
                    kill.now()

            os.replace = replace
        elif self.kind == "fsync":
            real_fsync = os.fsync

            def fsync(fd: int) -> None:
                if kill.due():
                    kill.now()
                real_fsync(fd)

            os.fsync = fsync
        elif self.kind == "create_dataset":
            real_create = h5py.Group.create_dataset

            def create_dataset(group: Any, *args: Any, **kwargs: Any) -> Any:
                result = real_create(group, *args, **kwargs)
                if kill.due():
                    group.file.flush()
                    kill.now()
                return result

            h5py.Group.create_dataset = create_dataset
        else:  # pragma: no cover - a typo in the driver
            raise ValueError(self.kind)


class _Counter:
    """Counts the calls of the hooked functions during the reference run."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __enter__(self) -> _Counter:
        import h5py
        import torch

        import gtlib.datasets._particle_simulate as simulator  # where simulate() looks it up

        def counting(kind: str, owner: Any, name: str) -> tuple[Any, str, Any]:
            real = getattr(owner, name)

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                self.counts[kind] = self.counts.get(kind, 0) + 1
                return real(*args, **kwargs)

            setattr(owner, name, wrapper)
            return owner, name, real

        self.saved = [
            counting("append", simulator, "_append_snapshots"),
            counting("torch.save", torch, "save"),
            counting("replace", os, "replace"),
            counting("fsync", os, "fsync"),
            counting("create_dataset", h5py.Group, "create_dataset"),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, real in self.saved:
            setattr(owner, name, real)


class _Job:
    name = ""
    kinds: tuple[str, ...] = ()

    def run(self, folder: Path) -> Any:
        raise NotImplementedError

    def compare(self, folder: Path, reference: Any) -> list[str]:
        raise NotImplementedError


class _Simulate(_Job):
    name = "simulate"
    kinds = ("append", "torch.save", "replace-before", "replace-after", "fsync", "create_dataset")

    def __init__(self) -> None:
        from gtlib.datasets.particles import ActiveOUParticles

        self.system = ActiveOUParticles(16, packing_fraction=0.35, v0=2.0, k=2.0, eps=0.1)
        self.kwargs = dict(burn_in=0.04, spacing=0.02, n_trajectories=2, seed=7, checkpoint_every=3)

    def run(self, folder: Path) -> Any:
        from gtlib.datasets.particles import simulate

        return simulate(self.system, 24, 1e-2, out=folder / "run.h5", progress=False, **self.kwargs)

    def compare(self, folder: Path, reference: Any) -> list[str]:
        import torch

        from gtlib.datasets.particles import load_trajectory

        problems = []
        loaded = load_trajectory(folder / "run.h5")
        again = self.run(folder)  # a complete file is read back
        for key in ("pos", "g", "time"):
            if not torch.equal(loaded[key], reference[key]):
                problems.append(f"file {key} differs")
            if not torch.equal(again[key], reference[key]):
                problems.append(f"returned {key} differs")
        return problems


class _Train(_Job):
    name = "train"
    kinds = ("torch.save", "replace-before", "replace-after", "fsync")

    def __init__(self) -> None:
        import torch

        generator = torch.Generator().manual_seed(3)
        self.data = torch.randn(256, 2, generator=generator, dtype=torch.float64) * 0.7

    def _model(self) -> Any:
        import torch

        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)
        ).double()

    def run(self, folder: Path) -> Any:
        from gtlib.entropy import train_score

        result = train_score(
            self._model(),
            self.data,
            sigma=0.2,
            steps=60,
            batch_size=16,
            lr=3e-3,
            checkpoint=folder / "ck.pt",
            checkpoint_every=4,
            progress=False,
            seed=5,
        )
        return {
            "model": {k: v.clone() for k, v in result.model.state_dict().items()},
            "raw": {k: v.clone() for k, v in result.raw_state_dict.items()},
            "losses": list(result.losses),
        }

    def compare(self, folder: Path, reference: Any) -> list[str]:
        import torch

        problems = []
        result = self.run(folder)  # the finished checkpoint is read back
        for part in ("model", "raw"):
            for key, value in reference[part].items():
                if not torch.equal(value, result[part][key]):
                    problems.append(f"{part} {key} differs")
        if result["losses"] != reference["losses"]:
            problems.append("losses differ")
        return problems


def _fresh_progress_locks() -> None:
    """Gives a forked child tqdm write locks of its own, as a freshly started process has.

    tqdm's write lock holds a process-shared semaphore created once in the parent (whose
    reference runs drew progress bars); a sibling killed while holding it (SIGKILL inside a
    progress-bar update) would leave it taken, and every later child would wait on it forever."""
    import tqdm.auto
    from tqdm import std

    std.TqdmDefaultWriteLock.th_lock = std.TRLock()
    if hasattr(std.TqdmDefaultWriteLock, "mp_lock"):
        del std.TqdmDefaultWriteLock.mp_lock
    lock = std.TqdmDefaultWriteLock()
    for cls in {std.tqdm, tqdm.auto.tqdm}:
        cls.set_lock(lock)


def _child(job: _Job, folder: Path, plan: _Kill | None) -> None:
    """Body of a forked child: never returns."""
    code = 0
    try:
        _fresh_progress_locks()
        if plan is not None:
            plan.install()
        job.run(folder)
    except BaseException:  # noqa: BLE001 - report anything, exit non-zero
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _fork_and_wait(job: _Job, folder: Path, plan: _Kill | None, delay: float | None) -> str:
    """Run the job in a forked child, killed after ``delay`` seconds when given.

    Returns ``"killed"``, ``"completed"`` or ``"failed"``.
    """
    pid = os.fork()
    if pid == 0:
        _child(job, folder, plan)
    if delay is not None:
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(min(0.002, max(0.0, deadline - time.monotonic())))
        else:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    else:
        _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    return "completed" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else "failed"


def _leftovers(folder: Path, expected: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != expected)


def _drive(job: _Job, base: Path, kills: int, rng: random.Random) -> dict:
    reference_dir = base / f"{job.name}-reference"
    reference_dir.mkdir()
    start = time.monotonic()
    with _Counter() as counter:
        reference = job.run(reference_dir)
    duration = time.monotonic() - start
    counts = dict(counter.counts)
    counts["replace-before"] = counts["replace-after"] = counts.get("replace", 0)
    kinds = [kind for kind in job.kinds if counts.get(kind, 0) > 0]
    expected = "run.h5" if job.name == "simulate" else "ck.pt"
    summary: dict[str, Any] = {
        "reference_seconds": duration,
        "hook_calls": counts,
        "landed": 0,
        "in_write": 0,
        "by_kind": {},
        "runs_compared": 0,
        "most_kills_in_one_run": 0,
        "failures": [],
    }
    episode = 0
    while summary["landed"] < kills or summary["runs_compared"] == 0:
        episode += 1
        folder = base / f"{job.name}-{episode}"
        folder.mkdir()
        landed_before = summary["landed"]
        while True:
            budget_left = summary["landed"] < kills
            if budget_left and rng.random() < 0.5:
                kind = rng.choice(kinds)
                plan = _Kill(kind, rng.randint(1, counts[kind]), rng.random())
                outcome = _fork_and_wait(job, folder, plan, None)
            elif budget_left:
                kind = "timer"
                outcome = _fork_and_wait(job, folder, None, rng.uniform(0.0, 1.2 * duration))
            else:
                kind = "none"
                outcome = _fork_and_wait(job, folder, None, None)
            if outcome == "failed":
                summary["failures"].append(f"episode {episode}: the child failed ({kind})")
                return summary
            if outcome == "killed":
                summary["landed"] += 1
                summary["in_write"] += kind != "timer"
                summary["by_kind"][kind] = summary["by_kind"].get(kind, 0) + 1
                continue
            break
        summary["most_kills_in_one_run"] = max(
            summary["most_kills_in_one_run"], summary["landed"] - landed_before
        )
        problems = job.compare(folder, reference)
        left = _leftovers(folder, expected)
        if left:
            problems.append(f"files left: {left}")
        summary["failures"] += [f"episode {episode}: {p}" for p in problems]
        summary["runs_compared"] += 1
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--kills", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", default="simulate,train")
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    jobs = {"simulate": _Simulate, "train": _Train}
    report = {}
    for name in args.jobs.split(","):
        report[name] = _drive(jobs[name](), args.dir, args.kills, rng)
    args.report.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
