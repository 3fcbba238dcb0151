"""``logitscope.engine.nodes.NodeLayout``: the edge graph's index arithmetic in the engine layer.
Its indices are checked against each node's and edge's name (``EdgeGraph``'s, the library's), parsed
here and counted out by hand; ``EdgeGraph`` is a ``NodeLayout`` with the same indices."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from logitscope.engine.nodes import QKV, NodeLayout
from logitscope.results.edge_graph import EdgeGraph


def _forward_index(name: str, n_heads: int) -> int:
    """``input`` 0, then per layer the heads and the MLP, counted from the name."""
    if name == "input":
        return 0
    head = re.fullmatch(r"a(\d+)\.h(\d+)", name)
    if head:
        return 1 + int(head[1]) * (n_heads + 1) + int(head[2])
    return 1 + int(re.fullmatch(r"m(\d+)", name)[1]) * (n_heads + 1) + n_heads


def _backward_index(name: str, n_layers: int, n_heads: int) -> int:
    """Per layer each head's q, then k, then v inputs, then the MLP's; ``logits`` last."""
    if name == "logits":
        return n_layers * (3 * n_heads + 1)
    head = re.fullmatch(r"a(\d+)\.h(\d+)<([qkv])>", name)
    if head:
        return int(head[1]) * (3 * n_heads + 1) + "qkv".index(head[3]) * n_heads + int(head[2])
    return int(re.fullmatch(r"m(\d+)", name)[1]) * (3 * n_heads + 1) + 3 * n_heads


@pytest.mark.parametrize("parallel", [False, True])
def test_the_layout_s_indices_are_the_named_nodes_and_edges(parallel):
    layout, graph = NodeLayout(3, 2, parallel), EdgeGraph(3, 2, parallel)
    assert (layout.n_forward, layout.n_backward) == (1 + 3 * 3, 3 * 7 + 1)
    src, dst = layout.edge_index
    assert layout.n_edges == len(graph.edge_names) == len(src)
    for name, f, b in zip(graph.edge_names, src, dst):
        parent, child = name.split("->")
        assert (f, b) == (_forward_index(parent, 2), _backward_index(child, 3, 2)), name
    for layer in range(3):
        assert layout.head_index(layer, 1) == _forward_index(f"a{layer}.h1", 2)
        assert layout.mlp_index(layer) == _forward_index(f"m{layer}", 2)
        assert layout.qkv_index(layer, "v", 1) == _backward_index(f"a{layer}.h1<v>", 3, 2)
        assert layout.mlp_in_index(layer) == _backward_index(f"m{layer}", 3, 2)
        assert layout.mlp_prev(layer) == (layout.head_index(layer) if parallel else layout.mlp_index(layer))
    # real: exactly the edges, each a forward node feeding a later input
    by_hand = torch.zeros(layout.n_forward, layout.n_backward, dtype=torch.bool)
    by_hand[torch.as_tensor(src), torch.as_tensor(dst)] = True
    assert torch.equal(layout.real, by_hand) and torch.equal(graph.real, by_hand)
    assert int(layout.forward_to_backward.sum()) == 3 * (2 * len(QKV) + 1)
    v = torch.arange(layout.n_edges, dtype=torch.float64)
    assert torch.equal(layout.edge_vector(layout.matrix(v)), v)


def test_from_model_builds_the_class_it_is_called_on():
    lm = SimpleNamespace(shape=SimpleNamespace(n_layers=2, n_heads=4, d_model=8),
                         adapter=SimpleNamespace(parallel_attn_mlp=lambda config: True), model=SimpleNamespace(config=None))
    assert type(NodeLayout.from_model(lm)) is NodeLayout and type(EdgeGraph.from_model(lm)) is EdgeGraph
    assert EdgeGraph.from_model(lm) == EdgeGraph(2, 4, True, 8)
    assert isinstance(EdgeGraph(2, 4), NodeLayout)


def test_an_edge_engine_without_a_graph_still_holds_the_named_graph():
    """The runner reads only the layout (``NodeLayout.from_model``), but the engine's graph is the
    whole ``EdgeGraph``: the faithfulness curve and exact effects read its names and node counts."""
    import oracle
    from logitscope.methods.edges.attribute import EdgeData, EdgeEngine
    from logitscope.models import wrap_model

    lm = wrap_model(oracle.make_hf_model("gpt2", vocab_size=100), oracle.gpt2_tokenizer())
    eng = EdgeEngine(lm, EdgeData([[5, 6, 7]], [[5, 8, 9]], [1], [2]))
    assert type(eng.graph) is EdgeGraph and eng.graph == EdgeGraph.from_model(lm)
    assert eng.graph.n_scored_nodes == lm.shape.n_layers * (lm.shape.n_heads + 1)
