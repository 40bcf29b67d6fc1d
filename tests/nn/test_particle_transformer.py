"""ParticleTransformer against a brute-force dense float64 reference, and its symmetries."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

import gtlib.nn.particle_transformer as pt_module
from gtlib.attention.cache import pattern_cache
from gtlib.nn.particle_transformer import ParticleTransformer

SMALL = dict(num_neighbors=6, hidden_channels=16, num_layers=2, heads=2, ff_channels=24)


def make_model(in_channels=2, out_channels=4, dim=2, seed=0, **kwargs):
    torch.manual_seed(seed)
    options = {**SMALL, **kwargs}
    return ParticleTransformer(in_channels, out_channels, dim=dim, **options)


def make_system(num, dim=2, channels=2, phi=0.5, seed=0, dtype=torch.float32):
    """Uniform random particles at packing fraction ``phi`` (radius 1) in a periodic box."""
    generator = torch.Generator().manual_seed(seed)
    length = (num * math.pi / phi) ** (1 / dim) if dim == 2 else (num * 4.19 / phi) ** (1 / 3)
    pos = torch.rand(num, dim, generator=generator, dtype=dtype) * length
    h = torch.randn(num, channels, generator=generator, dtype=dtype)
    return pos, h, length


# ---------------------------------------------------------------------- dense reference
def reference_neighbours(pos, k, box):
    """Brute-force O(N^2) minimum-image k nearest neighbours: ``[N, k]`` indices."""
    delta = pos[None, :, :] - pos[:, None, :]
    if box is not None:
        delta = delta - box * torch.round(delta / box)
    distance = delta.norm(dim=-1)
    distance.fill_diagonal_(float("inf"))
    return distance.topk(k, dim=1, largest=False).indices


def reference_forward(model, pos, h, box):
    """The model's math written out on ``[N, S, C]`` tensors with a manual softmax."""
    box_t = None if box is None else torch.as_tensor(box, dtype=pos.dtype).expand(pos.size(1))
    nbr = reference_neighbours(pos.detach(), model.num_neighbors, box_t)
    delta = pos[nbr] - pos[:, None, :]
    if box_t is not None:
        delta = delta - box_t * torch.round(delta.detach() / box_t)
    features = torch.cat([delta, h[nbr]], -1)
    if model.include_self:
        own = torch.cat([torch.zeros_like(pos), h], -1)[:, None]
        features = torch.cat([own, features], 1)

    def linear(x, layer):
        return x @ layer.weight.t() + layer.bias

    def layer_norm(x, norm):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias

    def gelu(x):
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    x = linear(gelu(linear(features, model.embed[0])), model.embed[2])
    num, size, channels = x.shape
    heads = model.heads
    for layer in model.layers:
        qkv = linear(layer_norm(x, layer.norm1), layer.qkv).view(num, size, 3, heads, -1)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # [N, H, S, C/H]
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        weights = weights / weights.sum(-1, keepdim=True)
        attended = (weights @ v).transpose(1, 2).reshape(num, size, channels)
        x = x + linear(attended, layer.out_proj)
        hidden = gelu(linear(layer_norm(x, layer.norm2), layer.ff[0]))
        x = x + linear(hidden, layer.ff[2])
    summary = x[:, 0] if model.include_self else x.mean(1)
    norm, first, last = model.decoder[0], model.decoder[1], model.decoder[3]
    return linear(gelu(linear(layer_norm(summary, norm), first)), last)


