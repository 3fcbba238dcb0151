"""The public face: ``run_study``, ``run_patching``, ``edges``, :class:`Experiment`, the results a
notebook uses (files, report, summary) and ``load_result``. Imports every layer below."""
