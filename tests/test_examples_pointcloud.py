"""examples/pointcloud/place_recognition.py --quick end to end: results, checkpoints and an
exact resume (loaded from its file; ``main(argv)`` runs in-process at one thread)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "pointcloud" / "place_recognition.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("pointcloud_place_recognition", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_quick_run_and_exact_resume(script, tmp_path):
    data = tmp_path / "data.h5"
    common = ["--quick", "--no-progress", "--data", str(data)]
    from gtlib.datasets.generate import place_recognition

    place_recognition(24, data, points=96, seed=0, progress=False)
    full = script.main([*common, "--out", str(tmp_path / "full")])
    saved = json.loads((tmp_path / "full" / "results.json").read_text())
    assert saved["models"].keys() == {"octree", "knn"}
    octree, knn = saved["models"]["octree"], saved["models"]["knn"]
    assert octree["num_parameters"] == knn["num_parameters"]  # the same size
    for model in (octree, knn):
        assert model["epochs_run"] == 2 and len(model["history"]) == 2
        for task in ("ground_to_aerial", "ground_to_ground"):
            for key in ("recall@1", "recall@1%"):
                assert 0.0 <= model[task][key] <= 1.0
        assert all(math.isfinite(h["loss"]) for h in model["history"])
    for name in ("octree", "knn"):
        assert (tmp_path / "full" / name / "checkpoint.pt").exists()
    assert saved["test_places"] == 24 - 16 - 2  # splits 0.7 / 0.1 / 0.2

    # stop after one epoch, resume: the same losses and recalls as the uninterrupted run
    part = tmp_path / "part"
    one = [*common, "--models", "octree", "--out", str(part)]
    script.main([*one, "--stop-after", "1"])
    resumed = script.main([*one, "--resume"])
    for name in ("octree",):
        a, b = full["models"][name], resumed["models"][name]
        assert [h["loss"] for h in a["history"]] == pytest.approx(
            [h["loss"] for h in b["history"]], rel=1e-6
        )
        assert a["ground_to_aerial"] == b["ground_to_aerial"]
    with pytest.raises(SystemExit):
        script.main([*one, "--resume", "--lr", "0.01"])
