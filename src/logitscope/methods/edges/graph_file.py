"""``graph.json`` lives in the results layer (:mod:`logitscope.results.graph_json`); this module keeps
the old import path."""

from logitscope.results.graph_json import graph_dict, read_graph_json, write_graph_json

__all__ = ["graph_dict", "read_graph_json", "write_graph_json"]
