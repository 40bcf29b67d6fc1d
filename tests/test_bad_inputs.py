"""Bad inputs across gtlib's public API: the core (``gtlib.attention``), the loader, the layers
LargeGT/MLPScore/ParticleTransformer, the grid operators, ``gtlib.io`` and ``gtlib.validation``.

Every case of the table expects the convention of ``gtlib.validation``: ``TypeError`` for a
wrong type, ``ValueError`` for a wrong value, and a message naming the argument (or the file).
The second half checks valid edge cases (non-contiguous inputs, duplicate edges, empty graphs,
int32 indices, zero-size batches, huge and tiny coordinates) against independent references:
a dense float64 softmax attention, PyG's ``softmax``/``scatter`` and brute-force neighbours.
"""

from __future__ import annotations

import importlib.util
import math
import warnings

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from gtlib import io as gio
from gtlib import validation as val
from gtlib.attention import (
    Pattern,
    PatternCache,
    attend,
    minimum_image,
    segment_softmax,
    sparse_attention,
)
from gtlib.loader import LargeGTLoader
from gtlib.nn import LargeGT, MLPScore, ParticleTransformer
from gtlib.operators import FNO, H1Loss, LpLoss, MgNO, ScOT, SpectralConv

HAS_TORCH_SPARSE = importlib.util.find_spec("torch_sparse") is not None

NAN, INF = float("nan"), float("inf")


# ----------------------------------------------------------------------------- small inputs
def _edges(dtype=torch.long):
    return torch.tensor([[0, 1, 2, 2, 3], [1, 2, 0, 1, 3]], dtype=dtype)


def _pattern():
    return Pattern.from_edge_index(_edges(), 4)


def _qkv(n=4, heads=2, channels=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, heads, channels, generator=g, dtype=dtype) for _ in range(3))


def _with(x, index, value):
    x = x.clone()
    x.view(-1)[index] = value
    return x


def _attn(**overrides):
    """``sparse_attention`` on the 4-node pattern with some arguments replaced."""
    q, k, v = _qkv()
    args = dict(query=q, key=k, value=v, pattern=_pattern())
    args.update(overrides)
    return sparse_attention(
        args.pop("query"), args.pop("key"), args.pop("value"), args.pop("pattern"), **args
    )


def _attend(**overrides):
    q, k, v = _qkv()
    args = dict(pattern=_pattern(), value=v, query=q, key=k)
    args.update(overrides)
    return attend(args.pop("pattern"), args.pop("value"), **args)


def _pos(n=12, d=2, seed=0):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed))


def _graph(n=6, features=3):
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])
    return Data(x=torch.randn(n, features), edge_index=edge_index)


def _graph_with(**fields):
    data = _graph()
    for name, value in fields.items():
        data[name] = value
    return data


def _large_gt_batch(**fields):
    batch = Data(tokens=torch.randn(2, 6, 3), x=torch.randn(2, 3), n_id=torch.tensor([0, 1]))
    for name, value in fields.items():
        batch[name] = value
    return batch


def _large_gt(**kwargs):
    args = dict(
        in_channels=3,
        hidden_channels=4,
        out_channels=2,
        num_tokens=2,
        num_nodes=6,
        heads=2,
        num_centroids=4,
        global_dim=4,
    )
    args.update(kwargs)
    return LargeGT(**args)


def _particle_model(**kwargs):
    args = dict(
        in_channels=1,
        out_channels=2,
        dim=2,
        num_neighbors=3,
        hidden_channels=8,
        num_layers=1,
        heads=2,
        ff_channels=8,
    )
    args.update(kwargs)
    return ParticleTransformer(**args)


def _particle_call(pos=None, h=None, box=None, **kwargs):
    model = _particle_model(**kwargs)
    pos = _pos(10) if pos is None else pos
    h = torch.randn(pos.shape[:-1] + (1,)) if h is None else h
    return model(pos, h, box)


def _mgno(**kwargs):
    args = dict(in_channels=1, out_channels=1, hidden_channels=4, n_layers=1, n_levels=2)
    args.update(kwargs)
    return MgNO(**args)


def _scot(**kwargs):
    args = dict(
        in_channels=1,
        out_channels=1,
        image_size=8,
        patch_size=2,
        embed_dim=4,
        depths=(1, 1),
        heads=(1, 2),
        window_size=2,
        skip_connection_blocks=(1, 0),
    )
    args.update(kwargs)
    return ScOT(**args)


def _scot_call(x=None, lead_time=0.5, **kwargs):
    x = torch.randn(2, 1, 8, 8) if x is None else x
    return _scot(**kwargs)(x, lead_time)


def _loss_call(loss, pred=None, target=None):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 1, 8, 8, generator=g) if pred is None else pred
    target = torch.randn(2, 1, 8, 8, generator=g) if target is None else target
    return loss(pred, target)


def _hdf5_file(tmp_path_factory=None):
    import tempfile

    import h5py

    folder = tempfile.mkdtemp()
    path = f"{folder}/x.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(4.0)
    return h5py.File(path, "r")


