"""A duration per cell for ``study show``, and the study's wall time on N workers.

Per distinct model and input, a few real training steps (forward, backward and the cell's
optimizer step, channels-last as the cell runs it) and a few evaluation passes are timed after a
warm-up; a cell is then ``epochs x (train batches x step + validation batches x eval pass) + test
batches x eval pass + CELL_OVERHEAD_S``. The overhead is what a cell costs outside its epochs
(creating its MLflow run, params, the first-batch warm-up, testing, the study's artifacts, ending
the run): measured on this project's quick recipes as a cell's wall time minus its
``fit_time_with_val_s``. Steps are timed with the threads one of ``w`` workers gets
(``cores // w``, as ``study run`` gives them), and the wall time of the jobs on ``w`` workers of a
``c``-core machine is their sum divided by ``min(w, c)``, plus the study's fixed cost.
``benchmarks/bench_estimate.py`` compares this with the walls measured in ``docs/studies``.
"""

from __future__ import annotations

import json
import math
import os
import time

from cnnbench.study.definition import Study

CELL_OVERHEAD_S = 2.5  # seconds a cell costs outside its epochs (see the module doc)
# a study's fixed cost: each worker's imports, store and data load (once per worker, in parallel),
# the queue and parent run, and the report at the end; fitted to the quick recipes' walls (the
# smallest ones: wall minus runs / workers, 15-40 s on 2 cores)
STUDY_START_S = 20.0
STEPS = 4  # timed steps after WARMUP untimed ones
WARMUP = 2


def estimate_seconds(study: Study, workers: int = 1) -> dict[str, float]:
    """Seconds one run of each cell takes on one of ``workers`` workers (its share of the threads)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, workers)))
    try:
        return _estimate(study, torch)
    finally:
        torch.set_num_threads(threads)


def _estimate(study: Study, torch) -> dict[str, float]:
    from cnnbench import api

    timed: dict[tuple, tuple[float, float]] = {}
    out = {}
    for cell in study.cells:
        config = cell.config
        resolved = api.resolve(config)
        info, batch = resolved.info, config.optim.batch_size
        if not isinstance(batch, int):
            batch = 64  # "auto": chosen at run time; a typical size
        key = (config.model.name, json.dumps(resolved.config.model.options, sort_keys=True, default=str),
               info.channels, info.height, info.width, batch, config.optim.optimizer)
        if key not in timed:
            timed[key] = _time_steps(resolved, config, batch, torch)
        step, forward = timed[key]
        n_total = config.data.train_size or int((info.train_size or 0) * (1 - config.data.val_split))
        n_val = math.ceil((info.train_size or 0) * config.data.val_split)  # held out of the full training set
        carved = config.data.test_from_train  # the test split carved out of the training images
        n_test = math.ceil((info.train_size or 0) * carved) if carved else info.test_size or 0
        train_batches = math.ceil(n_total / batch) if n_total else 0
        eval_batches = math.ceil(n_val / batch) if n_val else 0
        test_batches = math.ceil(n_test / batch) if n_test else 0
        out[cell.label] = (config.run.epochs * (train_batches * step + eval_batches * forward)
                           + test_batches * forward + CELL_OVERHEAD_S)
    return out


def _time_steps(resolved, config, batch: int, torch) -> tuple[float, float]:
    """Seconds of one training step and of one evaluation pass of a batch: the fastest of a few, as the
    least disturbed by whatever else the machine runs while ``show`` measures."""
    from cnnbench.engine.optim import build_optimizer

    model = resolved.model.train()
    info = resolved.info
    x = torch.randn(batch, info.channels, info.height, info.width)
    y = torch.zeros(batch, dtype=torch.int64)
    optimizer = build_optimizer(resolved.config.optim, model)
    steps = []
    for attempt in range(WARMUP + STEPS):  # the first ones pay the warm-up
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        steps.append(time.perf_counter() - start)
    passes = []
    model.eval()
    with torch.no_grad():
        for attempt in range(WARMUP + STEPS):
            start = time.perf_counter()
            model(x)
            passes.append(time.perf_counter() - start)
    return min(steps[WARMUP:]), min(passes[WARMUP:])


def wall_seconds(study: Study, per_run: dict[str, float], workers: int, cores: int | None = None) -> float:
    """The study's wall time on ``workers`` worker processes of this machine."""
    cores = cores or os.cpu_count() or 1
    total = sum(per_run.values()) * len(study.seeds)
    parallel = max(1, min(workers, cores, len(study.cells) * len(study.seeds)))
    return total / parallel + STUDY_START_S
