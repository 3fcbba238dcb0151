"""The graph and circuits from scores live in the results layer (:mod:`logitscope.results.edge_graph`);
this module keeps the old import path."""

from logitscope.results.edge_graph import QKV, EdgeGraph, greedy, nodes_of, prune_edges, top_n

__all__ = ["QKV", "EdgeGraph", "greedy", "nodes_of", "prune_edges", "top_n"]