def perturb_parameters(model, seed=1):
    """LayerNorm starts at (1, 0); move every parameter so that all of them are tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))


@pytest.mark.parametrize(
    "box_kind, include_self, dim",
    [("scalar", True, 2), ("vector", True, 2), (None, True, 2), ("scalar", False, 2),
     ("scalar", True, 3)],
)  # fmt: skip
def test_matches_dense_reference_values_and_gradients(box_kind, include_self, dim):
    model = make_model(dim=dim, include_self=include_self).double()
    perturb_parameters(model)
    pos, h, length = make_system(40 if dim == 2 else 60, dim=dim, dtype=torch.float64)
    box = {"scalar": length, "vector": torch.tensor([length, 1.3 * length]), None: None}[box_kind]
    if box_kind == "vector":
        pos[:, 1] *= 1.3
    pos.requires_grad_(True)
    h.requires_grad_(True)

    out = model(pos, h, box=box)
    expected = reference_forward(model, pos, h, box)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)

    weight = torch.randn_like(out)
    params = list(model.parameters())
    grads = torch.autograd.grad((out * weight).sum(), [pos, h, *params])
    grads_ref = torch.autograd.grad((expected * weight).sum(), [pos, h, *params])
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    assert grads[0].abs().sum() > 0  # positions enter through the displacements


def test_reference_neighbours_match_cell_lists():
    # The output must change when a neighbour set changes, so a wrong neighbour list fails.
    model = make_model().double()
    pos, h, length = make_system(50, dtype=torch.float64)
    out = model(pos, h, box=length)
    nbr = model._neighbours(pos, torch.full((2,), length, dtype=torch.float64), 1, 50)
    ref = reference_neighbours(pos, model.num_neighbors, torch.full((2,), length).double())
    assert torch.equal(nbr.sort(1).values, ref.sort(1).values)
    torch.testing.assert_close(out, reference_forward(model, pos, h, length))


def test_batched_equals_per_system():
    model = make_model().double()
    perturb_parameters(model)
    systems = [make_system(30, seed=s, dtype=torch.float64) for s in range(3)]
    length = systems[0][2]
    pos = torch.stack([s[0] for s in systems])
    h = torch.stack([s[1] for s in systems])
    out = model(pos, h, box=length)
    assert out.shape == (3, 30, 4)
    for b in range(3):
        torch.testing.assert_close(out[b], reference_forward(model, pos[b], h[b], length))


# ---------------------------------------------------------------------- symmetries
def test_permutation_equivariance():
    model = make_model()
    perturb_parameters(model)
    pos, h, length = make_system(200, seed=3)
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(4))
    out = model(pos, h, box=length)
    out_perm = model(pos[perm], h[perm], box=length)
    torch.testing.assert_close(out_perm, out[perm], rtol=1e-5, atol=1e-6)
    # batched, a different permutation per system
    pos2, h2, _ = make_system(200, seed=5)
    perm2 = torch.randperm(200, generator=torch.Generator().manual_seed(6))
    out_b = model(torch.stack([pos[perm], pos2[perm2]]), torch.stack([h[perm], h2[perm2]]), length)
    torch.testing.assert_close(out_b[0], out[perm], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_b[1], model(pos2, h2, box=length)[perm2], rtol=1e-5, atol=1e-6)


def test_periodic_translation_and_image_invariance():
    model = make_model().double()
    perturb_parameters(model)
    pos, h, length = make_system(120, seed=7, dtype=torch.float64)
    out = model(pos, h, box=length)
    generator = torch.Generator().manual_seed(8)
    shift = torch.rand(2, generator=generator, dtype=torch.float64) * length
    shifted = torch.remainder(pos + shift, length)
    torch.testing.assert_close(model(shifted, h, box=length), out, rtol=1e-9, atol=1e-9)
    images = pos + length * torch.randint(-3, 4, pos.shape, generator=generator).double()
    torch.testing.assert_close(model(images, h, box=length), out, rtol=1e-9, atol=1e-9)
    # free space: any translation
    free = model(pos, h)
    torch.testing.assert_close(model(pos + 17.25, h), free, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(free, out)  # the box matters for particles near its faces


def test_size_agnostic_tiled_box_reproduces_outputs():
    # Tiling the periodic box 4 x 2 gives the same periodic system with 8N particles.
    model = make_model(num_neighbors=8).double()
    perturb_parameters(model)
    num = 150
    pos, h, length = make_system(num, seed=9, dtype=torch.float64)
    out = model(pos, h, box=length)
    offsets = torch.tensor(
        [[a * length, b * length] for a in range(4) for b in range(2)], dtype=torch.float64
    )
    big_pos = (pos[None] + offsets[:, None]).reshape(-1, 2)
    big_h = h.repeat(8, 1)
    big_box = torch.tensor([4 * length, 2 * length], dtype=torch.float64)
    big = model(big_pos, big_h, box=big_box)
    assert big.shape == (8 * num, 4)
    torch.testing.assert_close(big.view(8, num, 4), out.expand(8, num, 4), rtol=1e-9, atol=1e-9)


def test_output_depends_only_on_neighbourhood():
    model = make_model()
    perturb_parameters(model)
    num = 300
    pos, h, length = make_system(num, seed=10)
    box = torch.tensor([length, length])
    out = model(pos, h, box=length)
    target = 0
    delta = pos - pos[target]
    delta = delta - box * torch.round(delta / box)
    distance = delta.norm(dim=1)
    reach = distance.sort().values[model.num_neighbors]  # the K-th neighbour (index 0 is itself)
    far = torch.nonzero(distance > reach + 1.0).squeeze(1)
    mover = int(far[0])
    moved = pos.clone()
    # move it to another far place: the opposite corner of the target's box cell
    moved[mover] = torch.remainder(pos[target] + 0.5 * box + 0.01, box)
    assert (
        moved[mover] - pos[target] - box * torch.round((moved[mover] - pos[target]) / box)
    ).norm() > reach + 1.0
    out_moved = model(moved, h, box=length)
    torch.testing.assert_close(out_moved[target], out[target], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(out_moved[mover], out[mover])  # the moved particle itself changed


# ---------------------------------------------------------------------- chunking
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_equals_unchunked_values_and_gradients(chunk_size):
    model = make_model().double()
    perturb_parameters(model)
    pos, h, length = make_system(50, seed=11, dtype=torch.float64)
    pos = torch.stack([pos, pos.flip(0)]).requires_grad_(True)
    h = torch.stack([h, -h]).requires_grad_(True)
    chunked = make_model(chunk_size=chunk_size).double()
    chunked.load_state_dict(model.state_dict())
    out = model(pos, h, box=length)
    out_chunked = chunked(pos, h, box=length)
    torch.testing.assert_close(out_chunked, out, rtol=1e-12, atol=1e-12)
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), [pos, h, *model.parameters()])
    grads_chunked = torch.autograd.grad(
        (out_chunked * weight).sum(), [pos, h, *chunked.parameters()]
    )
    for got, want in zip(grads_chunked, grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_h_self_gives_the_own_token_jacobian_blocks(chunk_size):
    """d(sum_i out_{i,a}) / d h_self = the diagonal blocks d out_i / d h_i of the full Jacobian."""
    model = make_model(chunk_size=chunk_size).double()
    perturb_parameters(model)
    pos, h, length = make_system(40, seed=13, dtype=torch.float64)
    h_self = h.clone().requires_grad_(True)
    out = model(pos, h, box=length, h_self=h_self)
    torch.testing.assert_close(out, model(pos, h, box=length), rtol=0, atol=0)
    full = torch.autograd.functional.jacobian(lambda hh: model(pos, hh, box=length), h)
    n, channels = h.shape
    blocks = full.diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [N, out, in]
    for a in range(out.shape[1]):
        (grad,) = torch.autograd.grad(out[:, a].sum(), h_self, retain_graph=True)
        torch.testing.assert_close(grad, blocks[:, a], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="h_self must have shape"):
        model(pos, h, box=length, h_self=h[:-1])
    no_self = ParticleTransformer(channels, 2, num_neighbors=4, include_self=False).double()
    with pytest.raises(ValueError, match="include_self"):
        no_self(pos, h, box=length, h_self=h)


def test_chunked_training_uses_checkpoint(monkeypatch):
    calls = []
    original = pt_module.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pt_module, "checkpoint", counting)
    model = make_model(chunk_size=16)
    pos, h, length = make_system(40, seed=12)
    model(pos, h, box=length).sum().backward()
    assert len(calls) == 3
    with torch.no_grad():
        model(pos, h, box=length)
    assert len(calls) == 3  # no recomputation needed without gradients


def test_token_pattern_built_once(monkeypatch):
    built = []
    original = pt_module.Pattern.full

    def counting(*args, **kwargs):
        built.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pt_module.Pattern, "full", counting)
    pattern_cache.clear()  # the library-wide cache may hold this pattern from another test
    model = make_model(num_layers=3)
    pos, h, length = make_system(40, seed=13)
    model(pos, h, box=length)
    model(pos + 0.5, h, box=length)
    assert len(built) == 1
    other = make_model(num_layers=1, seed=3)  # models share the library's cache
    other(pos, h, box=length)
    assert len(built) == 1
    assert not hasattr(model, "_patterns")  # the model holds no cache: it pickles as it is


# ---------------------------------------------------------------------- misc behaviour
def test_positions_only_and_dropout():
    model = make_model(in_channels=0, out_channels=2, dropout=0.3)
    pos, _, length = make_system(40, seed=14)
    model.eval()
    out = model(pos, box=length)
    assert out.shape == (40, 2)
    torch.testing.assert_close(model(pos, None, box=length), out)
    model.train()
    torch.manual_seed(0)
    first = model(pos, box=length)
    torch.manual_seed(1)
    second = model(pos, box=length)
    assert not torch.allclose(first, second)


def test_reset_parameters_repr_pickle_and_defaults():
    model = ParticleTransformer(2, 4)
    assert sum(p.numel() for p in model.parameters()) == 564356
    assert repr(model) == (
        "ParticleTransformer(2, 4, dim=2, num_neighbors=64, hidden_channels=128, num_layers=4, "
        "heads=4, ff_channels=256)"
    )
    small = make_model()
    perturb_parameters(small)
    before = [p.detach().clone() for p in small.parameters()]
    small.reset_parameters()
    after = list(small.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    norm = small.layers[0].norm1
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    pos, h, length = make_system(40, seed=15)
    out = small(pos, h, box=length)
    clone = pickle.loads(pickle.dumps(small))
    torch.testing.assert_close(clone(pos, h, box=length), out)


def test_bad_inputs_raise():
    model = make_model()
    pos, h, length = make_system(40, seed=16)
    with pytest.raises(TypeError, match="pos"):
        model(pos.long(), h, box=length)
    with pytest.raises(ValueError, match="pos"):
        model(pos[:, :1], h, box=length)
    with pytest.raises(ValueError, match="pos"):
        model(pos[None, None], h, box=length)
    bad = pos.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="pos"):
        model(bad, h, box=length)
    with pytest.raises(ValueError, match="num_neighbors"):
        model(pos[:6], h[:6], box=length)
    with pytest.raises(ValueError, match="h must have shape"):
        model(pos, h[:, :1], box=length)
    with pytest.raises(TypeError, match="h must have the dtype"):
        model(pos, h.double(), box=length)
    with pytest.raises(ValueError, match="h is required"):
        model(pos, None, box=length)
    with pytest.raises(ValueError, match="box"):
        model(pos, h, box=-1.0)
    with pytest.raises(ValueError, match="box"):
        model(pos, h, box=[length, length, length])
    with pytest.raises(ValueError, match="box"):
        model(pos, h, box=float("inf"))
    with pytest.raises(TypeError, match="box"):
        model(pos, h, box="big")
    with pytest.raises(ValueError, match="box is too small"):
        make_model(num_neighbors=30)(pos, h, box=length)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(hidden_channels=10, heads=3), ValueError),
        (dict(dropout=1.0), ValueError),
        (dict(chunk_size=0), ValueError),
        (dict(num_neighbors=0), ValueError),
        (dict(num_neighbors=2.5), TypeError),
        (dict(include_self=1), TypeError),
    ],
)
def test_bad_constructor_arguments_raise(kwargs, error):
    with pytest.raises(error):
        make_model(**kwargs)


def test_matches_torch_sdpa_layer():
    # One encoder layer of the model equals torch's scaled_dot_product_attention on [N, S, C].
    model = make_model(num_layers=1).double()
    perturb_parameters(model)
    layer = model.layers[0]
    tokens = torch.randn(5, model.tokens_per_particle, 16, dtype=torch.float64)
    out = layer(tokens.reshape(-1, 16), model._full_pattern(5, tokens.device), 0.0)
    qkv = layer.qkv(layer.norm1(tokens)).view(5, -1, 3, 2, 8)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(5, -1, 16)
    expected = tokens + layer.out_proj(attended)
    expected = expected + layer.ff(layer.norm2(expected))
    torch.testing.assert_close(out.view(5, -1, 16), expected, rtol=1e-12, atol=1e-12)
