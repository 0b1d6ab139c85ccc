"""Shipping a model: the `export` and `predict` commands, a run as a model, each export format."""
