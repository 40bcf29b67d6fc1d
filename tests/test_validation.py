"""``gtlib.validation`` and the core's promises about bad values (NaN, inf, wrong scalars)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gtlib.attention import Pattern, attend, segment_softmax, sparse_attention
from gtlib.validation import (
    all_finite,
    check_choice,
    check_finite,
    check_index,
    check_int,
    check_real,
    check_tensor,
    finite_checks_enabled,
    set_finite_checks,
)


@pytest.mark.parametrize(
    ("value", "kwargs", "error", "message"),
    [
        ("2", {}, TypeError, "k must be an int, got '2'"),
        (2.0, {}, TypeError, "k must be an int"),
        (True, {}, TypeError, "k must be an int"),
        (torch.tensor(2.0), {}, TypeError, "k must be an int"),
        (torch.tensor([1, 2]), {}, TypeError, "k must be an int"),
        (0, {"minimum": 1}, ValueError, "k must be >= 1, got 0"),
        (9, {"maximum": 8}, ValueError, "k must be <= 8, got 9"),
    ],
)
def test_check_int_rejects(value, kwargs, error, message):
    with pytest.raises(error, match=message):
        check_int(value, "k", **kwargs)


def test_check_int_accepts_integers_of_every_kind():
    assert check_int(np.int32(3), "k") == 3
    assert check_int(torch.tensor(4), "k", minimum=4) == 4
    assert type(check_int(np.int64(5), "k")) is int


@pytest.mark.parametrize(
    ("value", "kwargs", "error", "message"),
    [
        ("2", {}, TypeError, "scale must be a real number"),
        (None, {}, TypeError, "scale must be a real number"),
        (float("nan"), {"finite": False}, ValueError, "scale must be finite"),
        (float("inf"), {}, ValueError, "scale must be finite"),
        (0.0, {"positive": True}, ValueError, "scale must be > 0"),
        (-1e-9, {"nonnegative": True}, ValueError, "scale must be >= 0"),
        (complex(1, 1), {}, TypeError, "scale must be a real number"),
    ],
)
def test_check_real_rejects(value, kwargs, error, message):
    with pytest.raises(error, match=message):
        check_real(value, "scale", **kwargs)


def test_check_real_infinity_when_allowed_and_tensors():
    assert check_real(float("inf"), "x", finite=False) == float("inf")
    assert check_real(torch.tensor(0.5), "x", positive=True) == 0.5


def test_choice_tensor_and_index_checks():
    assert check_choice("sum", "reduce", ("sum", "mean")) == "sum"
    with pytest.raises(ValueError, match="reduce must be one of"):
        check_choice("max", "reduce", ("sum", "mean"))
    with pytest.raises(TypeError, match="reduce must be one of"):
        check_choice(3, "reduce", ("sum", "mean"))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        check_tensor([1.0], "x")
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        check_tensor(torch.zeros(2, dtype=torch.long), "x", floating=True)
    with pytest.raises(TypeError, match="index must have an integer dtype"):
        check_index(torch.zeros(2, dtype=torch.bool), "index")
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        check_tensor(torch.zeros(3), "x", dim=2)
    with pytest.raises(ValueError, match=r"index must lie in \[0, 3\), found values in \[0, 3\]"):
        check_index(torch.tensor([0, 3]), "index", 3)
    with pytest.raises(ValueError, match="meta tensor"):
        check_index(torch.zeros(2, dtype=torch.long, device="meta"), "index", 3)


def test_finite_checks_can_be_switched_off(monkeypatch):
    bad = torch.tensor([1.0, float("nan")])
    with pytest.raises(ValueError, match="x contains 1 NaN or infinite value"):
        check_finite(bad, "x")
    set_finite_checks(False)
    try:
        assert check_finite(bad, "x") is bad
    finally:
        set_finite_checks(None)
    monkeypatch.setenv("GTLIB_CHECK_FINITE", "0")
    assert not finite_checks_enabled()
    monkeypatch.delenv("GTLIB_CHECK_FINITE")  # default: CPU tensors only (no device syncs)
    assert finite_checks_enabled("cpu") and not finite_checks_enabled("cuda")
    monkeypatch.setenv("GTLIB_CHECK_FINITE", "1")
    assert finite_checks_enabled("cuda")


def test_all_finite_against_elementwise_isfinite():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.complex64):
        x = torch.randn(50, 3, generator=g).to(dtype)
        assert all_finite(x)
        for bad in (float("nan"), float("inf"), float("-inf")):
            y = x.clone()
            y[7, 1] = bad
            assert not all_finite(y)
            assert all_finite(y, allow_negative_infinity=True) == (bad == float("-inf"))
    huge = torch.full((4,), 3e38)  # finite values whose sum overflows
    assert all_finite(huge) and all_finite(-huge, allow_negative_infinity=True)
    assert all_finite(torch.empty(0)) and all_finite(torch.arange(3))


# ----------------------------------------------------------------------- the core's promises
def _problem():
    edge_index = torch.tensor([[0, 1, 2, 2], [1, 2, 0, 1]])
    pattern = Pattern.from_edge_index(edge_index, 3)
    q, k, v = (torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    return pattern, q, k, v


@pytest.mark.parametrize("name", ["query", "key", "value", "bias"])
@pytest.mark.parametrize("mode", ["scatter", "sparse", "stream", "auto"])
def test_non_finite_inputs_are_named(name, mode):
    pattern, q, k, v = _problem()
    inputs = {"query": q, "key": k, "value": v, "bias": torch.zeros(4, 2)}
    inputs[name] = inputs[name].clone()
    inputs[name].view(-1)[1] = float("nan")
    with pytest.raises(ValueError, match=f"{name} contains 1 NaN"):
        sparse_attention(inputs["query"], inputs["key"], inputs["value"], pattern,
                         bias=inputs["bias"], mode=mode)  # fmt: skip


def test_minus_infinity_bias_masks_and_is_not_an_error():
    pattern, q, k, v = _problem()
    bias = torch.zeros(4, 2)
    bias[0] = float("-inf")  # receiver 1 loses sender 0, keeps sender 2
    out = sparse_attention(q, k, v, pattern, bias=bias, mode="scatter")
    torch.testing.assert_close(out[1], v[2])  # one sender left: weight 1
    bias[[0, 3]] = float("-inf")  # receiver 1 loses both senders: zeros, not NaN
    out = sparse_attention(q, k, v, pattern, bias=bias, mode="scatter")
    assert torch.count_nonzero(out[1]) == 0 and bool(torch.isfinite(out).all())


def test_overflow_and_message_fn_nan_are_reported():
    pattern, q, k, v = _problem()
    with pytest.raises(ValueError, match="not finite although every input is"):
        attend(pattern, torch.full_like(v, 2e38), reduce="sum", score=None)  # 2 senders: 4e38
    with pytest.raises(ValueError, match="message_fn/score_mod produced NaN"):
        attend(pattern, message_fn=lambda e: e.x_src[0] * float("nan"), src_inputs=(v,),
               reduce="sum", score=None)  # fmt: skip


def test_segment_softmax_scores_and_num_segments():
    index = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="scores contain NaN or \\+inf"):
        segment_softmax(torch.tensor([1.0, float("nan"), 2.0]), index)
    masked = segment_softmax(torch.tensor([float("-inf"), 0.0, 2.0]), index)
    torch.testing.assert_close(masked, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match="num_segments must be an int, got '2'"):
        segment_softmax(torch.randn(3), index, "2")
    with pytest.raises(ValueError, match="num_segments must be >= 0"):
        segment_softmax(torch.randn(3), index, -1)
    with pytest.raises(ValueError, match=r"index must lie in \[0, 1\)"):
        segment_softmax(torch.randn(3), index, 1)


# ------------------------------------------------------------------------- operators, loader
def _fno_cases():
    from gtlib.operators import FNO, SpectralConv

    return [
        (ValueError, "in_channels must be >= 1, got -1", lambda: FNO(-1, 1, (4, 4))),
        (TypeError, "in_channels must be an int, got '2'", lambda: FNO("2", 1, (4, 4))),
        (TypeError, "n_layers must be an int, got '2'", lambda: FNO(1, 1, 4, n_layers="2")),
        (ValueError, "hidden_channels must be >= 1", lambda: FNO(1, 1, 4, hidden_channels=-1)),
        (ValueError, "projection_channels must be >= 1", lambda: FNO(1, 1, 4,
                                                                    projection_channels=0)),
        (TypeError, "n_modes must be an int or 1 to 3 ints", lambda: FNO(1, 1, "4")),
        (ValueError, "n_modes must give 1 to 3 dimensions", lambda: FNO(1, 1, (4,) * 4)),
        (ValueError, "n_modes must be >= 1, got 0", lambda: SpectralConv(2, 2, (0, 4))),
        (TypeError, "in_channels must be an int, got '2'", lambda: SpectralConv("2", 2, 4)),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(9))
def test_operator_constructors_name_bad_arguments(case):
    error, message, build = _fno_cases()[case]
    with pytest.raises(error, match=message):
        build()


def test_operator_inputs_dtype_device_and_finiteness():
    from gtlib.operators import FNO, GNO, SpectralConv

    fno = FNO(1, 1, (4, 4), hidden_channels=8)
    x = torch.randn(2, 1, 8, 8)
    assert torch.isfinite(fno(x)).all()
    bad = x.clone()
    bad[1, 0, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="x contains 1 NaN or infinite value"):
        fno(bad)
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the operator's parameters"):
        fno(x.double())
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        SpectralConv(1, 1, (4, 4))(x.double())
    gno = GNO(2, 2, coord_dim=2, radius=0.5, transform_type="nonlinear",
              channel_mlp_layers=(8,), pos_embedding_type=None)  # fmt: skip
    points = torch.rand(20, 2)
    f = torch.randn(20, 2)
    assert torch.isfinite(gno(points, points, f)).all()
    f[3, 1] = float("nan")
    with pytest.raises(ValueError, match="f_y contains 1 NaN"):  # GNO names it f_y now
        gno(points, points, f)
    with pytest.raises(ValueError, match="radius must be > 0"):
        GNO(2, 2, coord_dim=2, radius=-1.0)


def test_large_gt_loader_refuses_non_finite_features():
    from torch_geometric.data import Data

    from gtlib.loader import LargeGTLoader

    x = torch.randn(6, 3)
    x[2, 0] = float("nan")
    data = Data(x=x, edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]))
    with pytest.raises(ValueError, match="data.x contains 1 NaN"):
        LargeGTLoader(data, num_tokens=2)
    with pytest.raises(TypeError, match="num_tokens must be an int"):
        LargeGTLoader(Data(x=torch.randn(6, 3), edge_index=data.edge_index), num_tokens=2.5)


def test_check_bool_device_and_input():
    from gtlib.validation import check_bool, check_device, check_input

    assert check_bool(np.bool_(True), "flag") is True
    assert check_bool(torch.tensor(False), "flag") is False
    for bad in ("no", 1, None, torch.tensor([True, False])):
        with pytest.raises(TypeError, match="flag must be a bool"):
            check_bool(bad, "flag")
    assert check_device("cpu") == torch.device("cpu") and check_device(None) is None
    with pytest.raises(ValueError, match="device='gpu0' is not a device"):
        check_device("gpu0")
    with pytest.raises(TypeError, match="device must be a torch.device"):
        check_device(1.5)
    weight = torch.zeros(2)
    x = torch.ones(3, 2)
    assert check_input(x, "x", weight, dim=2) is x
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the layer's parameters"):
        check_input(x.double(), "x", weight, owner="layer")
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        check_input(x, "x", weight, dim=3)
    with pytest.raises(ValueError, match="x is on meta but the module's parameters on cpu"):
        check_input(x.to("meta"), "x", weight)
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        check_input(torch.tensor([1.0, float("nan")]), "x", weight)


def test_devices_compare_equal_to_their_tensors():
    """``check_device`` gives the device the tensors report: ``cpu:0`` is ``cpu``, so a pattern
    moved to ``"cpu:0"`` still meets its inputs (it raised "inputs on cpu, pattern on cpu:0")."""
    from gtlib.attention import Pattern, sparse_attention
    from gtlib.validation import check_device

    assert check_device("cpu:0") == torch.empty(0, device="cpu:0").device
    assert check_device(torch.device("meta")) == torch.device("meta")
    pattern = Pattern.from_edge_index(torch.tensor([[0, 1, 2], [1, 2, 0]]), 3).to("cpu:0")
    q = torch.randn(3, 1, 4, dtype=torch.float64)
    want = sparse_attention(q, q, q, Pattern.from_edge_index(pattern.edge_index, 3))
    torch.testing.assert_close(sparse_attention(q, q, q, pattern), want)
    if not torch.cuda.is_available():  # named without an index and absent: kept as given
        assert check_device("cuda") == torch.device("cuda")


def test_simulate_rejects_a_device_it_cannot_use():
    from gtlib.datasets import ActiveOUParticles, simulate

    system = ActiveOUParticles(16, packing_fraction=0.3)
    with pytest.raises(ValueError, match="`device`=meta is not available"):
        simulate(system, 2, 1e-3, device="meta", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="`device`=cuda is not available"):
            simulate(system, 2, 1e-3, device="cuda", progress=False)
