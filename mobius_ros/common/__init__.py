"""Pieces that the model, export and runtime layers all need: errors, tensor specs, tokenizers.

This layer imports nothing else of the package (numpy only), so `export` and `runtime` can both
depend on it without depending on each other.
"""
