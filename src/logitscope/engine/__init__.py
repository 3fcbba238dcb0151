"""The one place a model runs: ``core.Engine`` and its modes (the study's observed passes from
``capture`` and ``parts``, recorded and patched suffix runs, gradient runs, the edge runner of
``split_qkv``), its readout (``readout``), the set-up of a run (``setup``: model placement, batch
sizes, progress) and data parallelism over ranks (``distributed``)."""