# ------------------------------------------------------------------------------- the table
P = pytest.param
CASES = [
    # ---------------------------------------------------------------- Pattern.from_edge_index
    P(
        lambda: Pattern.from_edge_index(_edges().float()),
        TypeError,
        r"edge_index.*integer",
        id="edges-float",
    ),
    P(
        lambda: Pattern.from_edge_index(_edges().to(torch.complex64)),
        TypeError,
        r"edge_index.*integer",
        id="edges-complex",
    ),
    P(lambda: Pattern.from_edge_index(_edges().bool()), TypeError, r"edge_index", id="edges-bool"),
    P(
        lambda: Pattern.from_edge_index(_edges()[:, None]),
        ValueError,
        r"edge_index.*\[2, E\]",
        id="edges-3d",
    ),
    P(
        lambda: Pattern.from_edge_index(torch.zeros(3, 4, dtype=torch.long)),
        ValueError,
        r"edge_index.*\[2, E\]",
        id="edges-3-rows",
    ),
    P(
        lambda: Pattern.from_edge_index(torch.tensor([[0, -1], [1, 0]])),
        ValueError,
        r"edge_index senders",
        id="edges-negative",
    ),
    P(lambda: Pattern.from_edge_index(_edges(), 3), ValueError, r"edge_index", id="edges-range"),
    P(
        lambda: Pattern.from_edge_index(_edges(), (4, 3)),
        ValueError,
        r"edge_index receivers",
        id="edges-bipartite-range",
    ),
    P(lambda: Pattern.from_edge_index([[0, 1], [1, 0]]), TypeError, r"edge_index", id="edges-list"),
    P(
        lambda: Pattern.from_edge_index(np.array([[0, 1], [1, 0]])),
        TypeError,
        r"edge_index",
        id="edges-numpy",
    ),
    P(
        lambda: Pattern.from_edge_index(torch.tensor([[0, 2**40], [1, 0]])),
        ValueError,
        r"num_nodes",
        id="edges-huge-index-inferred",
    ),
    P(
        lambda: Pattern.from_edge_index(_edges(), (4, 2**42)),
        ValueError,
        r"num_nodes",
        id="edges-huge-num-nodes-given",
    ),
    P(
        lambda: Pattern.from_edge_index(_edges().to("meta"), 4),
        ValueError,
        r"edge_index.*meta",
        id="edges-meta",
    ),
    P(
        lambda: Pattern.from_edge_index(_edges(), 2.7),
        TypeError,
        r"num_nodes",
        id="num-nodes-float",
    ),
    P(lambda: Pattern.from_edge_index(_edges(), "4"), TypeError, r"num_nodes", id="num-nodes-str"),
    P(
        lambda: Pattern.from_edge_index(_edges(), True),
        TypeError,
        r"num_nodes",
        id="num-nodes-bool",
    ),
    P(
        lambda: Pattern.from_edge_index(_edges(), -1),
        ValueError,
        r"num_nodes",
        id="num-nodes-negative",
    ),
    P(
        lambda: Pattern.from_edge_index(_edges(), (4,)),
        TypeError,
        r"num_nodes",
        id="num-nodes-one-tuple",
    ),
    P(
        lambda: Pattern.from_edge_index(_edges(), (4, 2.5)),
        TypeError,
        r"num_nodes",
        id="num-nodes-pair-float",
    ),
    P(
        lambda: Pattern.from_edge_index(_edges(), torch.tensor(4.0)),
        TypeError,
        r"num_nodes",
        id="num-nodes-float-tensor",
    ),
    P(
        lambda: Pattern.from_edge_index(
            torch.sparse_coo_tensor(_edges(), torch.ones(5), (4, 4)), 5
        ),
        ValueError,
        r"num_nodes",
        id="coo-size-mismatch",
    ),
    P(
        lambda: Pattern.from_edge_index(torch.zeros(2, 2, 2).to_sparse()),
        ValueError,
        r"edge_index.*2-D",
        id="coo-3d",
    ),
    P(
        lambda: Pattern.from_edge_index(torch.eye(4).to_sparse_csr(), (4, 5)),
        ValueError,
        r"num_nodes",
        id="csr-size-mismatch",
    ),
    P(
        lambda: Pattern.from_edge_index(torch.eye(4).to_sparse_bsr((2, 2))),
        TypeError,
        r"edge_index.*layout",
        id="bsr-layout",
    ),
    P(
        lambda: _sparse_tensor_pattern((5, 5)),
        ValueError,
        r"num_nodes",
        id="sparse-tensor-size-mismatch",
        marks=pytest.mark.skipif(not HAS_TORCH_SPARSE, reason="needs torch-sparse"),
    ),
    P(lambda: Pattern.cached(_edges(), 2.5), TypeError, r"num_nodes", id="cached-num-nodes"),
    P(
        lambda: Pattern.cached([[0, 1], [1, 0]]),
        TypeError,
        r"edge_index",
        id="cached-edges-list",
    ),
    P(
        lambda: _pattern().to_sorted(torch.zeros(7, 2)),
        ValueError,
        r"edge_values",
        id="to-sorted-rows",
    ),
    P(
        lambda: _pattern().to_caller(torch.zeros(2)),
        ValueError,
        r"sorted_values",
        id="to-caller-rows",
    ),
    P(lambda: _pattern().to_sorted([0.0] * 5), TypeError, r"edge_values", id="to-sorted-list"),
    P(lambda: _pattern().to("nodevice"), ValueError, r"device", id="pattern-to-bad-device"),
    P(lambda: _pattern().to(3.5), TypeError, r"device", id="pattern-to-float"),
    P(
        lambda: Pattern(torch.tensor([0, 1]), torch.tensor([0]), "1", 1),
        TypeError,
        r"num_src",
        id="pattern-init-num-src-str",
    ),
    P(
        lambda: Pattern(torch.tensor([0, 1]), torch.tensor([0]), 1, -1),
        ValueError,
        r"num_dst",
        id="pattern-init-num-dst-negative",
    ),
    P(
        lambda: _pattern().sparse_matrix(torch.ones(5), "coo"),
        ValueError,
        r"layout",
        id="sparse-matrix-layout",
    ),
    # ---------------------------------------------------------------- Pattern.full / windows
    P(lambda: Pattern.full(num_nodes=2.7), TypeError, r"num_nodes", id="full-num-nodes-float"),
    P(lambda: Pattern.full(num_nodes=-1), ValueError, r"num_nodes", id="full-num-nodes-negative"),
    P(
        lambda: Pattern.full(num_nodes=torch.tensor(3, device="meta")),
        ValueError,
        r"num_nodes.*meta",
        id="full-num-nodes-meta",
    ),
    P(lambda: Pattern.full(), ValueError, r"batch.*num_nodes", id="full-nothing"),
    P(lambda: Pattern.full(torch.tensor([0.0, 1.0])), TypeError, r"batch", id="full-batch-float"),
    P(
        lambda: Pattern.full(torch.tensor([1, 0])),
        ValueError,
        r"batch.*sorted",
        id="full-batch-unsorted",
    ),
    P(lambda: Pattern.full(torch.tensor([-1, 0])), ValueError, r"batch", id="full-batch-negative"),
    P(
        lambda: Pattern.full(torch.zeros(2, 2, dtype=torch.long)),
        ValueError,
        r"batch",
        id="full-batch-2d",
    ),
    P(
        lambda: Pattern.full(torch.tensor([0, 0, 1]), num_nodes=4),
        ValueError,
        r"num_nodes",
        id="full-num-nodes-disagrees",
    ),
    P(
        lambda: Pattern.full(num_nodes=3, device="nodevice"),
        (ValueError, TypeError),
        r"device",
        id="full-device-bad",
    ),
    P(lambda: Pattern.windows((4, 0), 2), ValueError, r"grid_shape", id="windows-grid-zero"),
    P(lambda: Pattern.windows(4, 2), TypeError, r"grid_shape", id="windows-grid-int"),
    P(lambda: Pattern.windows((4, 4), 0), ValueError, r"window", id="windows-zero"),
    P(lambda: Pattern.windows((4, 4), 5), ValueError, r"window", id="windows-too-large"),
    P(lambda: Pattern.windows((4, 4), 2.5), TypeError, r"window", id="windows-float"),
    P(lambda: Pattern.windows((4, 4), "2"), TypeError, r"window", id="windows-str"),
    P(lambda: Pattern.windows((4, 4), (2, 2, 2)), ValueError, r"window", id="windows-length"),
    P(
        lambda: Pattern.windows((5, 4), 2),
        ValueError,
        r"grid_shape\[0\].*window",
        id="windows-periodic-multiple",
    ),
    P(lambda: Pattern.windows((4, 4), 2, shift="1"), TypeError, r"shift", id="windows-shift-str"),
    P(
        lambda: Pattern.windows((4, 4), 2, periodic="no"),
        TypeError,
        r"periodic",
        id="windows-periodic-str",
    ),
    # ---------------------------------------------------------------- radius / knn
    P(
        lambda: Pattern.radius(torch.zeros(4, 2, dtype=torch.long), 0.5),
        TypeError,
        r"pos",
        id="radius-pos-int",
    ),
    P(lambda: Pattern.radius(torch.zeros(4), 0.5), ValueError, r"pos", id="radius-pos-1d"),
    P(lambda: Pattern.radius(_with(_pos(), 3, NAN), 0.5), ValueError, r"pos", id="radius-pos-nan"),
    P(lambda: Pattern.radius([[0.0, 1.0]], 0.5), TypeError, r"pos", id="radius-pos-list"),
    P(lambda: Pattern.radius(_pos(), 0.0), ValueError, r"\br\b", id="radius-r-zero"),
    P(lambda: Pattern.radius(_pos(), "0.5"), TypeError, r"\br\b", id="radius-r-str"),
    P(lambda: Pattern.radius(_pos(), NAN), ValueError, r"\br\b", id="radius-r-nan"),
    P(lambda: Pattern.radius(_pos(), INF), ValueError, r"\br\b", id="radius-r-inf"),
    P(lambda: Pattern.radius(_pos(), 0.6, box=1.0), ValueError, r"\br=", id="radius-r-half-box"),
    P(lambda: Pattern.radius(_pos(), 0.2, box=-1.0), ValueError, r"box", id="radius-box-negative"),
    P(
        lambda: Pattern.radius(_pos(), 0.2, box=(1.0, 1.0, 1.0)),
        ValueError,
        r"box",
        id="radius-box-length",
    ),
    P(lambda: Pattern.radius(_pos(), 0.2, box="big"), TypeError, r"box", id="radius-box-str"),
    P(lambda: Pattern.radius(_pos(), 0.2, box=True), TypeError, r"box", id="radius-box-bool"),
    P(
        lambda: Pattern.radius(_pos(), 0.2, box=torch.ones(2, dtype=torch.complex64)),
        TypeError,
        r"box",
        id="radius-box-complex",
    ),
    P(
        lambda: Pattern.radius(_pos(4), 0.2, batch=torch.tensor([1, 0, 0, 0])),
        ValueError,
        r"batch.*sorted",
        id="radius-batch-unsorted",
    ),
    P(
        lambda: Pattern.radius(_pos(4), 0.2, batch=torch.zeros(4)),
        TypeError,
        r"batch",
        id="radius-batch-float",
    ),
    P(
        lambda: Pattern.radius(_pos(4), 0.2, batch=torch.zeros(3, dtype=torch.long)),
        ValueError,
        r"batch",
        id="radius-batch-length",
    ),
    P(
        lambda: Pattern.radius(_pos(), 0.2, max_num_neighbors=0),
        ValueError,
        r"max_num_neighbors",
        id="radius-max-neighbors-zero",
    ),
    P(lambda: Pattern.radius(_pos(), 0.2, loop="yes"), TypeError, r"loop", id="radius-loop-str"),
    P(
        lambda: Pattern.radius(_pos(), 0.2, pos_dst=torch.rand(3, 3)),
        ValueError,
        r"pos_dst",
        id="radius-pos-dst-dim",
    ),
    P(
        lambda: Pattern.radius(_pos(), 0.2, pos_dst=torch.rand(3, 2).double()),
        TypeError,
        r"pos_dst",
        id="radius-pos-dst-dtype",
    ),
    P(
        lambda: Pattern.radius(_pos(), 0.2, batch_dst=torch.zeros(3, dtype=torch.long)),
        ValueError,
        r"batch_dst",
        id="radius-batch-dst-alone",
    ),
    P(lambda: Pattern.knn(_pos(), 0), ValueError, r"\bk\b", id="knn-k-zero"),
    P(lambda: Pattern.knn(_pos(), 2.5), TypeError, r"\bk\b", id="knn-k-float"),
    P(lambda: Pattern.knn(_pos(), True), TypeError, r"\bk\b", id="knn-k-bool"),
    P(lambda: Pattern.knn(_with(_pos(), 0, INF), 2), ValueError, r"pos", id="knn-pos-inf"),
    P(
        lambda: Pattern.knn(_pos(), 2, pos_dst=_with(_pos(3), 1, NAN)),
        ValueError,
        r"pos_dst",
        id="knn-pos-dst-nan",
    ),
    P(lambda: Pattern.knn(_pos(), 2, box=0.0), ValueError, r"box", id="knn-box-zero"),
    P(lambda: Pattern.knn(_pos(), 2, loop=1), TypeError, r"loop", id="knn-loop-int"),
    # ---------------------------------------------------------------- bigbird / expander
    P(
        lambda: Pattern.bigbird(num_nodes=4, num_random=10**12),
        ValueError,
        r"num_random",
        id="bigbird-random-huge",
    ),
    P(
        lambda: Pattern.bigbird(num_nodes=8, window=-1),
        ValueError,
        r"window",
        id="bigbird-window-negative",
    ),
    P(
        lambda: Pattern.bigbird(num_nodes=8, num_random=1.5),
        TypeError,
        r"num_random",
        id="bigbird-random-float",
    ),
    P(
        lambda: Pattern.bigbird(num_nodes=8, num_global="1"),
        TypeError,
        r"num_global",
        id="bigbird-global-str",
    ),
    P(
        lambda: Pattern.bigbird(num_nodes=8, generator=0),
        TypeError,
        r"generator",
        id="bigbird-generator",
    ),
    P(lambda: Pattern.bigbird(torch.tensor([1, 0])), ValueError, r"batch", id="bigbird-unsorted"),
    P(
        lambda: Pattern.expander(num_nodes=8, degree=-1),
        ValueError,
        r"degree",
        id="expander-degree-negative",
    ),
    P(
        lambda: Pattern.expander(num_nodes=8, num_virtual=1.5),
        TypeError,
        r"num_virtual",
        id="expander-virtual-float",
    ),
    P(lambda: Pattern.expander(), ValueError, r"batch.*num_nodes", id="expander-nothing"),
    P(
        lambda: Pattern.expander(num_nodes=8, generator="seed"),
        TypeError,
        r"generator",
        id="expander-generator",
    ),
    P(
        lambda: Pattern.exphormer(_edges().float()),
        TypeError,
        r"edge_index",
        id="exphormer-edges-float",
    ),
    P(
        lambda: Pattern.exphormer(_edges().to(torch.complex64)),
        TypeError,
        r"edge_index",
        id="exphormer-edges-complex",
    ),
    P(
        lambda: Pattern.exphormer(_edges(), batch=torch.tensor([0, 0, 1, 1])),
        ValueError,
        r"edge_index",
        id="exphormer-cross-graph",
    ),
    P(
        lambda: Pattern.exphormer(_edges(), num_nodes=3),
        ValueError,
        r"edge_index",
        id="exphormer-edges-range",
    ),
    P(lambda: Pattern.exphormer(_edges()[0]), ValueError, r"edge_index", id="exphormer-edges-1d"),
    # ---------------------------------------------------------------- sparse_attention
    P(lambda: _attn(pattern=_edges()), TypeError, r"pattern", id="attn-pattern-tensor"),
    P(lambda: _attn(query=_qkv()[0].long()), TypeError, r"query", id="attn-query-int"),
    P(
        lambda: _attn(query=_qkv()[0].to(torch.complex64)),
        TypeError,
        r"query",
        id="attn-query-complex",
    ),
    P(lambda: _attn(query=_qkv()[0][:, 0]), ValueError, r"query", id="attn-query-2d"),
    P(lambda: _attn(query=_qkv(n=3)[0]), ValueError, r"query", id="attn-query-rows"),
    P(lambda: _attn(key=_qkv(heads=3)[1]), ValueError, r"key", id="attn-key-heads"),
    P(lambda: _attn(key=_qkv(channels=4)[1]), ValueError, r"key", id="attn-key-channels"),
    P(lambda: _attn(value=_qkv(n=5)[2]), ValueError, r"value", id="attn-value-rows"),
    P(lambda: _attn(value=[[1.0]]), TypeError, r"value", id="attn-value-list"),
    P(
        lambda: _attn(key=_qkv(dtype=torch.float64)[1]),
        TypeError,
        r"key.*dtype|dtype.*key",
        id="attn-dtype-mix",
    ),
    P(lambda: _attn(key=_with(_qkv()[1], 5, INF)), ValueError, r"key contains", id="attn-key-inf"),
    P(
        lambda: _attn(value=_with(_qkv()[2], 0, -INF)),
        ValueError,
        r"value contains",
        id="attn-value-minus-inf",
    ),
    P(lambda: _attn(score="cosine"), ValueError, r"score", id="attn-score-unknown"),
    P(lambda: _attn(score="gatv2"), ValueError, r"att", id="attn-gatv2-no-att"),
    P(lambda: _attn(score="gatv2", att=torch.randn(3, 3)), ValueError, r"att", id="attn-att-shape"),
    P(lambda: _attn(scale="2"), TypeError, r"scale", id="attn-scale-str"),
    P(lambda: _attn(scale=NAN), ValueError, r"scale", id="attn-scale-nan"),
    P(lambda: _attn(scale=INF), ValueError, r"scale", id="attn-scale-inf"),
    P(lambda: _attn(scale=True), TypeError, r"scale", id="attn-scale-bool"),
    P(lambda: _attn(dropout=1.5), ValueError, r"dropout", id="attn-dropout-large"),
    P(lambda: _attn(dropout="0.1"), TypeError, r"dropout", id="attn-dropout-str"),
    P(lambda: _attn(dropout=NAN), ValueError, r"dropout", id="attn-dropout-nan"),
    P(lambda: _attn(mode="fast"), ValueError, r"mode", id="attn-mode-unknown"),
    P(lambda: _attn(mode=3), TypeError, r"mode", id="attn-mode-int"),
    P(lambda: _attn(mode="dense"), ValueError, r"mode='dense'", id="attn-dense-not-blocks"),
    P(lambda: _attn(chunk_size=0), ValueError, r"chunk_size", id="attn-chunk-zero"),
    P(lambda: _attn(chunk_size=2.5), TypeError, r"chunk_size", id="attn-chunk-float"),
    P(lambda: _attn(bias=torch.zeros(4, 2)), ValueError, r"bias", id="attn-bias-rows"),
    P(
        lambda: _attn(bias=torch.zeros(5, 2, dtype=torch.long)),
        TypeError,
        r"bias",
        id="attn-bias-int",
    ),
    P(
        lambda: _attn(bias=_with(torch.zeros(5, 2), 3, NAN)),
        ValueError,
        r"bias contains",
        id="attn-bias-nan",
    ),
    P(
        lambda: _attn(bias=_with(torch.zeros(5, 2), 3, INF)),
        ValueError,
        r"bias contains",
        id="attn-bias-plus-inf",
    ),
    P(
        lambda: _attn(key_edge=_with(torch.zeros(5, 2, 3), 4, NAN)),
        ValueError,
        r"key_edge contains",
        id="attn-key-edge-nan",
    ),
    P(
        lambda: _attn(value_edge=torch.zeros(5, 2, 4)),
        ValueError,
        r"value_edge",
        id="attn-value-edge-shape",
    ),
    P(lambda: _attn(negative_slope=None), TypeError, r"negative_slope", id="attn-slope-none"),
    P(lambda: _attn(negative_slope="0.2"), TypeError, r"negative_slope", id="attn-slope-str"),
    P(
        lambda: _attn(return_attention="yes"),
        TypeError,
        r"return_attention",
        id="attn-return-attention-str",
    ),
    P(
        lambda: _attn(
            **dict(zip(("query", "key", "value"), _qkv())),
            pattern=Pattern.full(num_nodes=4, device="meta"),
        ),
        ValueError,
        r"device|meta",
        id="attn-pattern-meta",
    ),
    P(
        lambda: _attn(**dict(zip(("query", "key", "value"), _qkv(channels=0)))),
        ValueError,
        r"query.*channel",
        id="attn-zero-channels",
    ),
    # ---------------------------------------------------------------- attend
    P(lambda: _attend(reduce="avg"), ValueError, r"reduce", id="attend-reduce-unknown"),
    P(
        lambda: _attend(query=None, key=None, score=None, reduce="weights"),
        ValueError,
        r"weights",
        id="attend-weights-missing",
    ),
    P(
        lambda: _attend(
            query=None,
            key=None,
            score=None,
            reduce="weights",
            weights=_with(torch.ones(5, 2), 2, NAN),
        ),
        ValueError,
        r"weights contains",
        id="attend-weights-nan",
    ),
    P(
        lambda: _attend(query=None, key=None, score=None, reduce="sum", message_fn="f", value=None),
        TypeError,
        r"message_fn",
        id="attend-message-fn-str",
    ),
    P(
        lambda: _attend(
            query=None, key=None, score=None, reduce="sum", message_fn=lambda e: e.x_src[0]
        ),
        ValueError,
        r"value.*message_fn",
        id="attend-value-and-message-fn",
    ),
    P(
        lambda: _attend(
            query=None,
            key=None,
            score=None,
            reduce="sum",
            value=None,
            message_fn=lambda e: e.x_src[0],
            src_inputs=(torch.ones(3, 2),),
        ),
        ValueError,
        r"src_inputs",
        id="attend-src-inputs-rows",
    ),
    P(
        lambda: _attend(
            query=None,
            key=None,
            score=None,
            reduce="sum",
            value=None,
            message_fn=lambda e: e.x_src[0],
            src_inputs=torch.ones(4, 2),
        ),
        TypeError,
        r"src_inputs",
        id="attend-src-inputs-tensor",
    ),
    P(
        lambda: _attend(query=None, key=None, score="static"),
        ValueError,
        r"src_score",
        id="attend-static-no-src-score",
    ),
    P(
        lambda: _attend(
            query=None, key=None, score="static", src_score=_with(torch.zeros(4, 2), 1, NAN)
        ),
        ValueError,
        r"src_score contains",
        id="attend-src-score-nan",
    ),
    P(
        lambda: _attend(
            query=None,
            key=None,
            score="static",
            src_score=torch.zeros(4, 2),
            dst_score=torch.zeros(3, 2),
        ),
        ValueError,
        r"dst_score",
        id="attend-dst-score-shape",
    ),
    P(
        lambda: _attend(query=None, key=None, score=None, reduce="sum", bias=torch.zeros(5, 2)),
        ValueError,
        r"bias",
        id="attend-bias-with-sum",
    ),
    P(
        lambda: _attend(query=None, key=None, score=None, reduce="mean", dropout=0.5),
        ValueError,
        r"dropout",
        id="attend-dropout-with-mean",
    ),
    P(lambda: _attend(score_mod=3), TypeError, r"score_mod", id="attend-score-mod-int"),
    P(
        lambda: attend("pattern", torch.ones(4, 1, 1), score=None, reduce="sum"),
        TypeError,
        r"pattern",
        id="attend-pattern-str",
    ),
    # ---------------------------------------------------------------- segment_softmax
    P(
        lambda: segment_softmax(torch.ones(3, dtype=torch.long), torch.tensor([0, 0, 1])),
        TypeError,
        r"scores",
        id="softmax-scores-int",
    ),
    P(
        lambda: segment_softmax(torch.tensor(1.0), torch.tensor([0])),
        ValueError,
        r"scores",
        id="softmax-scores-0d",
    ),
    P(
        lambda: segment_softmax(torch.tensor([1.0, INF]), torch.tensor([0, 0])),
        ValueError,
        r"scores",
        id="softmax-scores-inf",
    ),
    P(
        lambda: segment_softmax(torch.ones(3), torch.tensor([0.0, 0.0, 1.0])),
        TypeError,
        r"pattern_or_index",
        id="softmax-index-float",
    ),
    P(
        lambda: segment_softmax(torch.ones(3), [0, 0, 1]),
        TypeError,
        r"pattern_or_index",
        id="softmax-index-list",
    ),
    P(
        lambda: segment_softmax(torch.ones(3), torch.tensor([0, 1])),
        ValueError,
        r"index",
        id="softmax-index-length",
    ),
    P(
        lambda: segment_softmax(torch.ones(3), torch.tensor([0, -1, 1])),
        ValueError,
        r"index",
        id="softmax-index-negative",
    ),
    P(
        lambda: segment_softmax(torch.ones(3), torch.tensor([0, 0, 1]), 2.5),
        TypeError,
        r"num_segments",
        id="softmax-num-segments-float",
    ),
    P(
        lambda: segment_softmax(torch.ones(2), torch.tensor([0, 2**40])),
        ValueError,
        r"num_segments",
        id="softmax-huge-index-inferred",
    ),
    P(
        lambda: segment_softmax(torch.ones(4, 2), _pattern()),
        ValueError,
        r"scores",
        id="softmax-pattern-edges",
    ),
    P(
        lambda: segment_softmax(torch.ones(3), torch.zeros(3, dtype=torch.long, device="meta")),
        ValueError,
        r"meta",
        id="softmax-index-meta",
    ),
    # ---------------------------------------------------------------- cache, minimum image
    P(lambda: PatternCache(0), ValueError, r"max_size", id="cache-size-zero"),
    P(lambda: PatternCache("8"), TypeError, r"max_size", id="cache-size-str"),
    P(
        lambda: PatternCache().get(torch.ones(1), ["unhashable"], lambda: 1),
        TypeError,
        r"key",
        id="cache-key-unhashable",
    ),
    P(
        lambda: PatternCache().get(None, ("k",), lambda: 1),
        TypeError,
        r"sources",
        id="cache-sources-none",
    ),
    P(
        lambda: PatternCache().get(3, ("k",), lambda: 1),
        TypeError,
        r"sources",
        id="cache-sources-int",
    ),
    P(lambda: PatternCache().get((), ("k",), 3), TypeError, r"build", id="cache-build-int"),
    P(
        lambda: minimum_image(torch.ones(3, 2, dtype=torch.long), 1.0),
        TypeError,
        r"delta",
        id="min-image-delta-int",
    ),
    P(lambda: minimum_image(torch.ones(3, 2), "1"), TypeError, r"box", id="min-image-box-str"),
    P(lambda: minimum_image(torch.ones(3, 2), True), TypeError, r"box", id="min-image-box-bool"),
    P(lambda: minimum_image(torch.ones(3, 2), 0.0), ValueError, r"box", id="min-image-box-zero"),
    P(
        lambda: minimum_image(torch.ones(3, 2), torch.tensor([1.0, NAN])),
        ValueError,
        r"box",
        id="min-image-box-nan",
    ),
    # ---------------------------------------------------------------- LargeGTLoader
    P(lambda: LargeGTLoader({"x": torch.ones(2, 2)}), TypeError, r"data", id="loader-data-dict"),
    P(
        lambda: LargeGTLoader(_graph_with(x=torch.ones(6, 3, dtype=torch.long))),
        TypeError,
        r"data\.x",
        id="loader-x-int",
    ),
    P(
        lambda: LargeGTLoader(_graph_with(x=torch.ones(6))),
        ValueError,
        r"data\.x",
        id="loader-x-1d",
    ),
    P(
        lambda: LargeGTLoader(_graph_with(x=_with(torch.ones(6, 3), 4, INF))),
        ValueError,
        r"data\.x contains",
        id="loader-x-inf",
    ),
    P(
        lambda: LargeGTLoader(_graph_with(edge_index=_edges().float())),
        TypeError,
        r"data\.edge_index",
        id="loader-edges-float",
    ),
    P(
        lambda: LargeGTLoader(_graph_with(edge_index=torch.tensor([[0, 9], [1, 0]]))),
        ValueError,
        r"data\.edge_index",
        id="loader-edges-range",
    ),
    P(
        lambda: LargeGTLoader(_graph_with(edge_index=torch.zeros(3, 2, dtype=torch.long))),
        ValueError,
        r"data\.edge_index",
        id="loader-edges-shape",
    ),
    P(
        lambda: LargeGTLoader(_graph(), num_tokens=0),
        ValueError,
        r"num_tokens",
        id="loader-num-tokens-zero",
    ),
    P(
        lambda: LargeGTLoader(_graph(), max_two_hop_paths=0),
        ValueError,
        r"max_two_hop_paths",
        id="loader-max-paths-zero",
    ),
    P(
        lambda: LargeGTLoader(_graph(), chunk_size=0),
        ValueError,
        r"chunk_size",
        id="loader-chunk-zero",
    ),
    P(
        lambda: LargeGTLoader(_graph(), input_nodes=torch.tensor([0.0, 1.0])),
        TypeError,
        r"input_nodes",
        id="loader-input-nodes-float",
    ),
    P(
        lambda: LargeGTLoader(_graph(), input_nodes=torch.tensor([0, 6])),
        ValueError,
        r"input_nodes",
        id="loader-input-nodes-range",
    ),
    P(
        lambda: LargeGTLoader(_graph(), input_nodes=torch.ones(5, dtype=torch.bool)),
        ValueError,
        r"input_nodes",
        id="loader-input-mask-shape",
    ),
    P(
        lambda: LargeGTLoader(_graph(), input_nodes=torch.zeros(2, 2, dtype=torch.long)),
        ValueError,
        r"input_nodes",
        id="loader-input-nodes-2d",
    ),
    P(
        lambda: LargeGTLoader(_graph(), input_nodes=[0, 1]),
        TypeError,
        r"input_nodes",
        id="loader-input-nodes-list",
    ),
    P(
        lambda: LargeGTLoader(_graph(), collate_fn=list),
        TypeError,
        r"collate_fn",
        id="loader-collate-fn",
    ),
    P(
        lambda: LargeGTLoader(_graph(), distributed="yes"),
        TypeError,
        r"distributed",
        id="loader-distributed-str",
    ),
    P(
        lambda: LargeGTLoader(_graph(), distributed=True, seed="0"),
        TypeError,
        r"seed",
        id="loader-seed-str",
    ),
    P(
        lambda: LargeGTLoader(_graph_with(y=torch.zeros(5))),
        ValueError,
        r"data\.y",
        id="loader-y-rows",
    ),
    P(
        lambda: LargeGTLoader(
            Data(rowptr=torch.tensor([0, 1, 5]), col=torch.tensor([1]), hop_x=torch.zeros(2, 3, 2))
        ),
        ValueError,
        r"rowptr|col",
        id="loader-preprocessed-bad-csr",
    ),
    P(
        lambda: LargeGTLoader(
            Data(
                rowptr=torch.tensor([0, 1, 2]),
                col=torch.tensor([1, 0]),
                hop_x=torch.full((2, 3, 2), NAN),
            )
        ),
        ValueError,
        r"hop_x",
        id="loader-preprocessed-nan",
    ),
    P(
        lambda: LargeGTLoader(_graph(), distributed=True, shuffle="yes"),
        TypeError,
        r"shuffle",
        id="loader-distributed-shuffle-str",
    ),
    P(
        lambda: LargeGTLoader(_graph_with(pos_enc=torch.full((6, 2), NAN))),
        ValueError,
        r"data\.pos_enc contains",
        id="loader-pos-enc-nan",
    ),
    P(
        lambda: LargeGTLoader(_graph_with(edge_index=_edges().to(torch.complex64))),
        TypeError,
        r"data\.edge_index",
        id="loader-edges-complex",
    ),
    P(
        lambda: __import__("gtlib.distributed").distributed.ShardedBatchSampler(
            10, 2, shuffle="yes"
        ),
        TypeError,
        r"shuffle",
        id="sharded-sampler-shuffle-str",
    ),
    # ---------------------------------------------------------------- LargeGT
    P(lambda: _large_gt(in_channels=0), ValueError, r"in_channels", id="largegt-in-zero"),
    P(
        lambda: _large_gt(hidden_channels=-1),
        ValueError,
        r"hidden_channels",
        id="largegt-hidden-negative",
    ),
    P(lambda: _large_gt(hidden_channels=5), ValueError, r"heads", id="largegt-heads-divide"),
    P(lambda: _large_gt(mode="both"), ValueError, r"mode", id="largegt-mode"),
    P(lambda: _large_gt(num_nodes=None), ValueError, r"num_nodes", id="largegt-num-nodes-none"),
    P(lambda: _large_gt(num_nodes=2.5), TypeError, r"num_nodes", id="largegt-num-nodes-float"),
    P(lambda: _large_gt(dropout=1.0), ValueError, r"dropout", id="largegt-dropout-one"),
    P(lambda: _large_gt(dropout="0.1"), TypeError, r"dropout", id="largegt-dropout-str"),
    P(lambda: _large_gt(decay=1.0), ValueError, r"decay", id="largegt-decay-one"),
    P(lambda: _large_gt(heads="2"), TypeError, r"heads", id="largegt-heads-str"),
    P(lambda: _large_gt()({"x": 1}), TypeError, r"batch", id="largegt-batch-dict"),
    P(
        lambda: _large_gt()(_large_gt_batch(tokens=torch.randn(2, 5, 3))),
        ValueError,
        r"batch\.tokens",
        id="largegt-tokens-shape",
    ),
    P(
        lambda: _large_gt()(_large_gt_batch(tokens=_with(torch.randn(2, 6, 3), 7, NAN))),
        ValueError,
        r"batch\.tokens contains",
        id="largegt-tokens-nan",
    ),
    P(
        lambda: _large_gt()(_large_gt_batch(tokens=torch.ones(2, 6, 3, dtype=torch.long))),
        TypeError,
        r"batch\.tokens",
        id="largegt-tokens-int",
    ),
    P(
        lambda: _large_gt()(_large_gt_batch(x=torch.randn(2, 3).double())),
        TypeError,
        r"batch\.x",
        id="largegt-x-float64",
    ),
    P(
        lambda: _large_gt()(_large_gt_batch(x=_with(torch.randn(2, 3), 1, INF))),
        ValueError,
        r"batch\.x contains",
        id="largegt-x-inf",
    ),
    P(
        lambda: _large_gt()(_large_gt_batch(n_id=torch.tensor([0, 6]))),
        ValueError,
        r"batch\.n_id",
        id="largegt-n-id-range",
    ),
    P(
        lambda: _large_gt()(_large_gt_batch(n_id=torch.tensor([0.0, 1.0]))),
        TypeError,
        r"batch\.n_id",
        id="largegt-n-id-float",
    ),
    P(
        lambda: _large_gt(pos_channels=2)(_large_gt_batch()),
        ValueError,
        r"batch\.pos_enc",
        id="largegt-pos-enc-missing",
    ),
    # ---------------------------------------------------------------- MLPScore
    P(lambda: MLPScore(0), ValueError, r"num_coordinates", id="mlpscore-num-coordinates-zero"),
    P(
        lambda: MLPScore(2, hidden_channels=2.0),
        TypeError,
        r"hidden_channels",
        id="mlpscore-hidden-float",
    ),
    P(lambda: MLPScore(2, act="relu6"), ValueError, r"act", id="mlpscore-act-unknown"),
    P(lambda: MLPScore(2, act=3), TypeError, r"act", id="mlpscore-act-int"),
    P(
        lambda: MLPScore(2, drift=lambda x: x),
        ValueError,
        r"drift.*diffusion",
        id="mlpscore-drift-alone",
    ),
    P(lambda: MLPScore(2, drift="f", diffusion=1.0), TypeError, r"drift", id="mlpscore-drift-str"),
    P(
        lambda: MLPScore(2, drift=lambda x: x, diffusion=-1.0),
        ValueError,
        r"diffusion",
        id="mlpscore-diffusion-negative",
    ),
    P(
        lambda: MLPScore(2, drift=lambda x: x, diffusion=[1.0, 1.0, 1.0]),
        ValueError,
        r"diffusion",
        id="mlpscore-diffusion-shape",
    ),
    P(
        lambda: MLPScore(2, drift=lambda x: x, diffusion="one"),
        TypeError,
        r"diffusion",
        id="mlpscore-diffusion-str",
    ),
    P(lambda: MLPScore(2, linear_skip="no"), TypeError, r"linear_skip", id="mlpscore-skip-str"),
    P(lambda: MLPScore(2)(torch.randn(3, 3)), ValueError, r"\bx\b", id="mlpscore-x-shape"),
    P(lambda: MLPScore(2)([[1.0, 2.0]]), TypeError, r"\bx\b", id="mlpscore-x-list"),
    P(
        lambda: MLPScore(2)(_with(torch.randn(3, 2), 1, NAN)),
        ValueError,
        r"x contains",
        id="mlpscore-x-nan",
    ),
    P(
        lambda: MLPScore(2)(torch.randn(3, 2).double()),
        TypeError,
        r"\bx\b.*dtype",
        id="mlpscore-x-float64",
    ),
    P(
        lambda: MLPScore(2, drift=lambda x: x[:, :1], diffusion=1.0)(torch.randn(3, 2)),
        ValueError,
        r"drift",
        id="mlpscore-drift-wrong-shape",
    ),
    # ---------------------------------------------------------------- ParticleTransformer
    P(
        lambda: _particle_model(in_channels=-1),
        ValueError,
        r"in_channels",
        id="particle-in-negative",
    ),
    P(lambda: _particle_model(hidden_channels=9), ValueError, r"heads", id="particle-heads-divide"),
    P(lambda: _particle_model(dropout=1.0), ValueError, r"dropout", id="particle-dropout-one"),
    P(
        lambda: _particle_model(include_self=1),
        TypeError,
        r"include_self",
        id="particle-include-self-int",
    ),
    P(lambda: _particle_model(chunk_size=0), ValueError, r"chunk_size", id="particle-chunk-zero"),
    P(
        lambda: _particle_model(num_neighbors=2.0),
        TypeError,
        r"num_neighbors",
        id="particle-neighbors-float",
    ),
    P(
        lambda: _particle_call(pos=torch.zeros(10, 2, dtype=torch.long)),
        TypeError,
        r"pos",
        id="particle-pos-int",
    ),
    P(
        lambda: _particle_call(pos=_with(_pos(10), 3, NAN)),
        ValueError,
        r"pos",
        id="particle-pos-nan",
    ),
    P(
        lambda: _particle_call(pos=_pos(3)),
        ValueError,
        r"num_neighbors",
        id="particle-too-few-particles",
    ),
    P(lambda: _particle_call(h=torch.randn(10, 2)), ValueError, r"\bh\b", id="particle-h-shape"),
    P(
        lambda: _particle_call(h=torch.randn(10, 1).double()),
        TypeError,
        r"\bh\b",
        id="particle-h-dtype",
    ),
    P(
        lambda: _particle_call(h=_with(torch.randn(10, 1), 2, INF)),
        ValueError,
        r"h contains",
        id="particle-h-inf",
    ),
    P(
        lambda: _particle_call(pos=_pos(10).double(), h=torch.randn(10, 1).double()),
        TypeError,
        r"pos.*dtype",
        id="particle-pos-float64",
    ),
    P(lambda: _particle_call(box=-1.0), ValueError, r"box", id="particle-box-negative"),
    P(lambda: _particle_call(box="big"), TypeError, r"box", id="particle-box-str"),
    P(
        lambda: _particle_model(num_neighbors=3)(
            torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [0.5, 0.5]]), torch.zeros(4, 1), 1.0
        ),
        ValueError,
        r"box",
        id="particle-box-too-small",
    ),
    P(
        lambda: _particle_model(include_self=False)(
            _pos(10), torch.randn(10, 1), None, torch.randn(10, 1)
        ),
        ValueError,
        r"h_self",
        id="particle-h-self-without-own-token",
    ),
    # ---------------------------------------------------------------- SpectralConv
    P(lambda: SpectralConv(2, 0, 4), ValueError, r"out_channels", id="spectral-out-zero"),
    P(lambda: SpectralConv(2, 2, "4"), TypeError, r"n_modes", id="spectral-modes-str"),
    P(lambda: SpectralConv(2, 2, 2.5), TypeError, r"n_modes", id="spectral-modes-float"),
    P(lambda: SpectralConv(2, 2, (4,) * 4), ValueError, r"n_modes", id="spectral-modes-4d"),
    P(
        lambda: SpectralConv(2, 2, 4, factorization="cp"),
        ValueError,
        r"factorization",
        id="spectral-factorization-cp",
    ),
    P(
        lambda: SpectralConv(2, 2, 4, factorization=3),
        TypeError,
        r"factorization",
        id="spectral-factorization-int",
    ),
    P(
        lambda: SpectralConv(2, 2, 4, fft_norm="none"),
        ValueError,
        r"fft_norm",
        id="spectral-fft-norm",
    ),
    P(
        lambda: SpectralConv(2, 2, 4, factorization="tucker", rank=1.5),
        ValueError,
        r"rank",
        id="spectral-rank-fraction",
    ),
    P(
        lambda: SpectralConv(2, 2, 4, factorization="tucker", rank=(1, 2)),
        ValueError,
        r"rank",
        id="spectral-rank-length",
    ),
    P(
        lambda: SpectralConv(2, 2, 4, factorization="tucker", rank=("a", 1, 1)),
        TypeError,
        r"rank",
        id="spectral-rank-str",
    ),
    P(lambda: SpectralConv(2, 2, 4, bias="yes"), TypeError, r"bias", id="spectral-bias-str"),
    P(
        lambda: SpectralConv(2, 2, 4)(torch.ones(1, 2, 8, dtype=torch.long)),
        TypeError,
        r"\bx\b",
        id="spectral-x-int",
    ),
    P(
        lambda: SpectralConv(2, 2, 4)(torch.ones(1, 3, 8)),
        ValueError,
        r"\bx\b",
        id="spectral-x-channels",
    ),
    P(
        lambda: SpectralConv(2, 2, 4)(torch.ones(1, 2, 3)),
        ValueError,
        r"\bx\b",
        id="spectral-x-too-small",
    ),
    P(lambda: SpectralConv(2, 2, 4)(torch.ones(2, 8)), ValueError, r"\bx\b", id="spectral-x-dims"),
    P(
        lambda: SpectralConv(2, 2, 4)(_with(torch.ones(1, 2, 8), 3, NAN)),
        ValueError,
        r"x contains",
        id="spectral-x-nan",
    ),
    P(
        lambda: SpectralConv(2, 2, 4).load_neuralop_state_dict(None),
        TypeError,
        r"state_dict",
        id="spectral-load-state-dict-none",
    ),
    P(
        lambda: SpectralConv(2, 2, 4).load_neuralop_state_dict({"weight.tensor": torch.ones(2)}),
        ValueError,
        r"weight",
        id="spectral-load-state-dict-real-weight",
    ),
    P(
        lambda: FNO(1, 1, 4, hidden_channels="8"),
        TypeError,
        r"hidden_channels",
        id="fno-hidden-str",
    ),
    P(lambda: FNO(1, 1, 4, n_layers=0), ValueError, r"n_layers", id="fno-layers-zero"),
    # ---------------------------------------------------------------- MgNO
    P(lambda: _mgno(in_channels=0), ValueError, r"in_channels", id="mgno-in-zero"),
    P(lambda: _mgno(hidden_channels="8"), TypeError, r"hidden_channels", id="mgno-hidden-str"),
    P(lambda: _mgno(dim=4), ValueError, r"dim", id="mgno-dim-4"),
    P(lambda: _mgno(padding_mode="wrap"), ValueError, r"padding_mode", id="mgno-padding"),
    P(lambda: _mgno(n_smoothing=(1, 1, 1)), ValueError, r"n_smoothing", id="mgno-smoothing-len"),
    P(lambda: _mgno(n_smoothing=-1), ValueError, r"n_smoothing", id="mgno-smoothing-negative"),
    P(lambda: _mgno(n_smoothing=1.5), TypeError, r"n_smoothing", id="mgno-smoothing-float"),
    P(
        lambda: _mgno(n_post_smoothing=(1, 1)),
        ValueError,
        r"n_post_smoothing",
        id="mgno-post-coarsest",
    ),
    P(lambda: _mgno(act="nope"), ValueError, r"act", id="mgno-act-unknown"),
    P(lambda: _mgno(act=3), TypeError, r"act", id="mgno-act-int"),
    P(
        lambda: _mgno()(torch.ones(1, 1, 8, 8, dtype=torch.long)),
        TypeError,
        r"\bx\b",
        id="mgno-x-int",
    ),
    P(lambda: _mgno()(torch.ones(1, 1, 8)), ValueError, r"\bx\b", id="mgno-x-dims"),
    P(lambda: _mgno()(torch.ones(1, 1, 2, 2)), ValueError, r"\bx\b", id="mgno-x-too-small"),
    P(
        lambda: _mgno()(_with(torch.ones(1, 1, 8, 8), 5, NAN)),
        ValueError,
        r"x contains",
        id="mgno-x-nan",
    ),
    P(
        lambda: _mgno()(torch.ones(1, 1, 8, 8).double()),
        TypeError,
        r"\bx\b.*dtype",
        id="mgno-x-float64",
    ),
    # ---------------------------------------------------------------- ScOT
    P(lambda: _scot(in_channels=0), ValueError, r"in_channels", id="scot-in-zero"),
    P(lambda: _scot(image_size=10), ValueError, r"image_size", id="scot-image-size"),
    P(lambda: _scot(image_size="8"), TypeError, r"image_size", id="scot-image-size-str"),
    P(lambda: _scot(heads=(3, 2)), ValueError, r"heads", id="scot-heads-divide"),
    P(lambda: _scot(heads=(1,)), ValueError, r"heads", id="scot-heads-length"),
    P(lambda: _scot(depths=(0, 1)), ValueError, r"depths", id="scot-depths-zero"),
    P(lambda: _scot(depths=2), TypeError, r"depths", id="scot-depths-int"),
    P(lambda: _scot(mlp_ratio=0.0), ValueError, r"mlp_ratio", id="scot-mlp-ratio-zero"),
    P(lambda: _scot(mlp_ratio="4"), TypeError, r"mlp_ratio", id="scot-mlp-ratio-str"),
    P(lambda: _scot(window_size=0), ValueError, r"window_size", id="scot-window-zero"),
    P(lambda: _scot_call(lead_time=None), ValueError, r"lead_time", id="scot-lead-time-missing"),
    P(
        lambda: _scot_call(lead_time=torch.ones(3)),
        ValueError,
        r"lead_time",
        id="scot-lead-time-shape",
    ),
    P(lambda: _scot_call(lead_time=NAN), ValueError, r"lead_time", id="scot-lead-time-nan"),
    P(lambda: _scot_call(lead_time="1"), TypeError, r"lead_time", id="scot-lead-time-str"),
    P(
        lambda: _scot_call(x=torch.randn(2, 1, 12, 12)),
        ValueError,
        r"\bx\b",
        id="scot-x-resolution",
    ),
    P(
        lambda: _scot_call(x=_with(torch.randn(2, 1, 8, 8), 9, NAN)),
        ValueError,
        r"x contains",
        id="scot-x-nan",
    ),
    P(
        lambda: _scot_call(x=torch.randn(2, 1, 8, 8).double()),
        TypeError,
        r"\bx\b.*dtype",
        id="scot-x-float64",
    ),
    P(lambda: _scot(periodic="no"), TypeError, r"periodic", id="scot-periodic-str"),
    P(
        lambda: _scot(time_conditioning=1),
        TypeError,
        r"time_conditioning",
        id="scot-time-conditioning-int",
    ),
    # ---------------------------------------------------------------- losses
    P(lambda: LpLoss(d=0), ValueError, r"\bd\b", id="lploss-d-zero"),
    P(lambda: LpLoss(d="2"), TypeError, r"\bd\b", id="lploss-d-str"),
    P(lambda: LpLoss(d=2, p=0), ValueError, r"\bp\b", id="lploss-p-zero"),
    P(lambda: LpLoss(d=2, p=NAN), ValueError, r"\bp\b", id="lploss-p-nan"),
    P(lambda: LpLoss(d=2, reduction="max"), ValueError, r"reduction", id="lploss-reduction"),
    P(lambda: LpLoss(d=2, L=-1.0), ValueError, r"\bL\b", id="lploss-length-negative"),
    P(lambda: LpLoss(d=2, L="a"), TypeError, r"\bL\b", id="lploss-length-str"),
    P(lambda: LpLoss(d=2, relative="yes"), TypeError, r"relative", id="lploss-relative-str"),
    P(
        lambda: _loss_call(LpLoss(d=2), target=torch.randn(2, 1, 8, 4)),
        ValueError,
        r"pred.*target",
        id="lploss-shape-mismatch",
    ),
    P(
        lambda: _loss_call(
            LpLoss(d=2),
            pred=torch.ones(2, 1, 8, 8, dtype=torch.long),
            target=torch.ones(2, 1, 8, 8, dtype=torch.long),
        ),
        TypeError,
        r"pred",
        id="lploss-pred-int",
    ),
    P(lambda: _loss_call(LpLoss(d=2), pred=[1.0]), TypeError, r"pred", id="lploss-pred-list"),
    P(
        lambda: _loss_call(LpLoss(d=2), pred=_with(torch.randn(2, 1, 8, 8), 3, NAN)),
        ValueError,
        r"pred contains",
        id="lploss-pred-nan",
    ),
    P(
        lambda: _loss_call(LpLoss(d=2), target=torch.zeros(2, 1, 8, 8)),
        ValueError,
        r"target.*zero",
        id="lploss-relative-zero-target",
    ),
    P(lambda: H1Loss(d=0), ValueError, r"\bd\b", id="h1loss-d-zero"),
    P(
        lambda: _loss_call(
            H1Loss(d=2, periodic=False), torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8)
        ),
        ValueError,
        r"points",
        id="h1loss-too-few-points",
    ),
    P(
        lambda: LpLoss(d=2)(torch.zeros(0, 1, 8, 8), torch.zeros(0, 1, 8, 8)),
        ValueError,
        r"pred and target hold no samples",
        id="lploss-empty-batch-mean",
    ),
    P(
        lambda: _loss_call(H1Loss(d=2), target=_with(torch.randn(2, 1, 8, 8), 0, INF)),
        ValueError,
        r"target contains",
        id="h1loss-target-inf",
    ),
    P(lambda: H1Loss(d=2, periodic="no"), TypeError, r"periodic", id="h1loss-periodic-str"),
    # ---------------------------------------------------------------- gtlib.io
    P(lambda: gio.atomic_write(None, lambda p: None), TypeError, r"path", id="io-path-none"),
    P(
        lambda: gio.atomic_write("/tmp/gtlib-bad-input.txt", "text"),
        TypeError,
        r"write",
        id="io-write-not-callable",
    ),
    P(
        lambda: gio.atomic_write_text("/tmp/gtlib-bad-input.txt", 3),
        TypeError,
        r"text",
        id="io-text-int",
    ),
    P(lambda: gio.atomic_write_text("/tmp", "x"), ValueError, r"/tmp", id="io-target-folder"),
    P(lambda: gio.atomic_torch_save({}, 3.5), TypeError, r"path", id="io-save-path-float"),
    P(lambda: gio.temporary_path(None), TypeError, r"path", id="io-temporary-path-none"),
    P(lambda: gio.remove_stale_temporaries(7), TypeError, r"path", id="io-stale-int"),
    P(lambda: gio.read_hdf5(np.arange(3)), TypeError, r"dataset", id="io-read-not-dataset"),
    P(lambda: gio.hdf5_member(3, "x"), TypeError, r"group", id="io-member-not-group"),
    P(lambda: gio.hdf5_member(_hdf5_file(), 3), TypeError, r"name", id="io-member-name-int"),
    # ---------------------------------------------------------------- gtlib.validation
    P(lambda: val.check_int(np.float64(2.0), "k"), TypeError, r"\bk\b", id="val-int-np-float"),
    P(
        lambda: val.check_int(torch.tensor(2, device="meta"), "k"),
        ValueError,
        r"\bk\b.*meta",
        id="val-int-meta",
    ),
    P(lambda: val.check_real(torch.ones(2), "s"), TypeError, r"\bs\b", id="val-real-vector"),
    P(lambda: val.check_real(np.nan, "s"), ValueError, r"\bs\b", id="val-real-np-nan"),
    P(
        lambda: val.check_real(torch.tensor(1.0, device="meta"), "s"),
        ValueError,
        r"\bs\b.*meta",
        id="val-real-meta",
    ),
    P(
        lambda: val.check_tensor(torch.ones(2), "x", integer=True),
        TypeError,
        r"\bx\b",
        id="val-tensor-integer",
    ),
    P(
        lambda: val.check_tensor(torch.ones(2), "x", device="meta"),
        ValueError,
        r"\bx\b",
        id="val-tensor-device",
    ),
    P(lambda: val.check_finite([1.0, NAN], "x"), TypeError, r"\bx\b", id="val-finite-list"),
    P(lambda: val.all_finite([1.0]), TypeError, r"value", id="val-all-finite-list"),
    P(
        lambda: val.check_index(torch.tensor([0.5]), "index"),
        TypeError,
        r"index",
        id="val-index-float",
    ),
    P(
        lambda: val.check_index(torch.tensor([0, 1]), "index", -1),
        ValueError,
        r"index",
        id="val-index-size-negative",
    ),
    P(lambda: val.resolve_act("nope"), ValueError, r"act", id="val-act-unknown"),
    P(lambda: val.set_finite_checks("yes"), TypeError, r"enabled", id="val-set-finite-str"),
    P(
        lambda: val.check_choice([1], "reduce", ("sum",)),
        TypeError,
        r"reduce",
        id="val-choice-list",
    ),
]


