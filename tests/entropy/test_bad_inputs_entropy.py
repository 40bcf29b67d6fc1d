"""Bad inputs at the public boundary of ``gtlib.entropy``: each one a clear error.

Every case asserts the exception type (``TypeError`` for a wrong type, ``ValueError`` for a wrong
value) and that the message names the argument (or the file). The valid edge cases at the end
(non-contiguous inputs, NumPy integers, lists for tuples, finiteness checks switched off) must
still give the numbers of the plain inputs, bit for bit.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from gtlib.datasets.particles import ActiveOUParticles
from gtlib.entropy.estimators import (
    entropy_production,
    group_sum,
    particle_groups,
    probability_current,
    score_free_entropy_production,
    score_free_entropy_production_hypoelliptic,
    spatial_decomposition,
)
from gtlib.entropy.particle_score import ParticleScore, particle_entropy_production
from gtlib.entropy.score_matching import (
    denoising_score_matching,
    implicit_score_matching,
    sliced_score_matching,
)
from gtlib.entropy.structure import (
    cluster_labels,
    density_classes,
    local_packing_fraction,
    structure_factor,
)
from gtlib.entropy.training import train_score
from gtlib.validation import set_finite_checks

NAN = float("nan")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
    ).double()


def _data(n: int = 24, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=generator, dtype=torch.float64)


def _nan_data() -> torch.Tensor:
    data = _data()
    data[5, 1] = NAN
    return data


def _train(**kwargs):
    args = {
        "model": _model(),
        "data": _data(),
        "sigma": 0.3,
        "steps": 2,
        "batch_size": 4,
        "progress": False,
    }
    args.update(kwargs)
    return train_score(args.pop("model"), args.pop("data"), **args)


def _score(x: torch.Tensor) -> torch.Tensor:
    return -x


def _x(n: int = 16) -> torch.Tensor:
    return _data(n, seed=1)


def _system(eps: float = 0.0, n: int = 3) -> ActiveOUParticles:
    return ActiveOUParticles(n, v0=1.0, gamma=0.5, k=0.0, trap=1.0, eps=eps, dim=2)


def _snapshots(s: int = 4, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    pos = torch.randn(s, n, 2, generator=generator, dtype=torch.float64)
    return pos, torch.randn(s, n, 2, generator=generator, dtype=torch.float64)


def _epr(**kwargs):
    pos, g = _snapshots()
    args = {"score_model": _score, "system": _system(), "pos": pos, "g": g}
    args.update(kwargs)
    return particle_entropy_production(
        args.pop("score_model"), args.pop("system"), args.pop("pos"), args.pop("g"), **args
    )


def _nan_pos() -> torch.Tensor:
    pos = _snapshots()[0].clone()
    pos[1, 2, 0] = NAN
    return pos


def _pos_in_box(n: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(4)
    return (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5) * 10.0


def _nan_draw(batch_size: int, generator: torch.Generator) -> torch.Tensor:
    batch = torch.randn(batch_size, 2, generator=generator, dtype=torch.float64)
    batch[0, 0] = NAN
    return batch


# (id, call, exception type, regular expression the message must match: the argument's name)
CASES = [
    # train_score
    ("train/model-type", lambda: _train(model=lambda x: x), TypeError, "model"),
    ("train/model-no-params", lambda: _train(model=torch.nn.Tanh()), ValueError, "model"),
    ("train/data-list", lambda: _train(data=[[1.0, 2.0]]), TypeError, "data"),
    ("train/data-int", lambda: _train(data=torch.ones(8, 2, dtype=torch.long)), TypeError, "data"),
    ("train/data-1d", lambda: _train(data=torch.ones(8, dtype=torch.float64)), ValueError, "data"),
    ("train/data-nan", lambda: _train(data=_nan_data()), ValueError, "data"),
    ("train/data-callable-nan", lambda: _train(data=_nan_draw), ValueError, "data"),
    ("train/data-callable-list", lambda: _train(data=lambda b, g: [0.0] * b), TypeError, "data"),
    ("train/steps-float", lambda: _train(steps=1.5), TypeError, "steps"),
    ("train/steps-zero", lambda: _train(steps=0), ValueError, "steps"),
    ("train/batch-size-str", lambda: _train(batch_size="4"), TypeError, "batch_size"),
    ("train/loss-name", lambda: _train(loss="ssm"), ValueError, "loss"),
    ("train/loss-type", lambda: _train(loss=3), TypeError, "loss"),
    ("train/sigma-missing", lambda: _train(sigma=None), ValueError, "sigma"),
    ("train/sigma-negative", lambda: _train(sigma=-0.1), ValueError, "sigma"),
    ("train/sigma-str", lambda: _train(sigma="0.1"), TypeError, "sigma"),
    ("train/lr-zero", lambda: _train(lr=0.0), ValueError, "lr"),
    ("train/lr-nan", lambda: _train(lr=NAN), ValueError, "lr"),
    ("train/weight-decay", lambda: _train(weight_decay=-1.0), ValueError, "weight_decay"),
    ("train/ema-decay", lambda: _train(ema_decay=1.0), ValueError, "ema_decay"),
    ("train/clip", lambda: _train(clip_grad_norm=0.0), ValueError, "clip_grad_norm"),
    ("train/schedule", lambda: _train(lr_schedule="linear"), ValueError, "lr_schedule"),
    ("train/checkpoint-type", lambda: _train(checkpoint=5), TypeError, "checkpoint"),
    ("train/checkpoint-every", lambda: _train(checkpoint_every=0), ValueError, "checkpoint_every"),
    ("train/resume-type", lambda: _train(resume="yes"), TypeError, "resume"),
    ("train/progress-type", lambda: _train(progress="yes"), TypeError, "progress"),
    ("train/seed-type", lambda: _train(seed="0"), TypeError, "seed"),
    ("train/seed-huge", lambda: _train(seed=2**64), ValueError, "seed"),
    ("train/callback-type", lambda: _train(callback=1), TypeError, "callback"),
    ("train/kwargs-fn-type", lambda: _train(model_kwargs_fn={}), TypeError, "model_kwargs_fn"),
    (
        "train/kwargs-fn-returns",
        lambda: _train(model_kwargs_fn=lambda batch: [batch]),
        TypeError,
        "model_kwargs_fn",
    ),
    (
        "train/eval-fn-metric",
        lambda: _train(eval_data=_data(), eval_fn=lambda m: {"epr": "high"}),
        TypeError,
        "eval_fn",
    ),
    ("train/loss-kwargs-type", lambda: _train(loss_kwargs=[1]), TypeError, "loss_kwargs"),
    ("train/noisy-list", lambda: _train(noisy=[True, False]), TypeError, "noisy"),
    ("train/eval-data-nan", lambda: _train(eval_data=_nan_data()), ValueError, "eval_data"),
    (
        "train/eval-batch-size",
        lambda: _train(eval_data=_data(), eval_batch_size=0),
        ValueError,
        "eval_batch_size",
    ),
    ("train/best-needs-eval", lambda: _train(best_checkpoint="b.pt"), ValueError, "eval_data"),
    ("train/eval-fn-type", lambda: _train(eval_data=_data(), eval_fn=3), TypeError, "eval_fn"),
    # score-matching losses
    ("dsm/score-fn", lambda: denoising_score_matching(3, _x(), 0.1), TypeError, "score_fn"),
    ("dsm/x-list", lambda: denoising_score_matching(_score, [[1.0]], 0.1), TypeError, r"\bx\b"),
    (
        "dsm/x-nan",
        lambda: denoising_score_matching(_score, _nan_data(), 0.1),
        ValueError,
        r"\bx\b",
    ),
    ("dsm/sigma-zero", lambda: denoising_score_matching(_score, _x(), 0.0), ValueError, "sigma"),
    ("dsm/sigma-str", lambda: denoising_score_matching(_score, _x(), "1"), TypeError, "sigma"),
    (
        "dsm/antithetic",
        lambda: denoising_score_matching(_score, _x(), 0.1, antithetic="no"),
        TypeError,
        "antithetic",
    ),
    (
        "dsm/generator",
        lambda: denoising_score_matching(_score, _x(), 0.1, generator=0),
        TypeError,
        "generator",
    ),
    (
        "dsm/noisy-float",
        lambda: denoising_score_matching(_score, _x(), 0.1, noisy=torch.ones(2)),
        TypeError,
        "noisy",
    ),
    (
        "dsm/noisy-none-selected",
        lambda: denoising_score_matching(_score, _x(), 0.1, noisy=torch.zeros(2, dtype=torch.bool)),
        ValueError,
        "noisy",
    ),
    (
        "ism/divergence",
        lambda: implicit_score_matching(_score, _x(), divergence="approx"),
        ValueError,
        "divergence",
    ),
    (
        "ism/n-probes",
        lambda: implicit_score_matching(_score, _x(), divergence="hutchinson", n_probes=0),
        ValueError,
        "n_probes",
    ),
    (
        "ism/returns-list",
        lambda: implicit_score_matching(lambda x: x.tolist(), _x()),
        TypeError,
        "score_fn",
    ),
    (
        "ssm/probe",
        lambda: sliced_score_matching(_score, _x(), probe="uniform"),
        ValueError,
        "probe",
    ),
    (
        "ssm/n-projections",
        lambda: sliced_score_matching(_score, _x(), n_projections=2.0),
        TypeError,
        "n_projections",
    ),
    # estimators
    ("ep/drift-type", lambda: entropy_production(_x(), 1, _score, 1.0), TypeError, "drift"),
    ("ep/score-type", lambda: entropy_production(_x(), _score, None, 1.0), TypeError, "score"),
    (
        "ep/x-int",
        lambda: entropy_production(torch.ones(4, 2, dtype=torch.long), _score, _score, 1.0),
        TypeError,
        r"\bx\b",
    ),
    (
        "ep/diffusion-str",
        lambda: entropy_production(_x(), _score, _score, "1"),
        TypeError,
        "diffusion",
    ),
    (
        "ep/diffusion-nan",
        lambda: entropy_production(_x(), _score, _score, NAN),
        ValueError,
        "diffusion",
    ),
    (
        "ep/form-type",
        lambda: entropy_production(_x(), _score, _score, 1.0, form=1),
        TypeError,
        "form",
    ),
    (
        "ep/groups-negative",
        lambda: entropy_production(_x(), _score, _score, 1.0, groups=torch.tensor([0, -1])),
        ValueError,
        "groups",
    ),
    (
        "pc/drift-returns-list",
        lambda: probability_current(_x(), lambda x: [0.0], _score, 1.0),
        TypeError,
        "drift",
    ),
    (
        "sf/diffusion-zero",
        lambda: score_free_entropy_production(
            _x(), _score, lambda x: x[:, 0], torch.tensor([1.0, 0.0])
        ),
        ValueError,
        "diffusion",
    ),
    (
        "sf/divergence-list",
        lambda: score_free_entropy_production(_x(), _score, lambda x: [0.0], 1.0),
        TypeError,
        "drift_divergence",
    ),
    (
        "hypo/x-missing",
        lambda: score_free_entropy_production_hypoelliptic(lambda x: x),
        ValueError,
        r"\bx\b",
    ),
    (
        "hypo/complex",
        lambda: score_free_entropy_production_hypoelliptic(torch.ones(4, dtype=torch.complex64)),
        TypeError,
        "force_divergence",
    ),
    ("groups/num-particles", lambda: particle_groups(0, 2), ValueError, "num_particles"),
    ("groups/dim-float", lambda: particle_groups(2, 2.0), TypeError, r"\bdim\b"),
    ("groups/by", lambda: particle_groups(2, 2, by="atom"), ValueError, r"\bby\b"),
    ("group-sum/local-list", lambda: group_sum([[1.0]], torch.tensor([0])), TypeError, "local"),
    (
        "group-sum/groups-shape",
        lambda: group_sum(torch.ones(2, 3), torch.tensor([0, 1])),
        ValueError,
        "groups",
    ),
    (
        "spatial/bins-zero",
        lambda: spatial_decomposition(torch.ones(2, 3), _snapshots(2)[0], 4.0, 0),
        ValueError,
        "bins",
    ),
    (
        "spatial/bins-float",
        lambda: spatial_decomposition(torch.ones(2, 3), _snapshots(2)[0], 4.0, 2.5),
        TypeError,
        "bins",
    ),
    (
        "spatial/box-negative",
        lambda: spatial_decomposition(torch.ones(2, 3), _snapshots(2)[0], -1.0, 2),
        ValueError,
        "box",
    ),
    (
        "spatial/box-str",
        lambda: spatial_decomposition(torch.ones(2, 3), _snapshots(2)[0], "4", 2),
        TypeError,
        "box",
    ),
    (
        "spatial/origin-nan",
        lambda: spatial_decomposition(torch.ones(2, 3), _snapshots(2)[0], 4.0, 2, origin=NAN),
        ValueError,
        "origin",
    ),
    (
        "spatial/pos-int",
        lambda: spatial_decomposition(
            torch.ones(2, 3), torch.ones(2, 3, 2, dtype=torch.long), 4.0, 2
        ),
        TypeError,
        "pos",
    ),
    # particle_entropy_production and ParticleScore
    ("pep/score-model", lambda: _epr(score_model=3), TypeError, "score_model"),
    ("pep/system", lambda: _epr(system=object()), TypeError, "system"),
    ("pep/pos-int", lambda: _epr(pos=torch.ones(4, 3, 2, dtype=torch.long)), TypeError, "pos"),
    ("pep/pos-nan", lambda: _epr(pos=_nan_pos()), ValueError, "pos"),
    (
        "pep/g-shape",
        lambda: _epr(g=torch.ones(4, 3, 3, dtype=torch.float64)),
        ValueError,
        r"\bg\b",
    ),
    (
        "pep/one-snapshot",
        lambda: _epr(pos=_snapshots()[0][:1], g=_snapshots()[1][:1]),
        ValueError,
        "pos",
    ),
    ("pep/batch-size-zero", lambda: _epr(batch_size=0), ValueError, "batch_size"),
    ("pep/batch-size-str", lambda: _epr(batch_size="2"), TypeError, "batch_size"),
    ("pep/probes", lambda: _epr(divergence_probes=-1), ValueError, "divergence_probes"),
    ("pep/bins-length", lambda: _epr(bins=(2,)), ValueError, "bins"),
    ("pep/seed", lambda: _epr(seed=1.0), TypeError, "seed"),
    ("pep/seed-huge", lambda: _epr(seed=-(2**64)), ValueError, "seed"),
    (
        "pep/returns-wrong-shape",
        lambda: _epr(score_model=lambda s: s[..., :2]),
        ValueError,
        "score_model",
    ),
    ("particle-score/net", lambda: ParticleScore(3, _system()), TypeError, r"\bnet\b"),
    (
        "particle-score/zero-init",
        lambda: ParticleScore(torch.nn.Linear(2, 2), _system(), zero_init="no"),
        TypeError,
        "zero_init",
    ),
    (
        "particle-score/parametrise",
        lambda: ParticleScore(torch.nn.Linear(2, 2), _system(), parametrise=None),
        TypeError,
        "parametrise",
    ),
    # structure
    (
        "phi/box-length",
        lambda: local_packing_fraction(_pos_in_box(), 0.0),
        ValueError,
        "box_length",
    ),
    (
        "phi/radius-str",
        lambda: local_packing_fraction(_pos_in_box(), 10.0, radius="2"),
        TypeError,
        "radius",
    ),
    (
        "phi/radius-large",
        lambda: local_packing_fraction(_pos_in_box(), 10.0, radius=6.0),
        ValueError,
        "radius",
    ),
    (
        "phi/r0-inf",
        lambda: local_packing_fraction(_pos_in_box(), 10.0, r0=math.inf),
        ValueError,
        "r0",
    ),
    (
        "clusters/pos-int",
        lambda: cluster_labels(torch.ones(4, 2, dtype=torch.long), 10.0),
        TypeError,
        "pos",
    ),
    (
        "sk/n-max-zero",
        lambda: structure_factor(_pos_in_box(), 10.0, n_max=0),
        ValueError,
        "n_max",
    ),
    (
        "sk/n-max-float",
        lambda: structure_factor(_pos_in_box(), 10.0, n_max=1.5),
        TypeError,
        "n_max",
    ),
    (
        "sk/q-max-huge",
        lambda: structure_factor(_pos_in_box(), 10.0, q_max=1e6),
        ValueError,
        "q_max",
    ),
    (
        "classes/nan",
        lambda: density_classes(torch.tensor([0.1, NAN]), 0.2, 0.5),
        ValueError,
        "local_phi",
    ),
    (
        "classes/thresholds",
        lambda: density_classes(torch.tensor([0.1]), 0.5, 0.2),
        ValueError,
        "bulk_above",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "name"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_bad_input_is_a_clear_error(call, error, name, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # best_checkpoint="b.pt" must not land in the repository
    with pytest.raises(error, match=rf"\b(?:{name})\b") as info:  # data, not eval_data
        call()
    assert type(info.value) is error  # not a subclass standing in for the other kind
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_enough_cases() -> None:
    assert len(CASES) >= 30
    assert len({case[0] for case in CASES}) == len(CASES)


def test_corrupt_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        _train(checkpoint=path)


def test_nan_data_blames_data_with_finite_checks_off() -> None:
    """With the whole-tensor checks off (as on accelerators by default) a NaN batch still
    names ``data``, found when the loss turns out non-finite, not ``x`` or the loss."""
    set_finite_checks(False)
    try:
        with pytest.raises(ValueError, match="data") as info:
            _train(data=_nan_draw)
        assert "loss" not in str(info.value)
        with pytest.raises(ValueError, match="data"):
            _train(data=_nan_data(), steps=40)  # row 5 is drawn within 40 steps of 4
    finally:
        set_finite_checks(None)


def test_diverging_model_still_blames_the_loss() -> None:
    """Finite data and a model producing NaN: the loss is blamed (FloatingPointError)."""

    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.w * NAN

    with pytest.raises(FloatingPointError, match="loss"):
        _train(model=Broken())


def test_stale_checkpoint_temporaries_removed_on_resume(tmp_path: Path) -> None:
    """A temporary left by a writer killed before its rename disappears at the next start,
    even one that writes nothing (the run is already complete)."""
    path = tmp_path / "ck.pt"
    _train(checkpoint=path)
    stale = tmp_path / f".ck.pt.{'0' * 32}.tmp"  # the writer-less form: always stale
    stale.write_bytes(b"half a checkpoint")
    result = _train(checkpoint=path)
    assert result.resumed_from == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


def test_stale_best_checkpoint_temporaries_removed(tmp_path: Path) -> None:
    """The run is complete, so the restart writes nothing: the stale temporary of the best
    checkpoint is removed all the same."""
    best, checkpoint = tmp_path / "best.pt", tmp_path / "ck.pt"
    kwargs = {"eval_data": _data(6, seed=3), "best_checkpoint": best, "checkpoint": checkpoint}
    first = _train(**kwargs)
    stale = tmp_path / f".best.pt.{'f' * 32}.tmp"
    stale.write_bytes(b"half a best checkpoint")
    again = _train(**kwargs)
    assert again.resumed_from == 2 and again.best_step == first.best_step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "ck.pt"]
    saved = torch.load(best, weights_only=False)
    assert saved["step"] == first.best_step and saved["heldout_loss"] == first.best_loss


# ------------------------------------------------------------------------------ valid edges
def _same_result(a, b) -> None:
    assert a.losses == b.losses
    for key, value in a.raw_state_dict.items():
        assert torch.equal(value, b.raw_state_dict[key]), key
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key


def test_train_score_edge_inputs_match_plain_ones() -> None:
    plain = _train(steps=3, eval_data=_data(6, seed=3), eval_every=2)
    # non-contiguous data (a transposed copy viewed back), NumPy integers, an int learning rate
    strided = _data().t().contiguous().t()
    assert not strided.is_contiguous()
    edge = _train(
        data=strided,
        steps=np.int64(3),
        batch_size=np.int32(4),
        eval_data=_data(6, seed=3),
        eval_every=np.int64(2),
    )
    _same_result(plain, edge)
    assert plain.history == edge.history
    # float32 data for a float64 model: moved to the model's dtype, as documented
    single = _train(data=_data().float())
    assert all(math.isfinite(v) for v in single.losses)
    one_lr = _train(lr=1)  # an int learning rate is a real number
    assert one_lr.losses[0] == _train(lr=1.0).losses[0]


def test_particle_epr_edge_inputs_match_plain_ones() -> None:
    pos, g = _snapshots(6)
    system = _system(eps=0.2)
    plain = particle_entropy_production(
        _score, system, pos, g, batch_size=4, bins=(2, 3), divergence_probes=1
    )
    edge = particle_entropy_production(
        _score,
        system,
        pos.transpose(0, 1).contiguous().transpose(0, 1),
        g.transpose(0, 1).contiguous().transpose(0, 1),
        batch_size=np.int64(4),
        bins=[2, 3],
        divergence_probes=np.int32(1),
    )
    assert plain.total == edge.total and plain.divergence == edge.divergence
    assert torch.equal(plain.local, edge.local)
    assert torch.equal(plain.spatial_counts, edge.spatial_counts)
    assert plain.spatial_counts.shape == (2, 3) and int(plain.spatial_counts.sum()) == 6 * 3


def test_estimator_edge_inputs_match_plain_ones() -> None:
    x = _x(20)
    tensor_groups = entropy_production(
        x, _score, _score, torch.tensor([1.0, 2.0]), groups=torch.tensor([0, 0])
    )
    list_groups = entropy_production(x, _score, _score, [1.0, 2.0], groups=[0, 0])
    assert tensor_groups.total == list_groups.total
    assert torch.equal(tensor_groups.per_group, list_groups.per_group)
    # int32 groups; a per-dimension box equal to the scalar one; origin given as [1]
    local = torch.rand(3, 4, dtype=torch.float64)
    pos = torch.rand(3, 4, 2, dtype=torch.float64) * 4 - 2
    assert torch.equal(
        group_sum(local, torch.tensor([0, 1, 1, 0], dtype=torch.int32)),
        group_sum(local, torch.tensor([0, 1, 1, 0])),
    )
    scalar = spatial_decomposition(local, pos, 4.0, 2)
    vector = spatial_decomposition(
        local, pos, torch.tensor([4.0, 4.0]), (2, 2), origin=torch.tensor([-2.0])
    )
    for a, b in zip(scalar, vector, strict=True):
        assert torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0))
    # the brute-force count of the cells
    cells = ((pos + 2) // 2).long().clamp(0, 1)
    counts = torch.zeros(2, 2, dtype=torch.long)
    for i, j in cells.reshape(-1, 2).tolist():
        counts[i, j] += 1
    assert torch.equal(scalar[2], counts)


def test_structure_factor_at_the_wave_vector_limit() -> None:
    pos = _pos_in_box()
    q, s, count = structure_factor(pos, 10.0, n_max=3)
    # brute force for the first shell: every n != 0 with round(|n|) == 1, i.e. |n| in [0.5, 1.5)
    dq = 2 * math.pi / 10.0
    shell = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if 0.5 <= math.hypot(a, b) < 1.5]
    values = [
        abs(complex(sum(np.exp(-1j * dq * (a * x + b * y)) for x, y in pos.tolist()))) ** 2 / 6
        for a, b in shell
    ]
    assert int(count[0]) == len(shell) == 8
    assert float(s[0]) == pytest.approx(sum(values) / len(values), rel=1e-12)
    assert float(q[0]) == pytest.approx(dq)
    assert q.shape == s.shape == count.shape
