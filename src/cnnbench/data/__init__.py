"""Datasets: the in-memory bundle, splits, the on-device loader and the built-in dataset plugins."""
