"""Recorded and patched suffix runs: the modes :meth:`~logitscope.engine.core.Engine.record` and
:meth:`~logitscope.engine.core.Engine.patched` of the one engine (:mod:`logitscope.engine.core`),
under the name its callers have always imported. ``Engine`` here is that same class."""

from logitscope.engine.core import Engine, Run

__all__ = ["Engine", "Run"]
