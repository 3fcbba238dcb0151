"""The public face: ``run_study``, ``run_patching``, ``edges``, :class:`Experiment`, the results a
notebook uses (files, report, summary; each causal method's own type in ``method_results``) and
``load_result``. Imports every layer below."""
