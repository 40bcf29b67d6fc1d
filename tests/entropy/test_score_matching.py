"""Score-matching losses against Gaussian closed forms, MLPScore, and the training loop."""

import math
import os

import pytest
import torch

from gtlib.entropy.score_matching import (
    denoising_score_matching,
    implicit_score_matching,
    sliced_score_matching,
)
from gtlib.entropy.training import train_score
from gtlib.nn.mlp_score import MLPScore

COV = torch.tensor([[1.0, 0.3, -0.2], [0.3, 0.5, 0.1], [-0.2, 0.1, 2.0]], dtype=torch.float64)
PRECISION = torch.linalg.inv(COV)
TRUE = -PRECISION  # s*(x) = TRUE @ x
OTHER = torch.tensor([[-0.5, 0.4, 0.0], [0.2, -1.0, 0.3], [0.0, -0.3, -0.8]], dtype=torch.float64)
MASK = torch.tensor([True, False, True])
NUM = 200_000


def _samples(n=NUM, seed=0):
    chol = torch.linalg.cholesky(COV)
    return (
        torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=COV.dtype) @ chol.T
    )


def _linear(M):
    return lambda x: x @ M.T


def _fisher(M, S, C, mask=None):
    """E|(M - S) x|^2 over the masked rows, x ~ N(0, C)."""
    diag = torch.diagonal((M - S) @ C @ (M - S).T)
    return float(diag.sum() if mask is None else diag[mask].sum())


def _gen(seed=1):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("mask", [None, MASK], ids=["full", "masked"])
@pytest.mark.parametrize(
    "name,kwargs,factor",
    [
        ("implicit", {"divergence": "exact"}, 1.0),
        ("implicit", {"divergence": "hutchinson", "n_probes": 2}, 1.0),
        ("sliced", {}, 0.5),
        ("sliced", {"probe": "rademacher", "n_projections": 2}, 0.5),
    ],
)
def test_implicit_and_sliced_match_fisher_divergence(name, kwargs, factor, mask):
    """loss(s) = factor * (E|s - s*|^2_N - E|s*|^2_N) for linear s on a Gaussian."""
    loss_fn = implicit_score_matching if name == "implicit" else sliced_score_matching
    x = _samples()
    values = {}
    for label, M in (("true", TRUE), ("other", OTHER)):
        loss = loss_fn(_linear(M), x, noisy=mask, generator=_gen(), **kwargs)
        values[label] = float(loss.detach())
    rows = slice(None) if mask is None else mask
    expected_true = -factor * float(torch.diagonal(PRECISION)[rows].sum())
    expected_gap = factor * _fisher(OTHER, TRUE, COV, mask)
    assert values["true"] == pytest.approx(expected_true, rel=0.03)
    assert values["other"] - values["true"] == pytest.approx(expected_gap, rel=0.03)


def test_exact_divergence_is_deterministic_for_linear_scores():
    """Exact Hyvarinen loss of s = Mx is |Mx|^2 + 2 tr M per sample, no Monte Carlo."""
    x = _samples(1000)
    loss = implicit_score_matching(_linear(OTHER), x)
    expected = ((x @ OTHER.T) ** 2).sum(dim=1).mean() + 2 * torch.trace(OTHER)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("mask", [None, MASK], ids=["full", "masked"])
def test_denoising_matches_smoothed_fisher_divergence(mask):
    """DSM(M1) - DSM(M2) = E|s1 - s_sig|^2 - E|s2 - s_sig|^2 under rho_sig = N(0, C + sig^2 I_N)."""
    sigma = 0.4
    x = _samples()
    noise = torch.ones(3, dtype=torch.float64) if mask is None else MASK.double()
    cov_s = COV + sigma**2 * torch.diag(noise)
    score_s = -torch.linalg.inv(cov_s)
    gap = {}
    for antithetic in (True, False):
        true = denoising_score_matching(
            _linear(TRUE), x, sigma, antithetic=antithetic, noisy=mask, generator=_gen()
        )
        other = denoising_score_matching(
            _linear(OTHER), x, sigma, antithetic=antithetic, noisy=mask, generator=_gen()
        )
        gap[antithetic] = float(other - true)
    rows = None if mask is None else mask
    expected = _fisher(OTHER, score_s, cov_s, rows) - _fisher(TRUE, score_s, cov_s, rows)
    # The unsmoothed gap differs by > 10%, so this distinguishes rho_sigma from rho.
    assert abs(_fisher(OTHER, TRUE, COV, rows) - expected) > 0.1 * abs(expected)
    assert gap[True] == pytest.approx(expected, rel=0.03)
    assert gap[False] == pytest.approx(expected, rel=0.05)


