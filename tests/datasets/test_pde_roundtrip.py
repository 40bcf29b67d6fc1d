"""Generators -> PDEDataset: files from gtlib.datasets.generate load back with the same arrays."""

import numpy as np
import torch

from gtlib.datasets import PDEDataset
from gtlib.datasets.generate import darcy, navier_stokes_2d


def test_darcy_well_and_pdebench_load_in_pdedataset(tmp_path):
    arrays = darcy(10, 17, seed=3, out=tmp_path, splits=(0.6, 0.2, 0.2), progress=False)
    train = PDEDataset(tmp_path / "darcy", split="train")
    assert len(train) == 6 and train.steady
    item = train[4]
    np.testing.assert_array_equal(item["x"][0].numpy(), arrays["coefficient"][4])
    np.testing.assert_array_equal(item["y"][0].numpy(), arrays["solution"][4])
    test = PDEDataset(tmp_path / "darcy", split="test")
    np.testing.assert_array_equal(test[1]["y"][0].numpy(), arrays["solution"][9])

    file = tmp_path / "darcy.hdf5"
    darcy(10, 17, seed=3, out=file, layout="pdebench", progress=False)
    bench = PDEDataset(file)
    assert len(bench) == 10
    np.testing.assert_array_equal(bench[9]["x"][0].numpy(), arrays["coefficient"][9])
    np.testing.assert_array_equal(bench[9]["y"][0].numpy(), arrays["solution"][9])


def test_navier_stokes_windows_and_all2all_in_a_two_worker_loader(tmp_path):
    arrays = navier_stokes_2d(
        4, 16, t_final=1.0, n_snapshots=5, seed=1, out=tmp_path, splits=(1.0, 0.0, 0.0),
        progress=False,
    )  # fmt: skip
    windows = PDEDataset(
        tmp_path / "navier_stokes_2d", split="train", input_fields=["vorticity"],
        target_fields=["vorticity"], n_steps_input=2, n_steps_output=1,
    )  # fmt: skip
    assert len(windows) == 4 * 3
    first = windows[0]
    np.testing.assert_array_equal(first["x"].numpy(), arrays["vorticity"][0, :2])
    np.testing.assert_array_equal(first["y"][0].numpy(), arrays["vorticity"][0, 2])

    pairs = PDEDataset(
        tmp_path / "navier_stokes_2d", split="train", input_fields=["vorticity"],
        target_fields=["vorticity"], all2all=True, normalize=True,
    )  # fmt: skip
    assert len(pairs) == 4 * 5 * 6 // 2
    loader = torch.utils.data.DataLoader(pairs, batch_size=7, num_workers=2)
    lead = torch.cat([batch["lead_time"] for batch in loader])
    serial = torch.stack([pairs[i]["lead_time"] for i in range(len(pairs))])
    torch.testing.assert_close(lead, serial)
    assert set(np.round(lead.numpy(), 6)) == {0.0, 0.25, 0.5, 0.75, 1.0}
    # normalised with the train statistics (stats.yaml written by the generator)
    raw = arrays["vorticity"][:4].astype(np.float64)
    item = pairs[0]["x"][0].double().numpy()
    expected = (raw[0, 0] - raw.mean()) / raw.std()
    np.testing.assert_allclose(item, expected, rtol=1e-4, atol=1e-4)
