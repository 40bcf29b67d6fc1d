"""examples/pointcloud/place_recognition.py --quick end to end: results, checkpoints, model
selection on the valid places and an exact resume (loaded from its file; ``main(argv)`` runs
in-process at one thread)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "pointcloud" / "place_recognition.py"


def load_script(name: str, path: Path):
    """An example script loaded as a module (examples are not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script("pointcloud_place_recognition", SCRIPT)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def numbers(model: dict) -> dict:
    """The numbers of a model's results that a resume must reproduce bitwise (not the times)."""
    keep = {k: v for k, v in model.items() if k not in ("training_time_s", "valid_time_s")}
    keep["history"] = [{k: v for k, v in h.items() if not k.endswith("time_s")}
                       for h in model["history"]]  # fmt: skip
    return keep


def test_quick_run_selection_and_exact_resume(script, tmp_path):
    data = tmp_path / "data.h5"
    common = ["--quick", "--no-progress", "--data", str(data)]
    from gtlib.datasets.generate import place_recognition

    place_recognition(24, data, points=96, seed=0, progress=False)
    full = script.main([*common, "--out", str(tmp_path / "full")])
    saved = json.loads((tmp_path / "full" / "results.json").read_text())
    assert saved["models"].keys() == {"octree", "knn"}
    octree, knn = saved["models"]["octree"], saved["models"]["knn"]
    assert octree["num_parameters"] == knn["num_parameters"]  # the same size
    assert (saved["train_places"], saved["valid_places"], saved["test_places"]) == (16, 2, 6)
    for name, model in saved["models"].items():
        assert model["epochs_run"] == 2 and len(model["history"]) == 2
        assert model["selection"] == script.SELECTION
        for result in (model, model["last_epoch"], model["best_valid"]):
            for task in ("ground_to_aerial", "ground_to_ground"):
                for key in ("recall@1", "recall@1%"):
                    assert 0.0 <= result[task][key] <= 1.0
        assert all(math.isfinite(h["loss"]) for h in model["history"])
        assert model["last_epoch"]["epoch"] == 2

        # the best epoch: the first epoch of the highest valid score, its valid recalls recorded
        scores = [script.selection_score(h["valid"]) for h in model["history"]]
        best = model["best_epoch"]
        assert 1 <= best <= 2 and scores[best - 1] == max(scores)
        assert max(scores)[0] == max(h["valid"]["ground_to_aerial"]["recall@1"]
                                     for h in model["history"])  # fmt: skip
        assert all(s < max(scores) for s in scores[: best - 1])
        assert model["best_valid"] == model["history"][best - 1]["valid"]

        # best.pt holds the best epoch's weights: they give the reported test recalls
        folder = tmp_path / "full" / name
        assert (folder / "checkpoint.pt").exists()
        best_file = torch.load(folder / "best.pt", map_location="cpu", weights_only=False)
        assert best_file["epoch"] == best and best_file["valid"] == model["best_valid"]
        net = script.build(script.parse_args(common), name)
        net.load_state_dict(best_file["model"])
        data_dict = script.read_place_recognition(data)
        data_dict["ground"] = data_dict["ground"].float()
        data_dict["aerial"] = data_dict["aerial"].float()
        test_idx = torch.nonzero(data_dict["split"] == 2).view(-1)
        test = script.evaluate(net, data_dict, test_idx)
        assert test["ground_to_aerial"] == model["ground_to_aerial"]
        assert test["ground_to_ground"] == model["ground_to_ground"]
        if best == 2:
            assert model["last_epoch"]["ground_to_aerial"] == model["ground_to_aerial"]

    # stop after one epoch, resume: bitwise the same results as the uninterrupted run
    part = tmp_path / "part"
    script.main([*common, "--out", str(part), "--stop-after", "1"])
    resumed = script.main([*common, "--out", str(part), "--resume"])
    for name in ("octree", "knn"):
        assert numbers(resumed["models"][name]) == numbers(full["models"][name])
    with pytest.raises(SystemExit):
        script.main([*common, "--out", str(part), "--resume", "--lr", "0.01"])

    # a finished run extended by one epoch, one model only: bitwise the 3-epoch run from scratch
    longer = script.main([*common, "--out", str(tmp_path / "longer"), "--epochs", "3",
                          "--models", "octree"])  # fmt: skip
    extended = script.main([*common, "--out", str(part), "--resume", "--epochs", "3",
                            "--models", "octree"])  # fmt: skip
    assert extended["models"]["octree"]["epochs_run"] == 3
    assert numbers(extended["models"]["octree"]) == numbers(longer["models"]["octree"])
    # the kNN model was not run again: its results stay in results.json
    kept = json.loads((part / "results.json").read_text())["models"]
    assert kept.keys() == {"octree", "knn"} and kept["knn"] == resumed["models"]["knn"]


def test_test_places_choose_nothing(script, tmp_path, monkeypatch):
    """Scrambling the test places' scans changes no loss, valid recall or best epoch."""
    data = tmp_path / "data.h5"
    common = ["--quick", "--no-progress", "--data", str(data), "--models", "octree"]
    from gtlib.datasets.generate import place_recognition

    place_recognition(24, data, points=96, seed=0, progress=False)
    clean = script.main([*common, "--out", str(tmp_path / "clean")])["models"]["octree"]
    read = script.read_place_recognition

    def scrambled(path):
        d = read(path)
        test = d["split"] == 2
        generator = torch.Generator().manual_seed(1)
        for key in ("ground", "aerial"):
            noise = torch.randn(d[key][test].shape, generator=generator, dtype=d[key].dtype)
            d[key][test] = noise * 20.0
        return d

    monkeypatch.setattr(script, "read_place_recognition", scrambled)
    other = script.main([*common, "--out", str(tmp_path / "other")])["models"]["octree"]
    for key in ("best_epoch", "best_valid"):
        assert other[key] == clean[key]
    assert numbers(other)["history"] == numbers(clean)["history"]


HELDOUT = SCRIPT.with_name("place_recognition_heldout.py")


@pytest.fixture(scope="module")
def heldout():
    return load_script("pointcloud_place_recognition_heldout", HELDOUT)


def test_heldout_hits_against_brute_force(heldout):
    gen = torch.Generator().manual_seed(0)
    queries, database = torch.randn(23, 5, generator=gen), torch.randn(23, 5, generator=gen)
    database[::3] = queries[::3] + 0.01 * database[::3]  # some queries find their match
    queries, database = (torch.nn.functional.normalize(x, dim=1) for x in (queries, database))
    blocks, full = heldout.hits(queries, database, 5)
    assert blocks.shape == (20,) and full.shape == (23,)  # the tail of 3 places is dropped
    for i in range(23):
        scores = [float(queries[i] @ database[j]) for j in range(23)]
        assert bool(full[i]) == (max(range(23), key=scores.__getitem__) == i)
        if i < 20:
            block = range(i // 5 * 5, i // 5 * 5 + 5)
            assert bool(blocks[i]) == (max(block, key=scores.__getitem__) == i)
    assert bool(full[::3].all())


def test_heldout_evaluation_of_selected_models(script, heldout, tmp_path):
    """The held-out script reloads best.pt of a run and evaluates it on freshly generated places:
    its recalls equal a direct evaluation of the same weights on the same places."""
    from gtlib.datasets.generate import place_recognition

    train = tmp_path / "train.h5"
    place_recognition(24, train, points=96, seed=0, progress=False)
    run = tmp_path / "run"
    script.main(["--quick", "--no-progress", "--data", str(train), "--out", str(run)])
    out = tmp_path / "heldout" / "results.json"
    results = heldout.main(["--runs", str(run), "--places", "12", "--database", "4",
                            "--seed", "5", "--bootstrap", "50", "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["places"] == 12 and results["args"]["points"] == 96
    data = script.read_place_recognition(results["data"])
    for name in ("octree", "knn"):
        saved = torch.load(run / name / "best.pt", map_location="cpu", weights_only=False)
        net = script.build(script.parse_args(["--quick", "--data", str(train)]), name)
        net.load_state_dict(saved["model"])
        net.eval()
        ground, aerial = data["ground"].float(), data["aerial"].float()
        with torch.no_grad():
            q = script.describe(net, ground[:, 0], data["max_range"])
            a = script.describe(net, aerial, data["max_range"])
        expected = [script.recalls(q[s : s + 4], a[s : s + 4])["recall@1"] for s in (0, 4, 8)]
        got = results["runs"][str(run)][name]
        assert got["ground_to_aerial"]["recall@1_blocks"] == pytest.approx(sum(expected) / 3)
        assert got["ground_to_aerial"]["recall@1_full"] == pytest.approx(
            script.recalls(q, a)["recall@1"]
        )
        assert got["best_epoch"] == saved["epoch"]
    paired = results["paired_blocks"]["ground_to_aerial"]
    low, high = paired["diff_95ci_bootstrap_places"]
    assert low <= high and paired["diff_mean"] == pytest.approx(
        paired["octree_mean"] - paired["knn_mean"]
    )
