"""Held-out monitoring in train_score: the held-out loss against a closed form, best weights,
eval_fn metrics, bit-for-bit resume with monitoring, and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gtlib.entropy import linear_stationary_covariance, stationary_sample_linear, train_score

A = torch.tensor([[-1.0, 0.6], [-0.6, -1.5]], dtype=torch.float64)
D = torch.tensor([[0.5, 0.0], [0.0, 1.0]], dtype=torch.float64)


class Linear(nn.Module):
    """s(x) = W x."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))

    def forward(self, x):
        return x @ self.W.T


def _data(n, seed):
    return stationary_sample_linear(A, D, n, torch.Generator().manual_seed(seed))


def _implicit_loss_closed_form(W: torch.Tensor, x: torch.Tensor) -> float:
    # E[|W x|^2 + 2 tr W] over the samples, in closed form through their second moment.
    second = x.T @ x / x.shape[0]
    return float(torch.trace(W @ second @ W.T) + 2 * torch.trace(W))


def _train(tmp_path, steps, total=60, **kwargs):
    torch.manual_seed(0)
    model = Linear()
    return train_score(
        model,
        _data(2000, 0),
        loss="implicit",
        steps=total if steps is None else steps,
        batch_size=64,
        lr=5e-2,
        progress=False,
        eval_data=_data(500, 1),
        eval_every=10,
        **kwargs,
    )


def test_heldout_loss_history_and_best_weights(tmp_path):
    heldout = _data(500, 1)
    calls = []

    def eval_fn(model):
        calls.append(1)
        # the EPR of the linear system with this score: E[v.D^-1 v], v = (A - D W) x
        V = A - D @ model.W.detach()
        v = heldout @ V.T
        return {"epr": float((v * torch.linalg.solve(D, v.T).T).sum(1).mean())}

    result = _train(tmp_path, 60, eval_fn=eval_fn, best_checkpoint=tmp_path / "best.pt")
    steps = [h["step"] for h in result.history]
    assert steps == [10, 20, 30, 40, 50, 60] and len(calls) == 6
    # the final record is the returned (EMA) model's held-out loss, checked in closed form
    last = result.history[-1]
    assert last["heldout_loss"] == pytest.approx(
        _implicit_loss_closed_form(result.model.W.detach(), heldout), rel=1e-10
    )
    assert last["epr"] == pytest.approx(eval_fn(result.model)["epr"], rel=1e-12)
    # best = lowest held-out loss; its weights reproduce that loss, and the file holds them
    losses = [h["heldout_loss"] for h in result.history]
    assert result.best_loss == min(losses)
    assert result.best_step == steps[losses.index(min(losses))]
    assert _implicit_loss_closed_form(result.best_state_dict["W"], heldout) == pytest.approx(
        result.best_loss, rel=1e-10
    )
    saved = torch.load(tmp_path / "best.pt", weights_only=False)
    assert saved["step"] == result.best_step
    assert torch.equal(saved["model"]["W"], result.best_state_dict["W"])
    # training works: held-out loss fell towards -E|s*|^2 (the minimum over all scores)
    C = linear_stationary_covariance(A, D)
    assert losses[-1] < losses[0]
    assert losses[-1] == pytest.approx(-float(torch.trace(torch.linalg.inv(C))), rel=0.1)


def test_monitoring_does_not_change_training(tmp_path):
    torch.manual_seed(0)
    plain = train_score(
        Linear(), _data(2000, 0), loss="dsm", sigma=0.1, steps=30, batch_size=64,
        lr=5e-2, progress=False,
    )  # fmt: skip
    torch.manual_seed(0)
    monitored = train_score(
        Linear(), _data(2000, 0), loss="dsm", sigma=0.1, steps=30, batch_size=64,
        lr=5e-2, progress=False, eval_data=_data(500, 1), eval_every=7,
    )  # fmt: skip
    assert plain.losses == monitored.losses
    assert torch.equal(plain.model.W, monitored.model.W)
    assert [h["step"] for h in monitored.history] == [7, 14, 21, 28, 30]
    # the held-out noise is reseeded per evaluation: same weights give the same loss
    assert len({h["heldout_loss"] for h in monitored.history}) == 5


@pytest.mark.parametrize("stop_at", [20, 25])
def test_resume_with_monitoring_is_bit_for_bit(tmp_path, stop_at):
    reference = _train(tmp_path / "a", None, checkpoint=tmp_path / "a.pt")

    class Stop(Exception):
        pass

    def stop(step, loss, model):
        if step == stop_at:
            raise Stop

    with pytest.raises(Stop):
        _train(tmp_path, None, checkpoint=tmp_path / "b.pt", callback=stop)
    resumed = _train(tmp_path, None, checkpoint=tmp_path / "b.pt")
    assert resumed.resumed_from == stop_at
    assert resumed.losses == reference.losses
    assert resumed.history == reference.history
    assert resumed.best_step == reference.best_step
    assert torch.equal(resumed.model.W, reference.model.W)
    assert torch.equal(resumed.best_state_dict["W"], reference.best_state_dict["W"])


def test_monitoring_rejects_bad_input():
    model = Linear()
    data = _data(100, 0)
    with pytest.raises(ValueError, match="eval_data"):
        train_score(model, data, loss="implicit", steps=2, batch_size=8, progress=False,
                    eval_fn=lambda m: {})  # fmt: skip
    with pytest.raises(ValueError, match="event shape"):
        train_score(model, data, loss="implicit", steps=2, batch_size=8, progress=False,
                    eval_data=torch.zeros(5, 3, dtype=torch.float64))  # fmt: skip
    with pytest.raises(TypeError, match="eval_data"):
        train_score(model, data, loss="implicit", steps=2, batch_size=8, progress=False,
                    eval_data=torch.zeros(5, 2, dtype=torch.long))  # fmt: skip
    with pytest.raises(ValueError, match="eval_every"):
        train_score(model, data, loss="implicit", steps=2, batch_size=8, progress=False,
                    eval_data=data, eval_every=0)  # fmt: skip
    with pytest.raises(TypeError, match="dict"):
        train_score(model, data, loss="implicit", steps=2, batch_size=8, progress=False,
                    eval_data=data, eval_fn=lambda m: 1.0)  # fmt: skip
