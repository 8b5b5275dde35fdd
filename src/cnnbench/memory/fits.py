"""The largest batch size whose training step fits a memory budget, per optimizer.

:func:`largest_batch` searches the prediction (peak memory grows with the batch): doubling from 1
until a batch no longer fits, then bisection between the last that fitted and the first that did
not; about 2 log2(B) predictions. With ``measure=True`` the answer is then run for real
(:func:`cnnbench.memory.measure.measure`) and, while the measured peak exceeds the budget, the batch
is scaled down by budget / measured and measured again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from cnnbench.errors import ConfigError, ModelInputError
from cnnbench.memory.predict import Prediction, check_batch_size, check_optimizer, predict

DEFAULT_MAX_BATCH = 65536
MAX_MEASURE_TRIES = 6
GROWTH = 4  # bracket search: 1, 4, 16, 64, ...


@dataclass
class BatchFit:
    """``batch_size``: the largest batch whose predicted (and, if measured, measured) peak is within
    ``budget_mb``; 0 when not even batch 1 fits (``note`` says what batch 1 needs). ``capped``: the
    search stopped at ``max_batch`` without reaching the budget."""

    optimizer: str
    budget_mb: float
    batch_size: int
    predicted_peak_mb: float | None
    measured_peak_mb: float | None = None
    capped: bool = False
    probes: dict[int, float] = field(default_factory=dict)  # batch size -> predicted peak MB
    measured: dict[int, float] = field(default_factory=dict)  # batch size -> measured peak MB
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["probes"] = {str(k): v for k, v in self.probes.items()}
        out["measured"] = {str(k): v for k, v in self.measured.items()}
        return out


def check_budget(budget_mb: float, first: Prediction, what: str = "--budget-mb") -> None:
    """A budget below the weights alone is bad input; the message gives the minimum."""
    if not budget_mb > 0:
        raise ConfigError(f"{what} must be a positive number of MiB; got {budget_mb!r}")
    if budget_mb < first.weights_mb:
        raise ConfigError(
            f"{what} {budget_mb:g} is smaller than the weights of {first.model} alone ({first.weights_mb:.1f} MiB); "
            f"the smallest training step (batch {first.batch_size}, {first.optimizer}) needs {first.peak_mb:.1f} MiB")


def smallest_step(predictor: Callable[..., Prediction], model, input_shape, optimizer: str, **options: Any) -> Prediction:
    """The prediction of the smallest batch that trains: 1, or 2 for models that cannot train on one
    image (BatchNorm over a single value per channel)."""
    try:
        return predictor(model, input_shape, 1, optimizer, **options)
    except ModelInputError:
        return predictor(model, input_shape, 2, optimizer, **options)


def largest_batch(model, input_shape: tuple[int, int, int], budget_mb: float, optimizer: str = "adam", *,
                  max_batch: int = DEFAULT_MAX_BATCH, measure: bool = False, measure_device: str = "cpu",
                  predictor: Callable[..., Prediction] = predict, budget_flag: str = "--budget-mb",
                  **options: Any) -> BatchFit:
    """The largest batch of ``model`` on ``input_shape`` images that trains with ``optimizer`` within
    ``budget_mb`` MiB (allocator peak); ``options`` go to :func:`~cnnbench.memory.predict.predict`
    (``num_classes``, ``amp``, ``device``, ...) and, with ``measure``, to the measurement."""
    check_optimizer(optimizer)
    check_batch_size(max_batch, "the largest batch size searched")
    probes: dict[int, float] = {}

    def peak(batch: int) -> float:
        if batch not in probes:
            probes[batch] = predictor(model, input_shape, batch, optimizer, **options).peak_mb
        return probes[batch]

    first = smallest_step(predictor, model, input_shape, optimizer, **options)
    probes[first.batch_size] = first.peak_mb
    check_budget(budget_mb, first, budget_flag)
    fit = BatchFit(optimizer=optimizer, budget_mb=budget_mb, batch_size=0, predicted_peak_mb=None, probes=probes)
    if first.peak_mb > budget_mb:
        fit.note = f"batch {first.batch_size} needs {first.peak_mb:.1f} MiB with {optimizer}"
        return fit
    good, bad = first.batch_size, None
    while bad is None:
        trial = min(good * GROWTH, max_batch)
        if trial == good:
            fit.capped = True
            break
        if peak(trial) <= budget_mb:
            good = trial
        else:
            bad = trial
    bisect = False
    while bad is not None and bad - good > 1:
        if bisect:  # every other probe halves the bracket: at worst log2 probes
            trial = (good + bad) // 2
        else:  # the peak is close to affine in the batch size: interpolation lands near the answer
            slope = (probes[bad] - probes[good]) / (bad - good)
            trial = good + int((budget_mb - probes[good]) / slope) if slope > 0 else (good + bad) // 2
            trial = min(max(trial, good + 1), bad - 1)
        bisect = not bisect
        if peak(trial) <= budget_mb:
            good = trial
        else:
            bad = trial
    fit.batch_size, fit.predicted_peak_mb = good, probes[good]
    if measure:
        _confirm(fit, model, input_shape, optimizer, measure_device, options)
    return fit


def _confirm(fit: BatchFit, model, input_shape, optimizer: str, device: str, options: dict[str, Any]) -> None:
    """Measure the predicted answer; while it does not fit, scale the batch down by budget/measured."""
    from cnnbench.memory.measure import measure

    kwargs = {k: v for k, v in options.items() if k != "device"}
    batch = fit.batch_size
    for _ in range(MAX_MEASURE_TRIES):
        got = measure(model, input_shape, batch, optimizer, device=device, **kwargs).peak_mb
        fit.measured[batch] = got
        if got <= fit.budget_mb:
            fit.batch_size, fit.measured_peak_mb = batch, got
            fit.predicted_peak_mb = fit.probes.get(batch)
            return
        if batch <= min(fit.probes):
            break
        batch = max(min(fit.probes), min(batch - 1, int(batch * fit.budget_mb / got)))
    fit.batch_size, fit.measured_peak_mb = 0, None
    fit.note = f"no measured batch fits {fit.budget_mb:g} MiB (tried {', '.join(map(str, fit.measured))})"
