"""Training memory: predicted on fake tensors before running, measured by running, and the batch that fits.

``predict(model, input_shape, batch_size, optimizer)`` -> :class:`Prediction` (no data, no device);
``measure(...)`` -> :class:`Measurement` (the same step really run on CPU or CUDA);
``largest_batch(..., budget_mb=...)`` -> :class:`BatchFit`. Sizes are MiB (2**20 bytes).
"""

from cnnbench.memory.fits import BatchFit, largest_batch
from cnnbench.memory.measure import Measurement, measure
from cnnbench.memory.predict import Prediction, predict

__all__ = ["BatchFit", "Measurement", "Prediction", "largest_batch", "measure", "predict"]
