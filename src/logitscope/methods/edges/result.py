"""The result lives in the results layer (:mod:`logitscope.results.edges`); this module keeps the old
import path."""

from logitscope.results.edges import CircuitEval, Curve, EdgeResult

__all__ = ["CircuitEval", "Curve", "EdgeResult"]
