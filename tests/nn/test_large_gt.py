"""LargeGT and LargeGTLoader against brute force and dense float64 re-implementations."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Data

from gtlib.loader.large_gt_loader import LargeGTLoader, build_csr, sample_tokens
from gtlib.nn.large_gt import LargeGT


# ---------------------------------------------------------------------- fixtures and references
def small_graph(seed: int = 0, num_nodes: int = 40, num_edges: int = 70, isolated: int = 5):
    """Random directed graph with duplicates, self-loops and the last nodes isolated."""
    gen = torch.Generator().manual_seed(seed)
    reach = num_nodes - isolated
    edge_index = torch.randint(0, reach, (2, num_edges), generator=gen)
    edge_index = torch.cat([edge_index, torch.tensor([[3, 3], [3, 3]])], dim=1)  # dup self-loop
    x = torch.randn(num_nodes, 5, generator=gen)
    return Data(x=x, edge_index=edge_index, y=torch.arange(num_nodes) % 3)


def dense_adjacency(edge_index, num_nodes):
    """A[i, j] = 1 when j -> i (j is a neighbour of receiver i)."""
    adj = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    adj[edge_index[1], edge_index[0]] = 1.0
    return adj


def brute_candidates(adj, i):
    """Reference candidate list: row i of A, then the non-zero columns of row i of A @ A."""
    hop1 = adj[i].nonzero().flatten().tolist()
    hop2 = (adj @ adj)[i].nonzero().flatten().tolist()
    return hop1 + hop2


def dense_hops(adj, x):
    """X, ÂX, Â²X with Â = D^-1/2 (A + I) D^-1/2 in float64 (self-loops of A counted once)."""
    a_hat = adj.clone()
    a_hat.fill_diagonal_(1.0)
    inv_sqrt = a_hat.sum(1).rsqrt()
    a_hat = inv_sqrt[:, None] * a_hat * inv_sqrt[None, :]
    x = x.double()
    return torch.stack([x, a_hat @ x, a_hat @ a_hat @ x], dim=1)


def planted_partition(seed: int, num_nodes: int, num_classes: int, degree: int = 5):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (num_nodes,), generator=gen)
    src = torch.randint(0, num_nodes, (num_nodes * degree,), generator=gen)
    dst = torch.randint(0, num_nodes, (num_nodes * degree,), generator=gen)
    intra = torch.rand(src.numel(), generator=gen) < 0.8
    for c in range(num_classes):
        members = (y == c).nonzero().flatten()
        pick = intra & (y[src] == c)
        dst[pick] = members[torch.randint(0, members.numel(), (int(pick.sum()),), generator=gen)]
    edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
    noisy = F.one_hot(y, num_classes).double() + 1.5 * torch.randn(
        num_nodes, num_classes, generator=gen, dtype=torch.float64
    )
    x = torch.cat([noisy, torch.randn(num_nodes, 4, generator=gen, dtype=torch.float64)], 1)
    return Data(x=x.float(), edge_index=edge_index, y=y)


def make_batch(num_seqs=5, num_tokens=3, channels=4, num_nodes=20, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return Data(
        tokens=torch.randn(num_seqs, 3 * num_tokens, channels, generator=gen, dtype=dtype),
        x=torch.randn(num_seqs, channels, generator=gen, dtype=dtype),
        n_id=torch.randperm(num_nodes, generator=gen)[:num_seqs],
    )


def seq_mlp(layers, x):
    """Linear-ReLU-(Dropout)-Linear in eval mode."""
    return layers[3](torch.relu(layers[0](x)))


def reference_local(model: LargeGT, tokens):
    """Dense float64 re-implementation of the local module with explicit per-sequence softmax."""
    num_seqs, seq_len, _ = tokens.shape
    heads, hidden = model.heads, model.hidden_channels
    dim = hidden // heads
    z = model.token_embed(seq_mlp(model.seq_encoder, tokens))  # [B, T, h]
    y = F.layer_norm(z, (hidden,), model.attn_norm.weight, model.attn_norm.bias)
    q = (y @ model.lin_query.weight.T + model.lin_query.bias).view(num_seqs, seq_len, heads, dim)
    k = (y @ model.lin_key.weight.T + model.lin_key.bias).view(num_seqs, seq_len, heads, dim)
    v = (y @ model.lin_value.weight.T + model.lin_value.bias).view(num_seqs, seq_len, heads, dim)
    scores = torch.einsum("bihc,bjhc->bhij", q, k) / math.sqrt(dim)
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    attended = torch.einsum("bhij,bjhc->bihc", weights, v).reshape(num_seqs, seq_len, hidden)
    z = z + model.lin_out(attended)
    w1, w2 = model.ffn[0], model.ffn[2]
    hidden_ffn = F.layer_norm(z, (hidden,), model.ffn_norm.weight, model.ffn_norm.bias)
    hidden_ffn = w1(hidden_ffn)
    gelu = 0.5 * hidden_ffn * (1.0 + torch.erf(hidden_ffn / math.sqrt(2.0)))
    z = z + w2(gelu)
    out = F.layer_norm(z, (hidden,), model.final_norm.weight, model.final_norm.bias)
    results = []
    for b in range(num_seqs):
        seed = out[b, 0]
        logits = torch.stack(
            [model.readout(torch.cat([seed, out[b, t]])).squeeze() for t in range(1, seq_len)]
        )
        beta = torch.exp(logits - logits.max())
        beta = beta / beta.sum()
        results.append(seed + (beta[:, None] * out[b, 1:]).sum(0))
    return torch.stack(results)


def reference_global(model: LargeGT, x, pos_enc=None):
    """Dense float64 centroid attention: every centroid, log-count bias, -inf for empty ones."""
    heads, hidden = model.heads, model.hidden_channels
    dim = hidden // heads
    encoder = model.node_encoder
    h = encoder[0](x)
    bn = encoder[1]
    h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    h = encoder[4](torch.relu(h))
    q_in = model.lin_proj_g(h)
    if pos_enc is not None:
        q_in = torch.cat([q_in, pos_enc], 1)
    mu = model.codebook_output
    counts = torch.zeros(model.num_centroids, dtype=torch.float64)
    for c in model.node_centroid.tolist():
        counts[c] += 1
    q = model.lin_query_g(q_in).view(-1, heads, dim)
    k = model.lin_key_g(mu).view(-1, heads, dim)
    v = model.lin_value_g(mu[:, : model.global_dim]).view(-1, heads, dim)
    scores = torch.einsum("ihc,jhc->hij", q, k) / math.sqrt(dim) + torch.log(counts)
    weights = torch.softmax(scores, dim=-1)  # log(0) = -inf gives empty centroids weight 0
    return torch.einsum("hij,jhc->ihc", weights, v).reshape(-1, hidden)


def head_eval(model: LargeGT, h):
    layers = model.head

    def bn(layer, t):
        return (t - layer.running_mean) / torch.sqrt(layer.running_var + layer.eps) * (
            layer.weight
        ) + layer.bias

    h = torch.relu(bn(layers[1], layers[0](h)))
    h = torch.relu(bn(layers[5], layers[4](h)))
    return layers[8](h)


def randomise_norms(model: LargeGT, seed: int = 0):
    """Non-trivial LayerNorm/BatchNorm parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm1d)):
                if module.weight is not None:
                    module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=gen))
                    module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=gen))
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.copy_(
                    0.5 * torch.randn(module.running_mean.shape, generator=gen)
                )
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))


# ---------------------------------------------------------------------- sampler
@pytest.mark.parametrize("max_paths", [1024, 3])
def test_sampler_matches_brute_force_candidates(max_paths):
    data = small_graph()
    n = data.num_nodes
    adj = dense_adjacency(data.edge_index, n)
    rowptr, col = build_csr(data.edge_index, n)
    seeds = torch.arange(n)
    gen = torch.Generator().manual_seed(1)
    for num_tokens in (1, 3, 9):
        ids = sample_tokens(rowptr, col, seeds, num_tokens, max_paths, generator=gen)
        assert ids.shape == (n, num_tokens)
        assert torch.equal(ids[:, 0], seeds)  # seed first
        for i in range(n):
            candidates = brute_candidates(adj, i)
            sampled = ids[i, 1:].tolist()
            if not candidates:  # isolated: random nodes of the graph
                assert all(0 <= u < n for u in sampled)
                continue
            assert set(sampled) <= set(candidates)  # only true 1-/2-hop neighbours
            if max_paths >= 1024 and len(candidates) >= num_tokens - 1:
                # without replacement: a node appears at most as often as in the multiset
                for u in set(sampled):
                    assert sampled.count(u) <= candidates.count(u)
            elif max_paths >= 1024:
                # fewer candidates: the list repeated and cut
                expected = (candidates * num_tokens)[: num_tokens - 1]
                assert sampled == expected
    assert (ids[n - 5 :, 1:] != ids[n - 5 :, :1]).any()  # isolated seeds got random nodes


def test_sampler_is_uniform_without_replacement():
    # node 0 has neighbours 1..6 and 2-hop set {0, 7, 8} (+ 1..6 again via a ring): 6 + 9 = 15
    senders = list(range(1, 7)) + [7, 8] + list(range(1, 7))
    receivers = [0] * 6 + [1, 2] + [2, 3, 4, 5, 6, 1]
    edge_index = torch.tensor([senders, receivers])
    n = 9
    adj = dense_adjacency(edge_index, n)
    candidates = brute_candidates(adj, 0)
    rowptr, col = build_csr(edge_index, n)
    trials, num_tokens = 3000, 6
    gen = torch.Generator().manual_seed(0)
    ids = sample_tokens(rowptr, col, torch.zeros(trials, dtype=torch.long), num_tokens, 1024, gen)
    counts = torch.bincount(ids[:, 1:].flatten(), minlength=n).double()
    expected = torch.tensor([candidates.count(u) for u in range(n)], dtype=torch.float64)
    expected = expected / len(candidates) * trials * (num_tokens - 1)
    # binomial standard deviation is below sqrt(expected); allow 5 of them
    assert torch.all((counts - expected).abs() <= 5 * expected.sqrt() + 1e-9)
    for row in ids[:200, 1:].tolist():  # multiset never exceeded
        assert all(row.count(u) <= candidates.count(u) for u in set(row))


def test_hop_features_equal_dense_powers():
    data = small_graph(seed=3)
    n = data.num_nodes
    for chunk_size in (7, 65536):
        prepared = LargeGTLoader.preprocess(data, chunk_size=chunk_size)
        expected = dense_hops(dense_adjacency(data.edge_index, n), data.x)
        assert prepared.hop_x.dtype == torch.float32 and prepared.hop_x.shape == (n, 3, 5)
        torch.testing.assert_close(prepared.hop_x.double(), expected, atol=1e-5, rtol=1e-5)


def test_loader_batches_gather_the_right_tokens():
    data = small_graph(seed=2)
    train = torch.arange(0, 40, 3)
    loader = LargeGTLoader(data, train, num_tokens=4, batch_size=5, shuffle=True)
    hop_x = loader.data.hop_x
    seen = []
    for batch in loader:
        seen.append(batch.n_id)
        b = batch.batch_size
        assert batch.tokens.shape == (b, 12, 5) and batch.token_ids.shape == (b, 4)
        for hop in range(3):
            torch.testing.assert_close(batch.tokens[:, hop::3], hop_x[batch.token_ids, hop])
        torch.testing.assert_close(batch.x, data.x[batch.n_id])
        assert torch.equal(batch.y, data.y[batch.n_id])
    assert torch.equal(torch.sort(torch.cat(seen)).values, train)


def test_loader_with_two_workers():
    data = small_graph(seed=4)
    prepared = LargeGTLoader.preprocess(data)
    adj = dense_adjacency(data.edge_index, data.num_nodes)
    loader = LargeGTLoader(prepared, num_tokens=5, batch_size=8, num_workers=2)
    seeds = []
    for batch in loader:
        seeds.append(batch.n_id)
        for i, row in zip(batch.n_id.tolist(), batch.token_ids.tolist()):
            candidates = brute_candidates(adj, i)
            assert row[0] == i and (not candidates or set(row[1:]) <= set(candidates))
        torch.testing.assert_close(batch.tokens[:, 1::3], prepared.hop_x[batch.token_ids, 1])
    assert torch.equal(torch.cat(seeds), torch.arange(data.num_nodes))


def test_loader_rejects_bad_input():
    data = small_graph()
    with pytest.raises(ValueError, match="input_nodes"):
        LargeGTLoader(data, torch.tensor([0, 99]))
    with pytest.raises(TypeError, match="input_nodes"):
        LargeGTLoader(data, [0, 1])
    with pytest.raises(ValueError, match="num_tokens"):
        LargeGTLoader(data, num_tokens=0)
    with pytest.raises(ValueError, match="edge_index"):
        LargeGTLoader(Data(x=data.x, edge_index=torch.tensor([[0], [99]])))
    with pytest.raises(TypeError, match="data.x"):
        LargeGTLoader(Data(x=data.x.long(), edge_index=data.edge_index))
    with pytest.raises(TypeError, match="collate_fn"):
        LargeGTLoader(data, collate_fn=list)


# ---------------------------------------------------------------------- model
def test_local_module_matches_dense_reference():
    torch.manual_seed(0)
    model = LargeGT(4, 6, 3, num_tokens=3, mode="local", heads=2, local_chunk_size=2)
    model = model.double().eval()
    randomise_norms(model)
    batch = make_batch(num_seqs=5)
    with torch.no_grad():
        local = model.local_forward(batch.tokens)
        expected = reference_local(model, batch.tokens)
        torch.testing.assert_close(local, expected, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(model(batch), head_eval(model, expected), atol=1e-10, rtol=0)


def test_global_module_matches_dense_reference():
    torch.manual_seed(0)
    model = LargeGT(4, 6, 3, num_tokens=3, num_nodes=20, mode="global", num_centroids=7,
                    global_dim=3, pos_channels=2)  # fmt: skip
    model = model.double().eval()
    randomise_norms(model)
    with torch.no_grad():
        model.codebook_output.normal_()
        model.node_centroid.copy_(torch.tensor([0, 1, 1, 2, 2, 2, 4, 4, 4, 4] * 2))  # 3, 5, 6 empty
    batch = make_batch(num_seqs=5)
    batch.pos_enc = torch.randn(5, 2, dtype=torch.float64)
    with torch.no_grad():
        out = model.global_forward(batch.x, batch.n_id, batch.pos_enc)
        expected = reference_global(model, batch.x, batch.pos_enc)
        torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(model(batch), head_eval(model, expected), atol=1e-10, rtol=0)


def test_codebook_ema_update_equals_hand_computation():
    torch.manual_seed(0)
    model = LargeGT(4, 6, 3, num_tokens=3, num_nodes=20, mode="global", num_centroids=5,
                    global_dim=3, dropout=0.0)  # fmt: skip
    model = model.double()
    batch = make_batch(num_seqs=8)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(batch)
    for name, value in model.state_dict().items():  # eval mode changes nothing
        assert torch.equal(value, before[name]), name

    # the codebook's input in training mode (node_encoder BN uses batch statistics)
    model.train()
    with torch.no_grad():
        h = model.node_encoder[0](batch.x)
        h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)
        h = h * model.node_encoder[1].weight + model.node_encoder[1].bias
        q_in = model.lin_proj_g(model.node_encoder[4](torch.relu(h)))
        model(batch)

    # by hand, one centroid and one node at a time
    z = (q_in - q_in.mean(0)) / torch.sqrt(q_in.var(0, unbiased=False) + 1e-5)
    running_mean = 0.9 * before["codebook_norm.running_mean"] + 0.1 * q_in.mean(0)
    running_var = 0.9 * before["codebook_norm.running_var"] + 0.1 * q_in.var(0, unbiased=True)
    old = before["codebook"]
    assign = [min(range(5), key=lambda c: float(((z[i] - old[c]) ** 2).sum())) for i in range(8)]
    size = [0.99 * float(before["ema_cluster_size"][c]) + 0.01 * assign.count(c) for c in range(5)]
    total = sum(size)
    size = [(s + 1e-5) / (total + 5 * 1e-5) * total for s in size]
    ema_sum = before["ema_sum"].clone()
    for c in range(5):
        members = [z[i] for i in range(8) if assign[i] == c]
        added = torch.stack(members).sum(0) if members else torch.zeros(3, dtype=z.dtype)
        ema_sum[c] = 0.99 * ema_sum[c] + 0.01 * added
    centroids = ema_sum / torch.tensor(size, dtype=z.dtype)[:, None]
    output = centroids * torch.sqrt(running_var + 1e-5) + running_mean
    expected_assignment = before["node_centroid"].clone()
    expected_assignment[batch.n_id] = torch.tensor(assign)

    state = model.state_dict()
    torch.testing.assert_close(state["codebook_norm.running_mean"], running_mean)
    torch.testing.assert_close(state["codebook_norm.running_var"], running_var)
    torch.testing.assert_close(state["ema_cluster_size"], torch.tensor(size, dtype=z.dtype))
    torch.testing.assert_close(state["ema_sum"], ema_sum)
    torch.testing.assert_close(state["codebook"], centroids)
    torch.testing.assert_close(state["codebook_output"], output)
    assert torch.equal(state["node_centroid"], expected_assignment)
    assert len(set(assign)) > 1  # the check exercises several clusters


def test_modes_select_branches():
    torch.manual_seed(0)
    batch = make_batch(num_seqs=4, dtype=torch.float32)
    other = make_batch(num_seqs=4, seed=1, dtype=torch.float32)
    models = {
        mode: LargeGT(4, 8, 3, num_tokens=3, num_nodes=20, mode=mode, num_centroids=6).eval()
        for mode in ("local", "global", "full")
    }
    assert models["full"].head[0].in_features == 16
    assert models["local"].head[0].in_features == 8 == models["global"].head[0].in_features
    assert not hasattr(models["local"], "codebook") and not hasattr(models["global"], "lin_query")
    with torch.no_grad():
        for mode, model in models.items():
            out = model(batch)
            assert out.shape == (4, 3)
            swap_tokens = Data(tokens=other.tokens, x=batch.x, n_id=batch.n_id)
            swap_x = Data(tokens=batch.tokens, x=other.x, n_id=batch.n_id)
            assert torch.equal(model(swap_tokens), out) == (mode == "global")
            assert torch.equal(model(swap_x), out) == (mode == "local")
        # global mode runs without tokens, local without x
        models["global"](Data(x=batch.x, n_id=batch.n_id))
        models["local"](Data(tokens=batch.tokens))


def test_model_rejects_bad_input():
    with pytest.raises(ValueError, match="mode"):
        LargeGT(4, 8, 3, num_tokens=3, num_nodes=10, mode="both")
    with pytest.raises(ValueError, match="num_nodes"):
        LargeGT(4, 8, 3, num_tokens=3, mode="full")
    with pytest.raises(ValueError, match="a multiple of heads"):
        LargeGT(4, 9, 3, num_tokens=3, mode="local", heads=2)
    with pytest.warns(FutureWarning, match="num_heads is deprecated, use heads"):
        assert LargeGT(4, 8, 3, num_tokens=3, mode="local", num_heads=4).heads == 4
    with pytest.raises(ValueError, match="num_tokens"):
        LargeGT(4, 8, 3, num_tokens=0, mode="local")
    model = LargeGT(4, 8, 3, num_tokens=3, num_nodes=20, num_centroids=6)
    batch = make_batch(num_seqs=4, dtype=torch.float32)
    with pytest.raises(ValueError, match="batch.tokens"):
        model(Data(tokens=batch.tokens[:, :5], x=batch.x, n_id=batch.n_id))
    with pytest.raises(ValueError, match="batch.n_id"):
        model(Data(tokens=batch.tokens, x=batch.x, n_id=batch.n_id + 100))
    with pytest.raises(TypeError, match="batch"):
        model(batch.tokens)
    assert repr(model) == ("LargeGT(4, 8, 3, num_tokens=3, mode='full', heads=2, num_centroids=6)")


def test_training_on_planted_partition_beats_chance():
    torch.manual_seed(0)
    data = planted_partition(seed=0, num_nodes=2000, num_classes=4)
    prepared = LargeGTLoader.preprocess(data)
    perm = torch.randperm(2000)
    train, test = perm[:1000], perm[1000:]
    model = LargeGT(8, 32, 4, num_tokens=8, num_nodes=2000, num_centroids=32, global_dim=16,
                    dropout=0.1)  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = LargeGTLoader(prepared, train, num_tokens=8, batch_size=128, shuffle=True)
    start = time.perf_counter()
    assignments = model.node_centroid.clone()
    for _ in range(4):
        model.train()
        for batch in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(batch), batch.y).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        batch = next(iter(LargeGTLoader(prepared, test, num_tokens=8, batch_size=1000)))
        accuracy = (model(batch).argmax(-1) == batch.y).float().mean().item()
    features_only = (data.x[test, :4].argmax(-1) == data.y[test]).float().mean().item()
    assert accuracy > 0.8 and accuracy > features_only + 0.2, (accuracy, features_only)
    assert not torch.equal(model.node_centroid[train], assignments[train])  # buffer was updated
    assert torch.equal(model.node_centroid[test], assignments[test])
    assert time.perf_counter() - start < 60


@pytest.mark.slow
def test_sampler_scales_to_100k_nodes():
    gen = torch.Generator().manual_seed(0)
    n, e = 100_000, 1_000_000
    data = Data(x=torch.randn(n, 16, generator=gen), edge_index=torch.randint(0, n, (2, e)))
    start = time.perf_counter()
    loader = LargeGTLoader(data, num_tokens=100, batch_size=1024, shuffle=True)
    batch = next(iter(loader))
    assert batch.tokens.shape == (1024, 300, 16)
    assert time.perf_counter() - start < 60