def _sparse_tensor_pattern(num_nodes):
    from torch_sparse import SparseTensor

    adj_t = SparseTensor(row=_edges()[1], col=_edges()[0], sparse_sizes=(4, 4))
    return Pattern.from_edge_index(adj_t, num_nodes)


XFAIL: dict[str, str] = {}


@pytest.mark.parametrize(("build", "error", "match"), CASES)
def test_bad_input_is_named(build, error, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(error, match=match):
            build()


def test_table_size():
    assert len(CASES) >= 120
    assert len({case.id for case in CASES}) == len(CASES)


# ------------------------------------------------------------------- valid edge cases
def _dense_attention(query, key, value, edge_index, num_dst, scale=None):
    """Float64 dense masked softmax attention; a pair repeated ``m`` times weighs ``m`` times,
    receivers without senders get zeros."""
    q, k, v = (t.double() for t in (query, key, value))
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    count = torch.zeros(num_dst, k.size(0), dtype=torch.float64)
    count.index_put_(
        (edge_index[1].long(), edge_index[0].long()),
        torch.ones(edge_index.size(1), dtype=torch.float64),
        accumulate=True,
    )
    scores = torch.einsum("ihc,jhc->hij", q, k) * scale
    scores = scores.masked_fill(count == 0, -math.inf)
    top = scores.amax(-1, keepdim=True).clamp(min=-1e300)
    weights = count * torch.exp(scores - top)
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-300)
    return torch.einsum("hij,jhc->ihc", weights, v)


