"""Autograd glue shared by the compiled (first-order) kernels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def differentiable_backward(
    forward: Callable[..., Tensor],
    inputs: Sequence[Tensor | None],
    needs: Sequence[bool],
    grad_out: Tensor,
) -> list[Tensor | None]:
    """The backward of a kernel whose own backward is first order, when autograd asks for a graph.

    A compiled kernel computes its gradients outside autograd, so they cannot be differentiated
    again. When the backward runs with ``create_graph=True`` (``torch.is_grad_enabled()`` inside
    ``Function.backward``: gradient penalties, exact divergences, Hessian-vector products), the
    kernel's ``backward`` calls this instead: ``forward(*inputs)`` is recomputed with
    differentiable torch operations and the vector-Jacobian product ``grad_out`` is taken with
    ``create_graph=True``, so the returned gradients carry a graph to the inputs (and to
    ``grad_out``). Slower and larger than the kernel; it only runs when a graph is asked for.

    Returns:
        One gradient per input: ``None`` where ``needs`` is false or the input is ``None``.
    """
    wanted = [i for i, (x, need) in enumerate(zip(inputs, needs)) if need and x is not None]
    grads: list[Tensor | None] = [None] * len(inputs)
    if not wanted:
        return grads
    with torch.enable_grad():
        out = forward(*inputs)
        found = torch.autograd.grad(
            out, [inputs[i] for i in wanted], grad_out, create_graph=True, allow_unused=True
        )
    for i, grad in zip(wanted, found):
        grads[i] = torch.zeros_like(inputs[i]) if grad is None else grad
    return grads
