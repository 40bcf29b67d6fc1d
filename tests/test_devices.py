"""The library on another device against the same computation on the CPU (marked ``gpu``).

Every test builds its inputs on the CPU, runs the same thing on ``DEVICE`` (CUDA; the variable
``GTLIB_TEST_DEVICE`` names another one, e.g. ``cpu`` to check the tests themselves without a
GPU) and compares: patterns as edge sets, outputs and gradients of layers with one set of
weights, particle forces. Patterns built from device inputs must live on that device, and
block patterns must stay blocks there.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from gtlib.attention import Pattern, sparse_attention

DEVICE = os.environ.get("GTLIB_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        torch.device(DEVICE).type == "cuda" and not torch.cuda.is_available(),
        reason="needs a CUDA device",
    ),
]


def _edge_set(pattern: Pattern) -> set[tuple[int, int]]:
    src, dst = pattern.edge_index.cpu().tolist()
    return set(zip(src, dst, strict=True))


def _close(got, want, what: str, tol: float = 1e-4, scale: float | None = None) -> None:
    got = got.detach().cpu().double()
    want = want.detach().cpu().double()
    if scale is None:
        scale = float(want.abs().max().clamp_min(1e-12))
    error = float((got - want).abs().max()) / scale
    assert error < tol, f"{what}: relative error {error:.2e}"


@pytest.mark.parametrize("box", [None, 10.0])
def test_radius_and_knn_patterns_on_device(box):
    generator = torch.Generator().manual_seed(0)
    pos = 10.0 * torch.rand(3000, 3, generator=generator, dtype=torch.float64)
    batch = torch.arange(2).repeat_interleave(1500)
    for build in (
        lambda p, b: Pattern.radius(p, 1.0, box=box, batch=b),
        lambda p, b: Pattern.knn(p, 8, box=box, batch=b),
    ):
        on_cpu = build(pos, batch)
        on_device = build(pos.to(DEVICE), batch.to(DEVICE))
        assert on_device.edge_index.device.type == torch.device(DEVICE).type
        assert _edge_set(on_device) == _edge_set(on_cpu)
        # displacements follow each pattern's own edge order: compare them per edge
        cpu_edges = on_cpu.edge_index.t().tolist()
        lookup = {tuple(e): i for i, e in enumerate(cpu_edges)}
        order = torch.tensor([lookup[tuple(e)] for e in on_device.edge_index.cpu().t().tolist()])
        _close(on_device.displacement, on_cpu.displacement[order], "displacement", 1e-12)


def test_block_patterns_stay_blocks_on_device():
    batch = torch.arange(3).repeat_interleave(torch.tensor([5, 40, 17]))
    full = Pattern.full(batch)
    moved = full.to(DEVICE)
    assert moved.blocks is not None
    assert all(block.device.type == moved.device.type for block in moved.blocks)
    built_there = Pattern.full(batch.to(DEVICE))
    assert built_there.blocks is not None
    assert built_there.blocks[0].device.type == torch.device(DEVICE).type
    windows = Pattern.windows((8, 8), (4, 4)).to(DEVICE)
    assert windows.blocks is not None
    assert moved.device == torch.empty(0, device=DEVICE).device  # "cuda" is cuda:0 there
    assert moved.to(DEVICE) is moved
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(62, 2, 8, generator=generator) for _ in range(3))
    want = sparse_attention(q, k, v, full)
    got = sparse_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), moved)
    assert got.device.type == torch.device(DEVICE).type
    _close(got, want, "attention over blocks")


@pytest.mark.parametrize("kind", ["windows with a bias", "blocks of mixed sizes"])
def test_block_attention_gradients_on_device(kind):
    """The dense path (SDPA per block size; with a bias, one additive mask per block size)
    on the device against the CPU, values and the gradients of q, k, v and the bias."""
    if kind == "windows with a bias":
        pattern = Pattern.windows((8, 12), (4, 4))
        num_nodes = 96
    else:
        pattern = Pattern.full(torch.arange(4).repeat_interleave(torch.tensor([3, 50, 17, 50])))
        num_nodes = 120
    generator = torch.Generator().manual_seed(6)
    leaves = [torch.randn(num_nodes, 2, 16, generator=generator) for _ in range(3)]
    if kind == "windows with a bias":
        leaves.append(torch.randn(pattern.num_edges, 2, generator=generator))
    results = []
    for device in ("cpu", DEVICE):
        inputs = [x.to(device).requires_grad_() for x in leaves]
        bias = inputs[3] if len(inputs) > 3 else None
        out = sparse_attention(*inputs[:3], pattern.to(device), bias=bias)
        grads = torch.autograd.grad(out, inputs, torch.ones_like(out) + out.detach())
        results.append((out, grads))
    _close(results[1][0], results[0][0], f"{kind}: output")
    for index, (got, want) in enumerate(zip(results[1][1], results[0][1], strict=True)):
        _close(got, want, f"{kind}: gradient {index}")


@pytest.mark.parametrize("layer", ["GATConv", "GATv2Conv", "TransformerConv"])
def test_attention_layers_on_device(layer):
    import gtlib.nn as gt_nn

    torch.manual_seed(0)
    num_nodes = 3000
    x = torch.randn(num_nodes, 48)
    edge_index = torch.randint(0, num_nodes, (2, 30000))
    conv = getattr(gt_nn, layer)(48, 16, heads=4)
    moved = copy.deepcopy(conv).to(DEVICE)
    x_cpu = x.clone().requires_grad_()
    x_dev = x.to(DEVICE).requires_grad_()
    out_cpu = conv(x_cpu, edge_index)
    out_dev = moved(x_dev, edge_index.to(DEVICE))
    assert out_dev.device.type == torch.device(DEVICE).type
    _close(out_dev, out_cpu, f"{layer} output")
    grad = torch.randn_like(out_cpu)
    (g_cpu,) = torch.autograd.grad(out_cpu, x_cpu, grad)
    (g_dev,) = torch.autograd.grad(out_dev, x_dev, grad.to(DEVICE))
    _close(g_dev, g_cpu, f"{layer} input gradient")
    for p_cpu, p_dev in zip(conv.parameters(), moved.parameters(), strict=True):
        p_cpu.grad = p_dev.grad = None
    out_cpu = conv(x, edge_index).square().sum()
    out_dev = moved(x.to(DEVICE), edge_index.to(DEVICE)).square().sum()
    out_cpu.backward()
    out_dev.backward()
    # Some gradients are zero in exact arithmetic (a key bias shifts every score of a receiver
    # alike): they are rounding noise on both devices, so every gradient is measured against
    # the largest one as well as against itself.
    largest = max(float(p.grad.abs().max()) for p in conv.parameters())
    for (name, p_cpu), (_, p_dev) in zip(
        conv.named_parameters(), moved.named_parameters(), strict=True
    ):
        scale = max(float(p_cpu.grad.abs().max()), 1e-3 * largest)
        _close(p_dev.grad, p_cpu.grad, f"{layer} gradient of {name}", scale=scale)


def test_octree_windows_on_device():
    generator = torch.Generator().manual_seed(2)
    pos = torch.rand(5000, 3, generator=generator) * torch.tensor([40.0, 40.0, 5.0])
    on_cpu = Pattern.octree(pos, 32, levels=2)
    on_device = Pattern.octree(pos.to(DEVICE), 32, levels=2)
    for level_cpu, level_dev in zip(on_cpu.levels, on_device.levels, strict=True):
        assert level_dev.perm.device.type == torch.device(DEVICE).type
        assert _edge_set(level_dev.pattern) == _edge_set(level_cpu.pattern)


def test_particle_forces_on_device():
    from gtlib.datasets import ActiveOUParticles

    system = ActiveOUParticles(1024, packing_fraction=0.6, v0=0.025, gamma=1e-4)
    generator = torch.Generator().manual_seed(3)
    pos = system.wrap(system.box_length * torch.rand(2, 1024, 2, generator=generator))
    pos = pos.double()
    want = system.interaction_forces(pos)
    got = system.interaction_forces(pos.to(DEVICE))
    assert got.device.type == torch.device(DEVICE).type
    _close(got, want, "pair forces", 1e-10)
    _close(system.force_divergence(pos.to(DEVICE)), system.force_divergence(pos), "div", 1e-10)


def test_particle_entropy_production_on_device():
    """A score model on the device, snapshots on the CPU (as read from a file), spatial maps:
    the results come back on the CPU and equal the CPU computation."""
    from gtlib.datasets import ActiveOUParticles
    from gtlib.entropy import ParticleScore, particle_entropy_production
    from gtlib.nn import ParticleTransformer

    torch.manual_seed(5)
    system = ActiveOUParticles(256, packing_fraction=0.5, v0=0.025, gamma=1e-4)
    pos = system.wrap(system.box_length * torch.rand(3, 256, 2)).double()
    g = torch.randn(3, 256, 2, dtype=torch.float64)
    net = ParticleTransformer(ParticleScore.input_channels(2, force_features=True), 2, dim=2,
                              num_neighbors=8, hidden_channels=16, num_layers=1, heads=2,
                              ff_channels=32)  # fmt: skip
    model = ParticleScore(net, system, force_features=True, zero_init=False).double().eval()
    kwargs = dict(batch_size=2, bins=4, divergence_probes=1, seed=7)
    want = particle_entropy_production(model, system, pos, g, **kwargs)
    got = particle_entropy_production(copy.deepcopy(model).to(DEVICE), system, pos, g, **kwargs)
    for name in ("per_particle", "spatial_mean_per_particle", "spatial_sum_per_area"):
        assert getattr(got, name).device.type == "cpu", name
        _close(getattr(got, name), getattr(want, name), name, 1e-8)
    assert torch.equal(got.spatial_counts, want.spatial_counts)
    assert got.total == pytest.approx(want.total, rel=1e-8)
    assert got.score_free == pytest.approx(want.score_free, rel=1e-8)
    assert got.divergence == pytest.approx(want.divergence, rel=1e-6)


def test_fno_on_device():
    from gtlib.operators import FNO

    torch.manual_seed(4)
    model = FNO(2, 1, n_modes=(8, 8), hidden_channels=16, n_layers=2)
    moved = copy.deepcopy(model).to(DEVICE)
    x = torch.randn(3, 2, 32, 32)
    # TF32 convolutions (cuDNN's default on recent GPUs) round to 10 mantissa bits: compare
    # float32 with float32
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _close(moved(x.to(DEVICE)), model(x), "FNO output")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_simulate_on_device_resumes_and_starts_as_on_the_cpu(tmp_path):
    from gtlib.datasets import ActiveOUParticles, load_trajectory, simulate

    system = ActiveOUParticles(256, packing_fraction=0.5, v0=0.5, gamma=0.5, k=1.0)
    kwargs = dict(spacing=0.05, n_trajectories=3, seed=5, progress=False, checkpoint_every=2)
    reference = simulate(system, 8, 0.01, out=tmp_path / "ref.h5", device=DEVICE, **kwargs)
    on_cpu = simulate(system, 8, 0.01, **kwargs)
    # the initial state is drawn on the CPU from the seed; the noise after it on the device
    assert torch.equal(reference["pos"][0], on_cpu["pos"][0])
    assert reference["pos"].device.type == "cpu"

    class Interrupt(RuntimeError):
        pass

    def fail(s, state):
        assert state["pos"].device.type == torch.device(DEVICE).type
        if s == 5:
            raise Interrupt

    out = tmp_path / "run.h5"
    with pytest.raises(Interrupt):
        simulate(system, 8, 0.01, out=out, device=DEVICE, callback=fail, **kwargs)
    state = torch.load(str(out) + ".partial.state", weights_only=True)
    assert state["n_done"] == 4 and state["pos"].device.type == "cpu"  # after snapshot 3
    seen = []
    resumed = simulate(
        system, 8, 0.01, out=out, device=DEVICE, callback=lambda s, _: seen.append(s), **kwargs
    )
    assert seen == [4, 5, 6, 7]  # continued from the checkpoint, not started again
    # scatter-adds of the forces may sum in another order on a GPU: float64 within rounding
    _close(resumed["pos"], reference["pos"], "resumed positions", 1e-9)
    _close(resumed["g"], reference["g"], "resumed g", 1e-12)
    if torch.device(DEVICE).type != "cpu":
        assert '"device"' in load_trajectory(out)["attrs"]["run_signature"]