def _random_edges(num_src, num_dst, num_edges, seed, dtype=torch.long):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(num_src, (num_edges,), generator=g)
    dst = torch.randint(num_dst, (num_edges,), generator=g)
    edge_index = torch.stack([src, dst])
    return torch.cat([edge_index, edge_index[:, :7]], dim=1).to(dtype)  # 7 duplicated pairs


MODES = ["scatter", "chunked", "sparse", "stream", "auto"]


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_duplicate_edges_int32_match_dense_float64(mode):
    n_src, n_dst, heads, channels = 9, 7, 2, 5
    edge_index = _random_edges(n_src, n_dst, 30, seed=1, dtype=torch.int32)
    g = torch.Generator().manual_seed(2)
    # [N, C, H] transposed: non-contiguous [N, H, C] views
    query = torch.randn(n_dst, channels, heads, generator=g).transpose(1, 2)
    key = torch.randn(n_src, channels, heads, generator=g).transpose(1, 2)
    value = torch.randn(2 * n_src, heads, channels, generator=g)[::2]
    assert not (query.is_contiguous() or key.is_contiguous() or value.is_contiguous())
    pattern = Pattern.from_edge_index(edge_index, (n_src, n_dst))
    assert not pattern.unique_edges
    out = sparse_attention(query, key, value, pattern, mode=mode, chunk_size=4)
    expected = _dense_attention(query, key, value, edge_index, n_dst)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    int64 = sparse_attention(
        query,
        key,
        value,
        Pattern.from_edge_index(edge_index.long(), (n_src, n_dst)),
        mode=mode,
        chunk_size=4,
    )
    torch.testing.assert_close(out, int64)


