"""The prediction for a ``cnnbench train`` configuration: what ``train --batch-size auto``, the
``predicted_peak_mb`` of every run, ``cnnbench info`` and the study's fit check call.

``config`` is a resolved :class:`cnnbench.config.TrainConfig` and ``info`` its dataset's
:class:`~cnnbench.registry.DatasetInfo` (both from :func:`cnnbench.api.resolve`; ``info`` already
carries ``--image-size``); ``device`` the torch device the run trains on (``cpu`` / ``cuda``).
"""

from __future__ import annotations

from typing import Any

from cnnbench.memory.fits import BatchFit, largest_batch
from cnnbench.memory.predict import Prediction, predict


def options(config, info, device) -> dict[str, Any]:
    """The keyword arguments of :func:`~cnnbench.memory.predict.predict` that ``config`` implies."""
    o, r = config.optim, config.run
    return dict(num_classes=info.num_classes, model_options=dict(config.model.options), lr=o.lr, momentum=o.momentum,
                weight_decay=o.weight_decay, label_smoothing=o.label_smoothing, amp=r.amp,
                channels_last=r.channels_last, device=str(getattr(device, "type", device)), grad_accum=o.grad_accum)


def shape(info) -> tuple[int, int, int]:
    return (info.channels, info.height, info.width)


def predict_config(config, info, device, *, batch_size: int | None = None) -> Prediction:
    """The predicted memory of training ``config`` (at ``batch_size``, default its own)."""
    return predict(config.model.name, shape(info), batch_size or config.optim.batch_size, config.optim.optimizer,
                   **options(config, info, device))


def largest_batch_config(config, info, device, budget_mb: float, *, max_batch: int = 65536,
                         measure: bool = False) -> BatchFit:
    """The largest batch ``config`` trains with within ``budget_mb`` MiB (its optimizer and precision)."""
    return largest_batch(config.model.name, shape(info), budget_mb, config.optim.optimizer, max_batch=max_batch,
                         measure=measure, measure_device=str(getattr(device, "type", device)),
                         **options(config, info, device))
