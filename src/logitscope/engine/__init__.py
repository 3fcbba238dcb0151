"""The one place a model runs: observed passes for the study (``capture``), patched suffix runs
(``patched``), the set-up of a run (``setup``: model placement, batch sizes, progress) and
data parallelism over ranks (``distributed``)."""