def test_duplicate_edges_weights_match_pyg_softmax_and_scatter():
    from torch_geometric.utils import scatter, softmax

    edge_index = _random_edges(6, 6, 20, seed=3)
    q, k, v = _qkv(n=6, seed=4)
    pattern = Pattern.from_edge_index(edge_index, 6)
    out, alpha = sparse_attention(q, k, v, pattern, mode="scatter", return_attention=True)
    src, dst = edge_index
    scores = (q[dst] * k[src]).sum(-1) / math.sqrt(q.size(-1))
    expected_alpha = softmax(scores, dst, num_nodes=6)
    expected = scatter(expected_alpha[..., None] * v[src], dst, dim=0, dim_size=6, reduce="sum")
    torch.testing.assert_close(alpha, expected_alpha)
    torch.testing.assert_close(out, expected)
    for reduce in ("sum", "mean", "max"):
        got = attend(pattern, v, score=None, reduce=reduce)
        torch.testing.assert_close(got, scatter(v[src], dst, dim=0, dim_size=6, reduce=reduce))


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_segment_softmax_unsorted_int32_masked_matches_pyg(index_dtype):
    from torch_geometric.utils import softmax

    g = torch.Generator().manual_seed(5)
    index = torch.randint(5, (40,), generator=g)
    scores = torch.randn(40, 3, generator=g)
    scores[3] = -INF  # a masked edge
    got = segment_softmax(scores, index.to(index_dtype), 7)  # receivers 5, 6 have no edges
    torch.testing.assert_close(got, softmax(scores, index, num_nodes=7))
    strided = torch.randn(3, 40, generator=g).t()  # non-contiguous scores
    torch.testing.assert_close(
        segment_softmax(strided, index.to(index_dtype)), softmax(strided, index)
    )


