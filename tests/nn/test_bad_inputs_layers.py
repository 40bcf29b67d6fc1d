"""Bad inputs to the attention convolutions and the graph neural operators: every case raises
``TypeError`` (wrong type) or ``ValueError`` (wrong value) with a message naming the argument;
valid edge cases (empty graph, int32 indices, non-contiguous features, duplicate edges) still
match PyG with the same weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch_geometric.nn as pyg_nn

from gtlib.attention import Pattern
from gtlib.nn import ExphormerConv, GATConv, GATv2Conv, GPSConv, TransformerConv
from gtlib.operators import GINO, GNO
from gtlib.validation import set_finite_checks

NAN, INF = float("nan"), float("inf")


@pytest.fixture(autouse=True)
def finite_checks_on():
    """The finiteness checks at their default for CPU tensors (on), whatever the environment."""
    set_finite_checks(True)
    yield
    set_finite_checks(None)


def small_gino(**kwargs):
    options = dict(in_gno_channel_mlp_layers=[8], out_gno_channel_mlp_layers=[8],
                   gno_pos_embedding_channels=2, fno_n_modes=(4, 4), fno_hidden_channels=4,
                   fno_n_layers=1, projection_channels=8)  # fmt: skip
    options.update(kwargs)
    return GINO(1, 1, (8, 8), 0.3, **options)


# ---------------------------------------------------------------------- constructors
CONSTRUCTORS = {
    # GATConv
    "gat in_channels str": (lambda: GATConv("8", 4), TypeError, "in_channels"),
    "gat in_channels 0": (lambda: GATConv(0, 4), ValueError, "in_channels"),
    "gat in_channels triple": (lambda: GATConv((8, 8, 8), 4), ValueError, "in_channels"),
    "gat in_channels pair float": (lambda: GATConv((8, 2.5), 4), TypeError, r"in_channels\[1\]"),
    "gat out_channels float": (lambda: GATConv(8, 4.0), TypeError, "out_channels"),
    "gat heads 0": (lambda: GATConv(8, 4, heads=0), ValueError, "heads"),
    "gat heads bool": (lambda: GATConv(8, 4, heads=True), TypeError, "heads"),
    "gat dropout 1": (lambda: GATConv(8, 4, dropout=1.0), ValueError, "dropout"),
    "gat dropout str": (lambda: GATConv(8, 4, dropout="0.1"), TypeError, "dropout"),
    "gat dropout nan": (lambda: GATConv(8, 4, dropout=NAN), ValueError, "dropout"),
    "gat edge_dim 0": (lambda: GATConv(8, 4, edge_dim=0), ValueError, "edge_dim"),
    "gat concat str": (lambda: GATConv(8, 4, concat="yes"), TypeError, "concat"),
    "gat add_self_loops None": (
        lambda: GATConv(8, 4, add_self_loops=None),
        TypeError,
        "add_self_loops",
    ),
    "gat negative_slope str": (
        lambda: GATConv(8, 4, negative_slope="0.2"),
        TypeError,
        "negative_slope",
    ),
    "gat fill_value name": (lambda: GATConv(8, 4, fill_value="median"), ValueError, "fill_value"),
    "gat aggr": (lambda: GATConv(8, 4, aggr="max"), ValueError, "aggr"),
    # GATv2Conv
    "gatv2 share_weights int": (
        lambda: GATv2Conv(8, 4, share_weights=1),
        TypeError,
        "share_weights",
    ),
    "gatv2 out_channels -2": (lambda: GATv2Conv(8, -2), ValueError, "out_channels"),
    "gatv2 negative_slope inf": (
        lambda: GATv2Conv(8, 4, negative_slope=INF),
        ValueError,
        "negative_slope",
    ),
    # TransformerConv
    "transformer beta str": (lambda: TransformerConv(8, 4, beta="no"), TypeError, "beta"),
    "transformer root_weight int": (
        lambda: TransformerConv(8, 4, root_weight=0),
        TypeError,
        "root_weight",
    ),
    "transformer heads -1": (lambda: TransformerConv(8, 4, heads=-1), ValueError, "heads"),
    # ExphormerConv
    "exphormer degree -1": (lambda: ExphormerConv(8, 4, degree=-1), ValueError, "degree"),
    "exphormer num_virtual float": (
        lambda: ExphormerConv(8, 4, num_virtual=1.5),
        TypeError,
        "num_virtual",
    ),
    "exphormer clamp 0": (lambda: ExphormerConv(8, 4, clamp=0), ValueError, "clamp"),
    "exphormer clamp str": (lambda: ExphormerConv(8, 4, clamp="5"), TypeError, "clamp"),
    "exphormer edge_dim str": (lambda: ExphormerConv(8, 4, edge_dim="3"), TypeError, "edge_dim"),
    "exphormer dropout -0.1": (lambda: ExphormerConv(8, 4, dropout=-0.1), ValueError, "dropout"),
    # GPSConv
    "gps channels str": (lambda: GPSConv("8", None), TypeError, "channels"),
    "gps heads divisor": (lambda: GPSConv(8, None, heads=3), ValueError, "heads"),
    "gps attn_type int": (lambda: GPSConv(8, None, attn_type=3), TypeError, "attn_type"),
    "gps attn_type name": (lambda: GPSConv(8, None, attn_type="linear"), ValueError, "attn_type"),
    "gps act name": (lambda: GPSConv(8, None, act="nope"), ValueError, "act"),
    "gps act int": (lambda: GPSConv(8, None, act=3), TypeError, "act"),
    "gps norm name": (lambda: GPSConv(8, None, norm="nope"), ValueError, "norm"),
    "gps attn_kwargs list": (lambda: GPSConv(8, None, attn_kwargs=[1]), TypeError, "attn_kwargs"),
    "gps conv str": (lambda: GPSConv(8, "gat"), TypeError, "conv"),
    "gps dropout 2": (lambda: GPSConv(8, None, dropout=2), ValueError, "dropout"),
    # GNO
    "gno in_channels 0": (lambda: GNO(0, 2, 2, 0.1), ValueError, "in_channels"),
    "gno coord_dim float": (lambda: GNO(2, 2, 2.0, 0.1), TypeError, "coord_dim"),
    "gno radius nan": (lambda: GNO(2, 2, 2, NAN), ValueError, "radius"),
    "gno transform_type int": (
        lambda: GNO(2, 2, 2, 0.1, transform_type=1),
        TypeError,
        "transform_type",
    ),
    "gno pos_embedding_type": (
        lambda: GNO(2, 2, 2, 0.1, pos_embedding_type="rope"),
        ValueError,
        "pos_embedding_type",
    ),
    "gno channel_mlp_layers int": (
        lambda: GNO(2, 2, 2, 0.1, channel_mlp_layers=8),
        TypeError,
        "channel_mlp_layers",
    ),
    "gno channel_mlp_layers 0": (
        lambda: GNO(2, 2, 2, 0.1, channel_mlp_layers=[8, 0]),
        ValueError,
        r"channel_mlp_layers\[1\]",
    ),
    "gno non_linearity name": (
        lambda: GNO(2, 2, 2, 0.1, channel_mlp_non_linearity="nope"),
        ValueError,
        "channel_mlp_non_linearity",
    ),
    "gno reduction": (lambda: GNO(2, 2, 2, 0.1, reduction="max"), ValueError, "reduction"),
    "gno max_positions": (
        lambda: GNO(2, 2, 2, 0.1, pos_embedding_max_positions=0),
        ValueError,
        "pos_embedding_max_positions",
    ),
    # GINO: its own argument names, not the inner GNO's
    "gino out_radius": (lambda: small_gino(out_radius=-1.0), ValueError, "out_radius"),
    "gino in transform": (
        lambda: small_gino(in_gno_transform_type="quadratic"),
        ValueError,
        "in_gno_transform_type",
    ),
    "gino out reduction": (
        lambda: small_gino(out_gno_reduction="max"),
        ValueError,
        "out_gno_reduction",
    ),
    "gino out layers": (
        lambda: small_gino(out_gno_channel_mlp_layers=[0]),
        ValueError,
        "out_gno_channel_mlp_layers",
    ),
    "gino latent float": (
        lambda: GINO(1, 1, (8, 8.5), 0.1),
        TypeError,
        r"latent_resolution\[1\]",
    ),
    "gino latent str": (
        lambda: GINO(1, 1, "8", 0.1, coord_dim=2),
        TypeError,
        "latent_resolution",
    ),
    "gino chunk 0": (lambda: small_gino(gno_chunk_size=0), ValueError, "gno_chunk_size"),
    "gino fno_kwargs": (lambda: small_gino(fno_kwargs=3), TypeError, "fno_kwargs"),
    "gino projection 0": (
        lambda: small_gino(projection_channels=0),
        ValueError,
        "projection_channels",
    ),
    "gino embedding channels": (
        lambda: small_gino(gno_pos_embedding_channels=-1),
        ValueError,
        "gno_pos_embedding_channels",
    ),
}


@pytest.mark.parametrize("case", list(CONSTRUCTORS))
def test_constructor_errors_name_the_argument(case):
    build, error, name = CONSTRUCTORS[case]
    with pytest.raises(error, match=name):
        build()


# ---------------------------------------------------------------------- forward inputs
def graph(num_nodes=9, num_edges=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_nodes, (2, num_edges), generator=gen)


def with_value(t, value, index=(1, 1)):
    t = t.clone()
    t[index] = value
    return t


X, EDGES, EDGE_ATTR = torch.randn(9, 4), graph(), torch.randn(24, 3)
BATCH = torch.tensor([0] * 5 + [1] * 4)
GPS_EDGES = torch.tensor([[0, 1, 2, 3, 5, 6, 7], [1, 2, 3, 4, 6, 7, 8]])
POINTS, QUERIES, F_Y = torch.rand(20, 2), torch.rand(7, 2), torch.randn(20, 2)


def gat(**kwargs):
    return GATConv(4, 2, heads=2, edge_dim=3, **kwargs)


def exphormer(x=X, edge_index=GPS_EDGES, batch=BATCH, edge_attr=None):
    return ExphormerConv(4, 2, heads=2, edge_dim=3)(x, edge_index, batch, edge_attr)


def gno(**kwargs):
    return GNO(2, 2, 2, 0.4, channel_mlp_layers=[4], pos_embedding_type=None)(**kwargs)


FORWARDS = {
    # GAT family: features, edge features, edge indices
    "gat x nan": (lambda: gat()(with_value(X, NAN), EDGES, EDGE_ATTR), ValueError, "x contains"),
    "gat x inf": (lambda: gat()(with_value(X, -INF), EDGES, EDGE_ATTR), ValueError, "x contains"),
    "gat edge_attr nan": (
        lambda: gat()(X, EDGES, with_value(EDGE_ATTR, NAN)),
        ValueError,
        "edge_attr contains",
    ),
    "gat x_dst inf": (
        lambda: GATConv((4, 4), 2)((X, with_value(X, INF)), EDGES),
        ValueError,
        "x_dst contains",
    ),
    "gat x list": (lambda: gat()([X, X, X], EDGES), TypeError, "x must be a tensor"),
    "gat x int": (lambda: gat()(X.long(), EDGES), TypeError, "x must be a floating-point"),
    "gat edge_index complex": (
        lambda: gat()(X, EDGES.to(torch.complex128)),
        TypeError,
        "edge_index must have an integer dtype",
    ),
    "gat edge_index bool": (
        lambda: gat()(X, EDGES.bool()),
        TypeError,
        "edge_index must have an integer dtype",
    ),
    "gat edge_index range": (
        lambda: gat()(X, with_value(EDGES, 9, (0, 0))),
        ValueError,
        "edge_index senders must lie in",
    ),
    "gat edge_index negative": (
        lambda: gat()(X, with_value(EDGES, -1, (1, 0))),
        ValueError,
        "edge_index .*must lie in",
    ),
    "gatv2 x nan": (
        lambda: GATv2Conv(4, 2)(with_value(X, NAN), EDGES),
        ValueError,
        "x contains",
    ),
    "transformer x nan": (
        lambda: TransformerConv(4, 2)(with_value(X, NAN), EDGES),
        ValueError,
        "x contains",
    ),
    "transformer edge_attr inf": (
        lambda: TransformerConv(4, 2, edge_dim=3)(X, EDGES, with_value(EDGE_ATTR, INF)),
        ValueError,
        "edge_attr contains",
    ),
    # ExphormerConv
    "exphormer x nan": (lambda: exphormer(x=with_value(X, NAN)), ValueError, "x contains"),
    "exphormer edge_attr nan": (
        lambda: exphormer(edge_attr=torch.full((7, 3), NAN)),
        ValueError,
        "edge_attr contains",
    ),
    "exphormer edge_attr int": (
        lambda: exphormer(edge_attr=torch.ones(7, 3, dtype=torch.long)),
        TypeError,
        "edge_attr",
    ),
    "exphormer edge_index float": (
        lambda: exphormer(edge_index=GPS_EDGES.double()),
        TypeError,
        "edge_index",
    ),
    "exphormer edge_index shape": (
        lambda: exphormer(edge_index=GPS_EDGES[:1]),
        ValueError,
        "edge_index",
    ),
    "exphormer batch float": (lambda: exphormer(batch=BATCH.float()), TypeError, "batch"),
    "exphormer batch length": (lambda: exphormer(batch=BATCH[:-1]), ValueError, "batch"),
    # GPSConv
    "gps x nan": (
        lambda: GPSConv(4, None, heads=2)(with_value(X, NAN), GPS_EDGES, BATCH),
        ValueError,
        "x contains",
    ),
    "gps global_pattern": (
        lambda: GPSConv(4, None)(X, GPS_EDGES, BATCH, global_pattern=GPS_EDGES),
        TypeError,
        "global_pattern",
    ),
    # GNO
    "gno f_y nan": (
        lambda: gno(y=POINTS, x=QUERIES, f_y=with_value(F_Y, NAN)),
        ValueError,
        "f_y contains",
    ),
    "gno f_y int": (
        lambda: gno(y=POINTS, x=QUERIES, f_y=F_Y.long()),
        TypeError,
        "f_y must be a floating-point",
    ),
    "gno f_y on queries": (
        lambda: gno(y=POINTS, x=QUERIES, f_y=F_Y[:7]),
        ValueError,
        "f_y must have shape",
    ),
    "gno y inf": (
        lambda: gno(y=with_value(POINTS, INF), x=QUERIES, f_y=F_Y),
        ValueError,
        "y contains non-finite",
    ),
    "gno x list": (
        lambda: gno(y=POINTS, x=QUERIES.tolist(), f_y=F_Y),
        TypeError,
        "x must be a torch.Tensor",
    ),
    "gno pattern type": (
        lambda: gno(y=POINTS, x=QUERIES, f_y=F_Y, pattern=GPS_EDGES),
        TypeError,
        "pattern",
    ),
    "gno positional order": (
        lambda: GNO(2, 2, 2, 0.4)(POINTS, QUERIES, F_Y),
        TypeError,
        "GNO.forward takes its points by keyword",
    ),
    # GINO
    "gino f nan": (
        lambda: small_gino()(POINTS, with_value(F_Y[:, :1], NAN, (3, 0)), QUERIES),
        ValueError,
        "f contains",
    ),
    "gino f points": (
        lambda: small_gino()(POINTS, F_Y[:7, :1], QUERIES),
        ValueError,
        r"f must have shape .*input_pos",
    ),
    "gino f list": (
        lambda: small_gino()(POINTS, F_Y[:, :1].tolist(), QUERIES),
        TypeError,
        "f must be a torch.Tensor",
    ),
    "gino output_pos nan": (
        lambda: small_gino()(POINTS, F_Y[:, :1], with_value(QUERIES, NAN)),
        ValueError,
        "output_pos contains non-finite",
    ),
}


@pytest.mark.parametrize("case", list(FORWARDS))
def test_forward_errors_name_the_argument(case):
    run, error, name = FORWARDS[case]
    with pytest.raises(error, match=name):
        run()


def test_finiteness_checks_can_be_switched_off():
    """The opt-out of gtlib.validation reaches the layers (a NaN then propagates, unchecked)."""
    layer = GATConv(4, 2)
    set_finite_checks(False)
    out = layer(with_value(X, NAN), EDGES)
    assert torch.isnan(out).any()


# ---------------------------------------------------------------------- valid edge cases
PYG = {"gat": (GATConv, pyg_nn.GATConv), "gatv2": (GATv2Conv, pyg_nn.GATv2Conv),
       "transformer": (TransformerConv, pyg_nn.TransformerConv)}  # fmt: skip


def pair(name, **kwargs):
    ours_cls, pyg_cls = PYG[name]
    torch.manual_seed(0)
    theirs = pyg_cls(4, 3, heads=2, **kwargs).double()
    ours = ours_cls(4, 3, heads=2, **kwargs).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def outputs_and_grads(layer, x, edge_index, edge_attr=None):
    x = x.detach().requires_grad_()
    args = (x, edge_index) if edge_attr is None else (x, edge_index, edge_attr)
    out = layer(*args)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    grads = torch.autograd.grad((out * weights).sum(), [x, *layer.parameters()])
    return out, grads


def assert_same(ours, theirs):
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-10, atol=1e-10)
    for a, b in zip(ours[1], theirs[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(PYG))
def test_valid_edge_cases_match_pyg(name):
    ours, theirs = pair(name, edge_dim=3)
    x = torch.randn(9, 4, dtype=torch.float64)
    edge_index = graph(seed=1)
    edge_index[:, 1] = edge_index[:, 0]  # a duplicate edge
    edge_attr = torch.randn(24, 3, dtype=torch.float64)
    reference = outputs_and_grads(theirs, x, edge_index, edge_attr)
    # int32 indices
    assert_same(outputs_and_grads(ours, x, edge_index.int(), edge_attr), reference)
    # non-contiguous node and edge features (a transposed copy), same values
    x_t = x.t().contiguous().t()
    attr_t = edge_attr.t().contiguous().t()
    assert not x_t.is_contiguous() and not attr_t.is_contiguous()
    assert_same(outputs_and_grads(ours, x_t, edge_index, attr_t), reference)
    # an empty graph: self-loops only (GAT family) or no edge at all
    empty = torch.zeros(2, 0, dtype=torch.long)
    no_attr = torch.zeros(0, 3, dtype=torch.float64)
    assert_same(
        outputs_and_grads(ours, x, empty, no_attr), outputs_and_grads(theirs, x, empty, no_attr)
    )


def test_gno_valid_edge_cases_against_dense_sum():
    """Empty query set, no neighbours, duplicate points: GNO against a dense float64 sum."""
    torch.manual_seed(1)
    layer = GNO(2, 2, 2, 0.5, channel_mlp_layers=[4], pos_embedding_type=None).double()
    points = torch.rand(12, 2, dtype=torch.float64)
    points[1] = points[0]  # a duplicate point
    f_y = torch.randn(12, 2, dtype=torch.float64)
    queries = torch.cat([torch.rand(5, 2, dtype=torch.float64), torch.full((1, 2), 9.0)])
    out = layer(y=points, x=queries.t().contiguous().t(), f_y=f_y)
    dist = torch.cdist(queries, points)
    expected = torch.zeros(6, 2, dtype=torch.float64)
    for i in range(6):
        for j in range(12):
            if dist[i, j] <= 0.5:
                h = torch.cat([points[j], queries[i]])
                for k, lin in enumerate(layer.kernel):
                    h = lin(h if k == 0 else torch.nn.functional.gelu(h))
                expected[i] += h * f_y[j]
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(out[5], torch.zeros(2, dtype=torch.float64))  # no neighbour
    assert layer(y=points, x=queries[:0], f_y=f_y).shape == (0, 2)
    assert math.isfinite(float(out.sum()))


def test_pattern_argument_still_accepted():
    """A valid precomputed pattern is not mistaken for bad input."""
    layer = GATConv(4, 2, add_self_loops=False)
    pattern = Pattern.from_edge_index(EDGES, (9, 9))
    assert layer(X, pattern).shape == (9, 2)