def test_denoising_minimiser_is_smoothed_score():
    """The DSM loss's gradient in M vanishes at the smoothed score (and not at the true one)."""
    sigma = 0.4
    x = _samples()
    score_s = -torch.linalg.inv(COV + sigma**2 * torch.eye(3, dtype=torch.float64))
    grads = {}
    for label, M0 in (("smoothed", score_s), ("true", TRUE)):
        M = M0.clone().requires_grad_(True)
        loss = denoising_score_matching(lambda y, M=M: y @ M.T, x, sigma, generator=_gen())
        (grads[label],) = torch.autograd.grad(loss, M)
    assert grads["smoothed"].abs().max() < 0.05
    assert grads["true"].abs().max() > 0.3


def test_antithetic_reduces_gradient_variance():
    """At small sigma the antithetic pair removes the O(1/sigma) variance of the gradient."""
    sigma = 0.05
    M = (0.8 * TRUE).clone().requires_grad_(True)
    grads = {True: [], False: []}
    for rep in range(60):
        x = _samples(128, seed=100 + rep)
        for antithetic in (True, False):
            loss = denoising_score_matching(
                lambda y: y @ M.T, x, sigma, antithetic=antithetic, generator=_gen(rep)
            )
            (g,) = torch.autograd.grad(loss, M)
            grads[antithetic].append(g.flatten())
    var = {k: torch.stack(v).var(dim=0).sum().item() for k, v in grads.items()}
    assert var[False] > 50 * var[True], var


def test_noiseless_coordinates_are_ignored():
    """Outputs on masked-out coordinates do not change any loss; they are not noised either."""
    x = _samples(2000)
    garbage = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)

    def score(y):
        return y @ OTHER.T

    def score_garbage(y):
        return y @ OTHER.T + garbage * (5.0 + y**3)

    def row_one_input(y):
        # Depends on y[:, 1] only; since coordinate 1 is not noised, DSM sees the clean value.
        return y[:, 1:2].expand(-1, 3) * torch.tensor([1.0, 0.0, 1.0], dtype=y.dtype)

    for fn in (
        lambda f: implicit_score_matching(f, x, noisy=MASK),
        lambda f: implicit_score_matching(
            f, x, noisy=MASK, divergence="hutchinson", generator=_gen()
        ),
        lambda f: sliced_score_matching(f, x, noisy=MASK, generator=_gen()),
        lambda f: denoising_score_matching(f, x, 0.1, noisy=MASK, generator=_gen()),
    ):
        torch.testing.assert_close(fn(score), fn(score_garbage))
    loss = denoising_score_matching(row_one_input, x, 0.1, noisy=MASK, generator=_gen())
    z = torch.randn(x.shape, generator=_gen(), dtype=x.dtype) * MASK
    clean = 0.5 * (
        ((row_one_input(x) + z / 0.1) ** 2 * MASK).sum(1)
        + ((row_one_input(x) - z / 0.1) ** 2 * MASK).sum(1)
    )
    torch.testing.assert_close(loss, clean.mean())


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda m, x: denoising_score_matching(m, x, 0.1, generator=_gen()),
        lambda m, x: implicit_score_matching(m, x),
        lambda m, x: implicit_score_matching(m, x, divergence="hutchinson", generator=_gen()),
        lambda m, x: sliced_score_matching(m, x, generator=_gen()),
    ],
    ids=["dsm", "implicit", "hutchinson", "sliced"],
)
def test_gradients_flow_to_every_parameter(loss_fn):
    torch.manual_seed(0)
    model = MLPScore(3, hidden_channels=16, num_layers=3).double()
    torch.nn.init.normal_(model.lins[-1].weight, std=0.3)  # zero at init would block hidden grads
    loss = loss_fn(model, _samples(64))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_losses_reject_bad_input():
    x = _samples(8)
    s = _linear(TRUE)
    with pytest.raises(ValueError, match="sigma"):
        denoising_score_matching(s, x, 0.0)
    with pytest.raises(TypeError, match="sigma"):
        denoising_score_matching(s, x, "0.1")
    with pytest.raises(TypeError, match="noisy"):
        implicit_score_matching(s, x, noisy=torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="noisy"):
        sliced_score_matching(s, x, noisy=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="noisy"):
        sliced_score_matching(s, x, noisy=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="divergence"):
        implicit_score_matching(s, x, divergence="trace")
    with pytest.raises(ValueError, match="n_projections"):
        sliced_score_matching(s, x, n_projections=0)
    with pytest.raises(TypeError, match="x"):
        implicit_score_matching(s, x.long())
    with pytest.raises(ValueError, match="score_fn"):
        implicit_score_matching(lambda y: y[:, :2], x)