@pytest.mark.parametrize("mode", MODES)
def test_empty_patterns_give_zeros(mode):
    q, k, v = _qkv(n=5)
    empty = Pattern.from_edge_index(torch.zeros(2, 0, dtype=torch.int32), 5)
    out = sparse_attention(q, k, v, empty, mode=mode)
    assert out.shape == (5, 2, 3) and torch.count_nonzero(out) == 0
    none = Pattern.from_edge_index(torch.zeros(2, 0, dtype=torch.long), 0)
    q0 = torch.zeros(0, 2, 3)
    assert sparse_attention(q0, q0, q0, none, mode=mode).shape == (0, 2, 3)
    assert segment_softmax(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)).shape == (0, 2)


def test_empty_and_single_node_block_patterns():
    assert Pattern.full(num_nodes=0).num_edges == 0
    assert Pattern.full(torch.zeros(0, dtype=torch.long)).num_edges == 0
    q, k, v = _qkv(n=1)
    out = sparse_attention(q, k, v, Pattern.full(num_nodes=1))
    torch.testing.assert_close(out, v)  # one sender: weight 1


def test_sparse_adjacencies_with_duplicates_equal_the_edge_list():
    edge_index = _random_edges(5, 4, 12, seed=6)
    values = torch.ones(edge_index.size(1))
    reference = Pattern.from_edge_index(edge_index, (5, 4))
    coo = torch.sparse_coo_tensor(edge_index.flip(0), values, (4, 5))  # uncoalesced: duplicates
    q, k, v = _qkv(n=5, seed=7)
    expected = sparse_attention(q[:4], k, v, reference)
    adjacencies = [coo, torch.sparse_coo_tensor(edge_index.flip(0), values, (4, 5)).to_sparse_csr()]
    if HAS_TORCH_SPARSE:  # torch-sparse is an optional extra
        from torch_sparse import SparseTensor

        adjacencies.append(SparseTensor(row=edge_index[1], col=edge_index[0], sparse_sizes=(4, 5)))
    for adjacency in adjacencies:
        pattern = Pattern.from_edge_index(adjacency)
        assert pattern.num_edges == edge_index.size(1) or adjacency.layout == torch.sparse_csr
        out = sparse_attention(q[:4], k, v, pattern)
        if pattern.num_edges == edge_index.size(1):
            torch.testing.assert_close(out, expected)


