"""Shipping a model: the `export`, `predict` and `verify` commands and temperature calibration."""
