"""The package's version, in the lowest layer so that every layer may name it (results.json records it)."""

__version__ = "0.1.0"