def test_huge_bipartite_sizes_sort_without_overflow():
    # receiver * num_src + sender would overflow int64: 9 * 2**61 > 2**63
    src = torch.tensor([3, 2**60 + 5, 1, 2**60 + 5, 0, 2**61 - 1])
    dst = torch.tensor([9, 7, 9, 7, 0, 8])
    pattern = Pattern.from_edge_index(torch.stack([src, dst]), (2**61, 10))
    order = sorted(range(6), key=lambda e: (int(dst[e]), int(src[e])))
    assert pattern.col.tolist() == [int(src[e]) for e in order]
    assert pattern.row.tolist() == [int(dst[e]) for e in order]
    assert torch.equal(pattern.edge_index, torch.stack([src, dst]))
    assert not pattern.unique_edges  # (2**60 + 5, 7) twice, found without an int64 key
    assert Pattern.from_edge_index(torch.stack([src[:3], dst[:3]]), (2**61, 10)).unique_edges


@pytest.mark.parametrize(
    ("exponent", "dtype"),
    [
        (66, torch.float32),
        (-100, torch.float32),
        (127, torch.float32),
        (1000, torch.float64),
        (-1060, torch.float64),
    ],
)
def test_knn_and_radius_at_huge_and_tiny_scales_match_brute_force(exponent, dtype):
    g = torch.Generator().manual_seed(8)
    unit = torch.rand(40, 3, generator=g, dtype=torch.float64)
    pos = (unit * 2.0**exponent).to(dtype)
    exact = pos.double() / 2.0**exponent  # the positions at unit scale, exactly
    distance = torch.cdist(exact, exact).fill_diagonal_(INF)
    pattern = Pattern.knn(pos, 4)
    senders = pattern.edge_index[0].view(40, 4)
    found = distance.gather(1, senders).sort(1).values
    torch.testing.assert_close(found, distance.topk(4, largest=False).values.sort(1).values)
    assert torch.isfinite(pattern.displacement).all()
    radius = Pattern.radius(pos, 0.3 * 2.0**exponent)
    expected = int((distance <= 0.3).sum())
    assert abs(radius.num_edges - expected) <= 2  # pairs within rounding of the cutoff


