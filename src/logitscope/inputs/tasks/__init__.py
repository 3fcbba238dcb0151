"""The field's classic circuit tasks as built-in prompt sets: ``--prompts greater-than:200`` etc.

:data:`TASKS` maps each name to its :class:`~logitscope.inputs.tasks.base.Task` (generator, standard
metric, counterpart, source). Every generator is seeded and deterministic, makes its prompts one at
a time, and gives each its standard counterpart (``Prompt.corrupted``) and ``meta["task"]`` /
``meta["metric"]``. Adding a task is one module with a ``TASK`` and one line below.
"""

from __future__ import annotations

from logitscope.inputs.tasks import docstring, factual, greater_than, induction, sva
from logitscope.inputs.tasks.base import METRICS, Task

__all__ = ["METRICS", "TASKS", "Task"]

TASKS: dict[str, Task] = {t.name: t for t in (
    greater_than.TASK,
    sva.TASK,
    induction.TASK,
    docstring.TASK,
    factual.TASK,
)}
