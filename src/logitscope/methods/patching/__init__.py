"""TransformerLens's activation-patching grids: their definitions (``grids``) and the batched
patched runs that fill them (``run``)."""