def test_zero_size_batches():
    assert MLPScore(3)(torch.zeros(0, 3)).shape == (0, 3)
    assert SpectralConv(2, 3, (4, 4))(torch.zeros(0, 2, 8, 8)).shape == (0, 3, 8, 8)
    assert _mgno()(torch.zeros(0, 1, 8, 8)).shape == (0, 1, 8, 8)
    model = _large_gt().eval()
    batch = Data(
        tokens=torch.zeros(0, 6, 3), x=torch.zeros(0, 3), n_id=torch.zeros(0, dtype=torch.long)
    )
    assert model(batch).shape == (0, 2)
    q = torch.zeros(0, 2, 3)
    assert sparse_attention(
        q, *_qkv(n=4)[1:], Pattern.from_edge_index(torch.zeros(2, 0, dtype=torch.long), (4, 0))
    ).shape == (0, 2, 3)


def test_loader_duplicate_int32_edges_match_dense_normalised_adjacency():
    edge_index = torch.tensor([[0, 1, 1, 2, 3, 3, 0], [1, 0, 0, 3, 2, 2, 0]], dtype=torch.int32)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(9))
    data = LargeGTLoader.preprocess(Data(x=x, edge_index=edge_index))
    adjacency = torch.zeros(5, 5, dtype=torch.float64)
    adjacency[edge_index[1].long(), edge_index[0].long()] = 1.0  # duplicates merged
    adjacency.fill_diagonal_(1.0)  # A + I, a self-loop of the input counted once
    inv_sqrt = adjacency.sum(1).rsqrt()
    norm = inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]
    hop1 = norm @ x.double()
    torch.testing.assert_close(data.hop_x[:, 1].double(), hop1, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(data.hop_x[:, 2].double(), norm @ hop1, atol=1e-6, rtol=1e-5)


def test_deprecated_keyword_aliases_still_work_and_warn():
    kwargs = dict(
        patch_size=2, embed_dim=4, depths=(1, 1), window_size=2, skip_connection_blocks=(1, 0)
    )
    with pytest.warns(FutureWarning, match="num_heads is deprecated, use heads"):
        assert ScOT(1, 1, 8, num_heads=(1, 2), **kwargs).heads == (1, 2)
    with pytest.raises(TypeError, match="pass heads only"):
        ScOT(1, 1, 8, num_heads=(1, 2), heads=(1, 2), **kwargs)
    with pytest.warns(FutureWarning, match="activation is deprecated, use act"):
        model = MgNO(1, 1, hidden_channels=4, n_layers=1, n_levels=2, activation="tanh")
    x = torch.randn(1, 1, 8, 8)
    reference = MgNO(1, 1, hidden_channels=4, n_layers=1, n_levels=2, act="tanh")
    reference.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x), reference(x))
    # MLPScore: ``dim`` (a spatial dimension elsewhere) renamed to num_coordinates
    with pytest.warns(FutureWarning, match="dim is deprecated, use num_coordinates"):
        score = MLPScore(dim=3, hidden_channels=8)
    assert score.num_coordinates == 3
    with pytest.warns(FutureWarning, match="num_coordinates"):
        assert score.dim == 3
    with pytest.raises(TypeError, match="pass num_coordinates only"):
        MLPScore(dim=3, num_coordinates=3)


def test_meta_tensors_propagate_shapes_through_block_attention():
    batch = torch.tensor([0, 0, 1, 1, 1])
    for pattern in (Pattern.full(num_nodes=4, device="meta"), Pattern.full(batch).to("meta")):
        x = torch.empty(pattern.num_dst, 2, 3, device="meta")
        out = sparse_attention(x, x, x, pattern)
        assert out.device.type == "meta" and out.shape == x.shape


def test_bigbird_and_expander_saturate_at_the_graph_size():
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    full = Pattern.full(batch)
    huge = Pattern.bigbird(batch, window=10**12, num_random=0, num_global=10**12)
    assert torch.equal(huge.edge_index, full.edge_index)  # the window covers every graph
    complete = Pattern.expander(batch=batch, degree=10**9)  # every graph has <= degree nodes
    off_diagonal = full.edge_index[:, full.edge_index[0] != full.edge_index[1]]
    assert torch.equal(complete.edge_index, off_diagonal)


def test_finiteness_checks_do_not_warn_on_tensors_that_require_grad():
    x = torch.randn(4, 3, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert val.all_finite(x * 2)
        assert val.check_finite(x * 2, "x") is not None


def test_non_contiguous_int32_edge_index_and_array_lengths():
    edges = _random_edges(6, 6, 15, seed=10)
    view = edges.t().contiguous().t().to(torch.int32)[:, ::1]  # [2, E] view of an [E, 2] tensor
    assert not view.is_contiguous()
    for given in (view, edges[:, torch.arange(edges.size(1))]):
        pattern = Pattern.from_edge_index(given, 6)
        assert torch.equal(pattern.edge_index, edges)
    pred, target = torch.randn(2, 1, 8, 4), torch.randn(2, 1, 8, 4)
    for lengths in ((2.0, 3.0), torch.tensor([2.0, 3.0]), np.array([2.0, 3.0])):
        loss = LpLoss(d=2, relative=False, L=lengths)(pred, target)
        h = 2.0 / 8 * 3.0 / 4  # the quadrature weight of one grid cell
        torch.testing.assert_close(loss, (h * (pred - target).pow(2).sum((1, 2, 3))).sqrt().mean())


def test_triton_mode_on_cpu_tensors_without_the_interpreter_names_the_mode(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="mode='triton' needs Triton and a CUDA device"):
        _attn(mode="triton")


def test_int32_batch_vectors_build_the_int64_patterns():
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    narrow = batch.to(torch.int32)
    assert torch.equal(Pattern.full(narrow).edge_index, Pattern.full(batch).edge_index)
    g1, g2 = (torch.Generator().manual_seed(11) for _ in range(2))
    assert torch.equal(
        Pattern.bigbird(narrow, generator=g1).edge_index,
        Pattern.bigbird(batch, generator=g2).edge_index,
    )
    g1, g2 = (torch.Generator().manual_seed(12) for _ in range(2))
    assert torch.equal(
        Pattern.expander(batch=narrow, degree=1, generator=g1).edge_index,
        Pattern.expander(batch=batch, degree=1, generator=g2).edge_index,
    )
    pos = _pos(9)
    assert torch.equal(
        Pattern.knn(pos, 2, batch=narrow).edge_index, Pattern.knn(pos, 2, batch=batch).edge_index
    )
