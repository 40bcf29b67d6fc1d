"""Block patterns (per-graph all-to-all, windows) through dense scaled-dot-product attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dense_attention(query, key, value, pattern, scale, dropout, bias=None) -> Tensor:
    """Softmax attention of a block pattern, block size by block size, with SDPA.

    A per-edge ``bias [E, H]`` (caller order) is gathered into each block's ``[H, size, size]``
    additive mask (e.g. Swin's relative position bias); contiguous blocks are sliced.
    """
    outputs, nodes = [], []
    heads = query.size(1)
    positions = pattern.block_edge_positions() if bias is not None else None
    starts = pattern.block_starts()
    for index, block in enumerate(pattern.blocks):
        num_blocks, size = block.shape
        flat = block.reshape(-1)
        start = starts[index]

        def gather(x: Tensor, flat=flat, num_blocks=num_blocks, size=size, start=start) -> Tensor:
            rows = x.index_select(0, flat) if start is None else x[start : start + flat.numel()]
            return rows.view(num_blocks, size, heads, -1).transpose(1, 2)

        mask = None
        if bias is not None:
            edge_bias = bias.to(query.dtype).index_select(0, positions[index].reshape(-1))
            mask = edge_bias.view(num_blocks, size, size, heads).permute(0, 3, 1, 2)
        out = F.scaled_dot_product_attention(
            gather(query), gather(key), gather(value), attn_mask=mask, dropout_p=dropout,
            scale=scale,
        )  # fmt: skip
        outputs.append(out.transpose(1, 2).reshape(num_blocks * size, heads, -1))
        nodes.append(flat)
    if not outputs:  # no receivers
        return value.new_zeros(pattern.num_dst, heads, value.size(-1))
    if len(outputs) == 1 and starts[0] == 0 and nodes[0].numel() == pattern.num_dst:
        return outputs[0]  # the blocks tile the nodes in order
    order = torch.cat(nodes)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return torch.cat(outputs).index_select(0, inverse)
