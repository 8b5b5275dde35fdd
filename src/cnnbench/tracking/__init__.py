"""Trackers and console progress: the only package (with tune/) that imports MLflow."""
