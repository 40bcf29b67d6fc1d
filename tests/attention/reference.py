"""Independent references for the attention tests: per-receiver loops with torch.softmax."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    edge_index: Tensor,
    *,
    score: str = "dot",
    att: Tensor | None = None,
    negative_slope: float = 0.2,
    key_edge: Tensor | None = None,
    value_edge: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Loops over receivers; each one's edges get a dense ``torch.softmax``. Differentiable."""
    num_dst, heads, _ = query.shape
    if scale is None:
        scale = 1.0 / math.sqrt(query.size(-1)) if score == "dot" else 1.0
    senders, receivers = edge_index
    outputs, weights = [], torch.zeros(edge_index.size(1), heads, dtype=query.dtype)
    weight_rows = {}
    for i in range(num_dst):
        edges = (receivers == i).nonzero().flatten()
        if edges.numel() == 0:
            outputs.append(query.new_zeros(heads, value.size(-1)))
            continue
        keys = key[senders[edges]]
        if key_edge is not None:
            keys = keys + key_edge[edges]
        if score == "dot":
            scores = (keys * query[i]).sum(-1) * scale
        else:
            scores = (F.leaky_relu(keys + query[i], negative_slope) * att).sum(-1) * scale
        if bias is not None:
            scores = scores + bias[edges]
        alpha = torch.softmax(scores, dim=0)  # [deg, H]
        values = value[senders[edges]]
        if value_edge is not None:
            values = values + value_edge[edges]
        outputs.append((alpha.unsqueeze(-1) * values).sum(0))
        weight_rows[i] = (edges, alpha)
    for edges, alpha in weight_rows.values():
        weights = weights.index_put((edges,), alpha)
    return torch.stack(outputs) if outputs else query.new_zeros(0, heads, value.size(-1)), weights
