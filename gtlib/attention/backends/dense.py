"""Block patterns (per-graph all-to-all, windows) through dense scaled-dot-product attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gtlib.attention.backends import windows as _windows


def dense_attention(query, key, value, pattern, scale, dropout, bias=None, flex=False) -> Tensor:
    """Softmax attention of a block pattern, block size by block size, with SDPA.

    On the CPU, blocks of three sizes or more, of at most
    :data:`~gtlib.attention.backends.windows.MAX_WINDOW` nodes, without bias or dropout go to the
    fused window kernel instead when it is built (one call for all blocks whatever their sizes,
    no gathers; :mod:`gtlib.attention.backends.windows`), e.g. octree windows.

    A per-edge ``bias [E, H]`` (caller order) is gathered into each block's ``[H, size, size]``
    additive mask (e.g. Swin's relative position bias); contiguous blocks are sliced.

    ``flex=True`` sends the call to :func:`flex_block_attention` (one ``flex_attention`` kernel
    over every block, the bias as a ``score_mod`` instead of a materialised mask). It is not
    the default anywhere: on an H200 (torch 2.11) SDPA per block size was 2.6-4.3x faster with
    3, 30 and 167 distinct sizes, and flex's block mask took 1.4-35 GiB against SDPA's
    0.03-0.13 GiB (``create_block_mask`` materialises a ``length x length`` mask); compiled
    flex also needs at least 16 channels per head.
    """
    if flex:
        return flex_block_attention(query, key, value, pattern, scale, bias)
    if bias is None and dropout == 0 and _windows.routes(query, pattern):
        ptr, index, _ = _windows.block_layout(pattern)
        return _windows.window_attention(query, key, value, ptr, index, scale, compiled=True)
    heads = query.size(1)
    if not pattern.blocks:  # no receivers
        return value.new_zeros(pattern.num_dst, heads, value.size(-1))
    # One gather of every block's nodes (a slice when they are one run in order), one split per
    # block size and one scatter back: the backward then adds into one gradient per input
    # instead of one full-size zero gradient per block size.
    order, in_order = _block_order(pattern)
    sizes = [block.numel() for block in pattern.blocks]
    pieces = [x if in_order else x.index_select(0, order) for x in (query, key, value)]
    pieces = [x.split(sizes) for x in pieces]
    positions = pattern.block_edge_positions() if bias is not None else None
    outputs = []
    for index, block in enumerate(pattern.blocks):
        num_blocks, size = block.shape

        def blocks(x: Tensor, num_blocks=num_blocks, size=size) -> Tensor:
            return x.view(num_blocks, size, heads, -1).transpose(1, 2)

        mask = None
        if bias is not None:
            edge_bias = bias.to(query.dtype).index_select(0, positions[index].reshape(-1))
            mask = edge_bias.view(num_blocks, size, size, heads).permute(0, 3, 1, 2)
        out = F.scaled_dot_product_attention(
            *(blocks(x[index]) for x in pieces), attn_mask=mask, dropout_p=dropout, scale=scale
        )
        outputs.append(out.transpose(1, 2).reshape(num_blocks * size, heads, -1))
    result = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
    if in_order:
        return result
    return result.new_zeros(pattern.num_dst, *result.shape[1:]).index_copy(0, order, result)


def _block_order(pattern) -> tuple[Tensor | None, bool]:
    """The nodes of all blocks, block after block, and whether they are ``0..num_dst-1`` in
    order (then no gather or scatter is needed). Kept with the pattern."""
    return pattern.derived("dense.block_order", lambda: _find_block_order(pattern))


def _find_block_order(pattern) -> tuple[Tensor | None, bool]:
    starts = pattern.block_starts()
    position = 0
    for block, start in zip(pattern.blocks, starts, strict=True):
        if start != position:
            break
        position += block.numel()
    else:
        if position == pattern.num_dst:
            return None, True
    return torch.cat([block.reshape(-1) for block in pattern.blocks]), False


def flex_block_attention(query, key, value, pattern, scale, bias=None, compiled=None) -> Tensor:
    """Softmax attention of a block pattern with one ``flex_attention`` call over all blocks.

    The blocks' nodes are laid out one after another in a single sequence and a document mask
    (``BlockMask``: a query attends to the keys of its own block) restricts the attention, so
    blocks of many sizes (a batch of graphs of different sizes) take one kernel instead of one
    SDPA call per size; a per-edge ``bias [E, H]`` (caller order) is read by a ``score_mod``
    from a table in block order. ``compiled`` chooses ``torch.compile(flex_attention)`` (default:
    on CUDA devices; elsewhere flex's eager reference, used by the tests). Nodes in no block get
    zeros.
    """
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    device, heads = query.device, query.size(1)
    order, document, query_base, key_local, tables = [], [], [], [], []
    offset_documents, offset_edges = 0, 0
    positions = pattern.block_edge_positions() if bias is not None else [None] * len(pattern.blocks)
    for block, position in zip(pattern.blocks, positions, strict=True):
        num_blocks, size = block.shape
        order.append(block.reshape(-1))
        ids = torch.arange(num_blocks, device=device)
        document.append((offset_documents + ids).repeat_interleave(size))
        local = torch.arange(size, device=device).repeat(num_blocks)
        key_local.append(local)
        query_base.append(offset_edges + (ids.repeat_interleave(size) * size + local) * size)
        if bias is not None:
            tables.append(bias.index_select(0, position.reshape(-1)))
        offset_documents += num_blocks
        offset_edges += num_blocks * size * size
    out = value.new_zeros(pattern.num_dst, heads, value.size(-1))
    if not order or offset_edges == 0:
        return out
    order = torch.cat(order)
    document, query_base, key_local = (
        torch.cat(document),
        torch.cat(query_base),
        torch.cat(key_local),
    )
    length = order.numel()

    def mask_mod(b, h, q_idx, kv_idx):
        return document[q_idx] == document[kv_idx]

    score_mod = None
    if bias is not None:
        table = torch.cat(tables).to(query.dtype)  # [sum of size^2 over blocks, H]

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + table[query_base[q_idx] + key_local[kv_idx], h]

    block_mask = create_block_mask(mask_mod, None, None, length, length, device=device)

    def sequence(x: Tensor) -> Tensor:
        return x.index_select(0, order).transpose(0, 1).unsqueeze(0)  # [1, H, L, C]

    if compiled is None:
        compiled = device.type == "cuda"
    kernel = _compiled_flex() if compiled else flex_attention
    result = kernel(sequence(query), sequence(key), sequence(value), score_mod=score_mod,
                    block_mask=block_mask, scale=scale)  # fmt: skip
    return out.index_copy(0, order, result.squeeze(0).transpose(0, 1))


_FLEX = None


def _compiled_flex():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX
