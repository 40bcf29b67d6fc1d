"""DictionaryLookup (GATv2 paper): dynamic attention fits it, static attention cannot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

# Loaded from its file: putting examples/ on sys.path would make examples/ogb shadow `ogb`.
_path = Path(__file__).resolve().parents[1] / "examples" / "dictionary_lookup.py"
_spec = importlib.util.spec_from_file_location("dictionary_lookup", _path)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
bipartite_edges, make_dictionary_lookup, train = (
    _module.bipartite_edges,
    _module.make_dictionary_lookup,
    _module.train,
)


def test_dataset_layout():
    keys, values, targets = make_dictionary_lookup(4, num_graphs=100)
    assert keys.shape == values.shape == (24, 8) and targets.shape == (24, 4)
    assert bool((values[:, :4] == 4).all())  # queries hold the empty value
    assert torch.equal(values[:, 4:], targets)  # key-value node i holds perm[i]
    assert len({tuple(t.tolist()) for t in targets}) == 24  # all 4! permutations
    edges = bipartite_edges(4, 2)
    assert edges.shape == (2, 32)
    assert bool((edges[0] % 8 >= 4).all()) and bool((edges[1] % 8 < 4).all())
    assert bool(((edges[0] // 8) == (edges[1] // 8)).all())  # within each graph


def test_gatv2_fits_what_gat_cannot_small():
    torch.set_num_threads(1)
    dynamic = train("gatv2", k=6, epochs=20, batch_size=32, lr=3e-3, progress=False)
    static = train("gat", k=6, epochs=15, batch_size=32, lr=3e-3, progress=False)
    assert dynamic["train_accuracy"] == 1.0
    assert static["train_accuracy"] < 0.5


@pytest.mark.slow
def test_gatv2_fits_what_gat_cannot_k10():
    """The paper's setting: k = 10, 32,000 random permutations, one head, Adam 1e-3."""
    dynamic = train("gatv2", k=10, epochs=60, batch_size=128, lr=1e-3, progress=False)
    static = train("gat", k=10, epochs=10, batch_size=128, lr=1e-3, progress=False)
    assert dynamic["train_accuracy"] == 1.0
    assert static["train_accuracy"] < 0.5
