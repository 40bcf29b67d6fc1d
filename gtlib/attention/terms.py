"""Score terms of the attention engine, written once.

A score is composed of one built-in term and optional additions:

* ``"dot"``: :math:`q_i \\cdot (k_j + e^k_{ij})`;
* ``"additive"``: :math:`a \\cdot \\mathrm{act}(q_i + k_j + e^k_{ij})` (GATv2);
* ``"static"``: :math:`\\mathrm{act}(s_j + d_i + e_{ij})` from per-node scalars per head (GAT's
  :math:`a_s \\cdot x_j + a_d \\cdot x_i`, or any score computed per node);
* ``None``: zero, for scores made entirely by a ``score_mod``;

then times ``scale``, plus an additive ``bias [E, H]``, then a user ``score_mod``. ``act`` is a
LeakyReLU with ``negative_slope`` (``None``: identity). The functions here come in the two forms
the backends need: a differentiable one on gathered edge tensors (for the reference and the
chunked backends, which differentiate with autograd) and an in-place one over reusable chunk
buffers with its hand-written gradient (for the streaming and sparse-matrix backends). The fused
CPU kernel has its own C++ copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SCORE_KINDS = ("dot", "additive", "static", None)


@dataclass(frozen=True)
class ScoreSpec:
    """How a score is formed: the built-in term, its activation and the scale."""

    kind: str | None
    scale: float
    negative_slope: float | None  # LeakyReLU slope of "additive"/"static"; None: identity

    def activate(self, x: Tensor) -> Tensor:
        if self.negative_slope is None:
            return x
        return F.leaky_relu(x, self.negative_slope)

    def activate_(self, x: Tensor) -> Tensor:
        if self.negative_slope is None:
            return x
        return F.leaky_relu_(x, self.negative_slope)

    def activation_gradient_(self, activated: Tensor, grad: Tensor, out: Tensor) -> Tensor:
        """``grad * act'(pre)`` into ``out``; the sign of ``act(pre)`` is the sign of ``pre``."""
        if self.negative_slope is None:
            return out.copy_(grad) if out is not grad else out
        derivative = torch.gt(activated, 0, out=out)
        derivative.mul_(1.0 - self.negative_slope).add_(self.negative_slope)
        return derivative.mul_(grad)


@dataclass
class ScoreInputs:
    """The tensors a score reads; per-edge tensors are in the caller's edge order."""

    query: Tensor | None = None  # [N_dst, H, C]
    key: Tensor | None = None  # [N_src, H, C]
    att: Tensor | None = None  # [H, C] ("additive")
    src_score: Tensor | None = None  # [N_src, H] ("static")
    dst_score: Tensor | None = None  # [N_dst, H] ("static")
    key_edge: Tensor | None = None  # [E, H, C] ("dot", "additive") or [E, H] ("static")
    bias: Tensor | None = None  # [E, H]


def edge_scores(spec: ScoreSpec, pieces: dict[str, Tensor | None]) -> Tensor:
    """Differentiable scores ``[Ec, H]`` from the inputs gathered at the edges: ``query`` at the
    receivers, ``key``/``src_score`` at the senders, ``dst_score`` at the receivers,
    ``key_edge``/``bias`` at the edges (``att`` whole)."""
    key_edge = pieces.get("key_edge")
    if spec.kind == "static":
        pre = pieces["src_score"]
        if pieces.get("dst_score") is not None:
            pre = pre + pieces["dst_score"]
        if key_edge is not None:
            pre = pre + key_edge
        scores = spec.activate(pre)
    elif spec.kind is None:  # the engine always passes a bias (zeros) with no score term
        return pieces["bias"]
    else:
        key_j = pieces["key"] if key_edge is None else pieces["key"] + key_edge
        if spec.kind == "dot":
            scores = (pieces["query"] * key_j).sum(-1)
        else:
            scores = (spec.activate(pieces["query"] + key_j) * pieces["att"]).sum(-1)
    if spec.scale != 1.0:
        scores = scores * spec.scale
    if pieces.get("bias") is not None:
        scores = scores + pieces["bias"]
    return scores


