"""One module (or package) per method, siblings over the engine: ``dla`` (the study), ``patching``
(grids), ``ablation``, ``attribution`` (attribution patching), ``paths``, ``circuits``, ``edges``,
``hooks`` (activations and interventions by TransformerLens hook name)."""