def test_mlp_score_drift_parametrisation():
    """s = net + D^-1 b on the noisy block, so v = b - D s = -D net, and v = 0 at init."""
    A = torch.tensor([[-1.0, 0.5, 0.0], [0.0, -2.0, 1.0], [0.3, 0.0, -1.0]], dtype=torch.float64)
    diffusion = torch.tensor([0.5, 0.0, 2.0], dtype=torch.float64)
    torch.manual_seed(0)
    model = MLPScore(3, 16, 2, "silu", drift=lambda y: y @ A.T, diffusion=diffusion).double()
    x = _samples(50)
    b = x @ A.T
    v = b - diffusion * model(x)
    torch.testing.assert_close(v[:, [0, 2]], torch.zeros(50, 2, dtype=torch.float64))
    torch.nn.init.normal_(model.lins[-1].weight)
    net = MLPScore(3, 16, 2, "silu").double()
    net.load_state_dict({k: t for k, t in model.state_dict().items() if "diffusion" not in k})
    v = b - diffusion * model(x)
    torch.testing.assert_close(v[:, [0, 2]], -(diffusion * net(x))[:, [0, 2]])
    assert "MLPScore(3, hidden_channels=16, num_layers=2" in repr(model)
    model.reset_parameters()
    assert model.lins[-1].weight.abs().sum() == 0
    with pytest.raises(ValueError, match="drift"):
        MLPScore(3, drift=lambda y: y)
    with pytest.raises(ValueError, match="diffusion"):
        MLPScore(3, drift=lambda y: y, diffusion=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="act must be one of"):
        MLPScore(3, act="tanh")
    with pytest.warns(FutureWarning, match="activation is deprecated, use act"):
        assert MLPScore(3, activation="silu").act_name == "silu"
    with pytest.raises(ValueError, match="x"):
        MLPScore(3)(torch.zeros(4, 2))


def _train(tmp_path, steps, callback=None, ckpt="ck.pt", **kwargs):
    torch.manual_seed(0)
    model = MLPScore(3, hidden_channels=16, num_layers=2).double()
    data = _samples(500)
    return train_score(
        model,
        data,
        loss=kwargs.pop("loss", "dsm"),
        sigma=0.1,
        steps=steps,
        batch_size=32,
        lr=1e-2,
        checkpoint=None if ckpt is None else tmp_path / ckpt,
        checkpoint_every=kwargs.pop("checkpoint_every", 7),
        progress=False,
        seed=3,
        callback=callback,
        **kwargs,
    )


@pytest.mark.parametrize("stop_at", [14, 17], ids=["at_checkpoint", "between_checkpoints"])
def test_resume_is_bit_for_bit(tmp_path, stop_at):
    reference = _train(tmp_path, 30, ckpt=None)

    class Stop(Exception):
        pass

    def interrupt(step, loss, model):
        if step == stop_at:
            raise Stop

    with pytest.raises(Stop):
        _train(tmp_path, 30, callback=interrupt)
    assert os.path.exists(tmp_path / "ck.pt")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp files left
    resumed = _train(tmp_path, 30)
    assert resumed.resumed_from == stop_at
    assert resumed.losses == reference.losses
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in reference.raw_state_dict.items():
        assert torch.equal(value, resumed.raw_state_dict[key]), key


def test_training_lowers_fisher_divergence_and_swaps_in_ema(tmp_path):
    result = _train(tmp_path, 200, ckpt=None, loss="implicit", ema_decay=0.9)
    assert len(result.losses) == 200
    x = _samples(20_000, seed=5)
    with torch.no_grad():
        fisher = ((result.model(x) - x @ TRUE.T) ** 2).sum(1).mean().item()
        raw = MLPScore(3, hidden_channels=16, num_layers=2).double()
        raw.load_state_dict(result.raw_state_dict)
        assert not torch.equal(raw(x), result.model(x))  # EMA weights differ from the last ones
    baseline = float(torch.diagonal(PRECISION).sum())  # Fisher divergence of s = 0
    assert fisher < 0.05 * baseline
    assert math.isfinite(result.losses[-1]) and result.losses[-1] < result.losses[0]


def test_train_score_rejects_bad_input(tmp_path):
    model = MLPScore(3, hidden_channels=4, num_layers=1).double()
    data = _samples(10)
    with pytest.raises(ValueError, match="sigma"):
        train_score(model, data, steps=1, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="loss"):
        train_score(model, data, loss="ssm", steps=1, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train_score(model, data, sigma=0.1, steps=0, batch_size=2, progress=False)
    with pytest.raises(TypeError, match="data"):
        train_score(model, [1.0, 2.0], sigma=0.1, steps=1, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="ema_decay"):
        train_score(model, data, sigma=0.1, steps=1, batch_size=2, ema_decay=1.0, progress=False)


def test_callable_data_source():
    torch.manual_seed(0)
    model = MLPScore(3, hidden_channels=8, num_layers=2).double()
    chol = torch.linalg.cholesky(COV)
    seen = []

    def draw(batch_size, generator):
        seen.append(batch_size)
        return torch.randn(batch_size, 3, generator=generator, dtype=torch.float64) @ chol.T

    result = train_score(
        model, draw, loss="sliced", steps=5, batch_size=16, progress=False, ema_decay=None
    )
    assert seen == [16] * 5 and len(result.losses) == 5
