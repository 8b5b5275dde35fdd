"""A rough duration per cell for ``study show``: one timed training batch per distinct model and
input, times the batches of an epoch, times the epochs (plus a share for validation and test)."""

from __future__ import annotations

import json
import math
import time

from cnnbench.study.definition import Study

EVAL_SHARE = 0.25  # validation + test passes, relative to training (forward only, fewer images)


def estimate_seconds(study: Study) -> dict[str, float]:
    import torch

    from cnnbench import api

    timed: dict[tuple, float] = {}
    out = {}
    for cell in study.cells:
        config = cell.config
        resolved = api.resolve(config)
        info, batch = resolved.info, config.optim.batch_size
        key = (config.model.name, json.dumps(resolved.config.model.options, sort_keys=True, default=str),
               info.channels, info.height, info.width, batch)
        if key not in timed:
            model = resolved.model.train()
            x = torch.randn(batch, info.channels, info.height, info.width)
            y = torch.zeros(batch, dtype=torch.int64)
            for attempt in range(2):  # the first batch pays the warm-up
                start = time.perf_counter()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                timed[key] = time.perf_counter() - start
        n_train = config.data.train_size or int((info.train_size or 0) * (1 - config.data.val_split))
        steps = math.ceil(n_train / batch) if n_train else 0
        out[cell.label] = timed[key] * steps * config.run.epochs * (1 + EVAL_SHARE)
    return out
