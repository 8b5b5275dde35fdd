"""cnnbench: MLflow-tracked training, tuning and comparison of convolutional image classifiers."""

__version__ = "0.1.0"