# ------------------------------------------------------------------ in-place chunk forms
def chunk_scores(plan, chunk, work, inputs: ScoreInputs):
    """Scores ``[Ec, H]`` of a chunk in a workspace view, and what their gradient needs.

    Uses workspace slots 0-2. ``saved`` is ``(query_i, key_j)`` for ``"dot"`` (slots 0, 1),
    ``(activated,)`` for ``"additive"`` (slot 0, ``act(q_i + k_j + e_ij)``) and ``(activated,)``
    for ``"static"`` (``[Ec, H]``, ``act(s_j + d_i + e_ij)``).
    """
    spec = plan.spec
    n = chunk.size
    scores = work.scores[:n]
    if spec.kind == "static":
        torch.index_select(inputs.src_score, 0, chunk.src, out=scores)
        if inputs.dst_score is not None:
            scores += inputs.dst_score.index_select(0, chunk.dst)
        if inputs.key_edge is not None:
            scores += chunk.take(inputs.key_edge)
        spec.activate_(scores)
        saved = (work.take(0, n, 1)[..., 0].copy_(scores),)
        if spec.scale != 1.0:
            scores.mul_(spec.scale)
    else:
        channels = plan.channels
        query_i = torch.index_select(inputs.query, 0, chunk.dst, out=work.take(0, n, channels))
        key_j = torch.index_select(inputs.key, 0, chunk.src, out=work.take(1, n, channels))
        if inputs.key_edge is not None:
            key_j += chunk.take(inputs.key_edge)
        if spec.kind == "dot":
            product = torch.mul(query_i, key_j, out=work.take(2, n, channels))
            torch.sum(product, -1, out=scores).mul_(spec.scale)
            saved = (query_i, key_j)
        else:
            activated = spec.activate_(query_i.add_(key_j))
            torch.sum(torch.mul(activated, inputs.att, out=key_j), -1, out=scores)
            if spec.scale != 1.0:
                scores.mul_(spec.scale)
            saved = (activated,)
    if inputs.bias is not None:
        scores += chunk.take(inputs.bias)
    return scores, saved


def chunk_score_backward(plan, chunk, work, inputs: ScoreInputs, saved, grad_scores, grads):
    """Accumulates the gradients of a chunk's scores into ``grads`` (a dict of tensors:
    ``query``, ``key``, ``att``, ``src_score``, ``dst_score``, ``key_edge``; absent or ``None``
    when not needed). ``grad_scores [Ec, H]`` is the gradient of the scaled score without the
    bias (its own gradient); it may be overwritten. Uses workspace slot 1 as scratch."""
    spec = plan.spec
    grad_scores = grad_scores.mul_(spec.scale) if spec.scale != 1.0 else grad_scores
    receivers = slice(chunk.first, chunk.stop)
    if spec.kind == "static":
        (activated,) = saved
        grad_pre = spec.activation_gradient_(activated, grad_scores, torch.empty_like(activated))
        if grads.get("src_score") is not None:
            grads["src_score"].index_add_(0, chunk.src, grad_pre)
        if grads.get("dst_score") is not None:
            grads["dst_score"][receivers].index_add_(0, chunk.local, grad_pre)
        if grads.get("key_edge") is not None:
            chunk.store(grads["key_edge"], grad_pre)
        return
    grad_scores = grad_scores.unsqueeze(-1)
    if spec.kind == "dot":
        query_i, key_j = saved
        if grads.get("query") is not None:
            grads["query"][receivers].index_add_(0, chunk.local, key_j.mul_(grad_scores))
        grad_key_j = query_i.mul_(grad_scores)
    else:
        (activated,) = saved
        scratch = work.take(1, chunk.size, plan.channels)
        if grads.get("att") is not None:
            grads["att"] += torch.mul(activated, grad_scores, out=scratch).sum(0)
        grad_hidden = torch.mul(grad_scores, inputs.att, out=scratch)
        grad_key_j = spec.activation_gradient_(activated, grad_hidden, activated)
        if grads.get("query") is not None:
            grads["query"][receivers].index_add_(0, chunk.local, grad_key_j)
    if grads.get("key") is not None:
        grads["key"].index_add_(0, chunk.src, grad_key_j)
    if grads.get("key_edge") is not None:
        chunk.store(grads["key_edge"], grad_key_j)
