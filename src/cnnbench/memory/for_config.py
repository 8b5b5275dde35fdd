"""The prediction for a ``cnnbench train`` configuration: what ``train --batch-size auto``, the
``predicted_peak_mb`` of every run, ``cnnbench info`` and the study's fit check call.

``config`` is a resolved :class:`cnnbench.config.TrainConfig` and ``info`` its dataset's
:class:`~cnnbench.registry.DatasetInfo` (both from :func:`cnnbench.api.resolve`; ``info`` already
carries ``--image-size``); ``device`` the torch device the run trains on (``cpu`` / ``cuda``).
"""

from __future__ import annotations

from typing import Any

from cnnbench.errors import ConfigError
from cnnbench.memory.fits import BatchFit, largest_batch
from cnnbench.engine.precision import channels_last_for
from cnnbench.memory.predict import Prediction, predict
from cnnbench.memory.step import MB

DEFAULT_BUDGET_SHARE = 0.9  # of the free CUDA memory: the caching allocator's slack and cuDNN need the rest


def options(config, info, device) -> dict[str, Any]:
    """The keyword arguments of :func:`~cnnbench.memory.predict.predict` that ``config`` implies."""
    o, r = config.optim, config.run
    return dict(num_classes=info.num_classes, model_options=dict(config.model.options), lr=o.lr, momentum=o.momentum,
                weight_decay=o.weight_decay, label_smoothing=o.label_smoothing, amp=r.amp,
                channels_last=channels_last_for(r.channels_last, str(getattr(device, "type", device)), config.model.name),
                device=str(getattr(device, "type", device)), grad_accum=o.grad_accum)


def shape(info) -> tuple[int, int, int]:
    return (info.channels, info.height, info.width)


_PREDICTIONS: dict[str, Prediction] = {}  # per process: a study's seeds and a tune's repeats cost one prediction


def predict_config(config, info, device, *, batch_size: int | None = None) -> Prediction:
    """The predicted memory of training ``config`` (at ``batch_size``, default its own); cached per
    process on everything the prediction depends on (a study's seeds of one cell share it)."""
    batch = batch_size or config.optim.batch_size
    kwargs = options(config, info, device)
    key = repr((config.model.name, shape(info), batch, config.optim.optimizer, sorted(kwargs.items(), key=str)))
    if key not in _PREDICTIONS:
        _PREDICTIONS[key] = predict(config.model.name, shape(info), batch, config.optim.optimizer, **kwargs)
    return _PREDICTIONS[key]


def largest_batch_config(config, info, device, budget_mb: float, *, max_batch: int = 65536,
                         measure: bool = False) -> BatchFit:
    """The largest batch ``config`` trains with within ``budget_mb`` MiB (its optimizer and precision)."""
    return largest_batch(config.model.name, shape(info), budget_mb, config.optim.optimizer, max_batch=max_batch,
                         measure=measure, measure_device=str(getattr(device, "type", device)), budget_flag="--memory-budget",
                         **options(config, info, device))


def default_budget_mb(device) -> float:
    """The budget --batch-size auto uses without --memory-budget: 90% of the free memory of the CUDA
    device; elsewhere there is no device memory to size against (ConfigError)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return round(DEFAULT_BUDGET_SHARE * free / MB, 1)
    raise ConfigError(f"--batch-size auto needs --memory-budget MB when training on {getattr(device, 'type', device)} "
                      f"(only a CUDA device has a memory size to fit); e.g. --memory-budget 4000")


def cell_fits(config, info, device, budget_mb: float | None = None) -> tuple[bool, float, float | None, str]:
    """For a study cell: (fits, predicted peak MiB, budget MiB, reason when it does not fit). The
    budget is ``budget_mb`` (a study's --memory-budget), else the cell's own --memory-budget, else
    the CUDA device's total memory; on CPU without a budget every cell fits."""
    import torch

    pred = predict_config(config, info, device).peak_mb
    budget = budget_mb if budget_mb is not None else config.optim.memory_budget
    dev_type = getattr(device, "type", str(device))
    if budget is None and dev_type == "cuda" and torch.cuda.is_available():
        budget = torch.cuda.get_device_properties(device).total_memory / MB
    if budget is None or pred <= budget:
        return True, pred, budget, ""
    return False, pred, budget, (f"predicted to need {pred:.1f} MiB (allocator peak, cnnbench memory) but the "
                                 f"budget is {budget:.0f} MiB; not launched")


LARGE_INPUT = 3 * 512 * 512  # values per image above which train predicts its model check before running it


def resized_splits(config, info) -> tuple[int, int, int]:
    """Images of the train, validation and test splits :func:`cnnbench.data.pipeline.prepare` resizes
    (test carved from train with --test-from-train, validation held out of train, then --train-size)."""
    import math

    train, test = info.train_size or 0, info.test_size or 0
    if config.data.test_from_train is not None:
        test = math.ceil(train * config.data.test_from_train)
        train -= test
    val = round(train * config.data.val_split)
    train -= val
    if config.data.train_size:
        train = min(train, config.data.train_size)
    return train, val, test


def check_train_memory(config, info) -> None:
    """``cnnbench train``: refuse, before the model is built or any data is loaded, a run whose host
    memory cannot hold what it allocates: the splits resized by ``--image-size`` (:func:`resized_splits`;
    uint8, the largest twice while its chunks are joined, plus its float32 chunk of up to 2,048 images) beside, for
    inputs above :data:`LARGE_INPUT` values, the model built for real and checked on one image or (on
    the CPU) the training step at the batch size, both predicted on fake tensors. No flag skips it:
    an allocation above the available memory fails (or is OOM-killed) anyway."""
    import torch

    from cnnbench.memory import guard

    c, h, w = shape(info)
    per_image = guard.check_elements(f"--image-size {config.data.image_size}" if config.data.image_size else "the input",
                                     c, h, w)
    what, needed = [], 0
    if config.data.image_size is not None and info.train_size:
        splits = resized_splits(config, info)
        largest = max(splits)
        needed += per_image * (sum(splits) + largest + 4 * min(largest, 2048))
        what.append(f"{sum(splits):,} images resized to {c}x{h}x{w}")
    if per_image > LARGE_INPUT:
        on_cpu = config.run.device == "cpu" or (config.run.device == "auto" and not torch.cuda.is_available())
        kwargs = {**options(config, info, "cpu"), "device": "cpu"}
        try:
            model = guard.dry_prediction(config.model.name, (c, h, w), 1, config.optim.optimizer, **kwargs)[0].eval_peak_mb
        except ConfigError:  # e.g. BatchNorm on one value per channel: the real check says so in its own words
            model = 0.0
        batch = config.optim.batch_size
        step = 0.0
        if on_cpu and isinstance(batch, int):
            batch = min(batch, info.train_size or batch)
            step = guard.dry_prediction(config.model.name, (c, h, w), batch, config.optim.optimizer, **kwargs)[0].peak_mb
        needed += int(max(model, step) * MB)
        what.append(f"a training step at batch {batch}" if step > model else
                    f"the model checked on one {c}x{h}x{w} image")
    if what:
        flag = "--image-size" if config.data.image_size is not None else "--batch-size"
        try:
            guard.check_fits(needed, "cpu", f"training {config.model.name} ({' and '.join(what)})", None)
        except ConfigError as err:
            raise ConfigError(f"{err}; use a smaller {flag}") from None
