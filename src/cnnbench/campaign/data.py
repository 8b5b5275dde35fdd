"""The prepared data sets a campaign worker keeps between its jobs (tune trials, study cells): one
load per distinct data configuration and seed, the oldest dropped past ``size``."""

from __future__ import annotations

from typing import Any

from cnnbench.config import TrainConfig

DATA_CACHE = 4  # prepared data sets a worker keeps (one per distinct data configuration and seed)


def data_key(config: TrainConfig) -> tuple:
    """What the prepared data depends on: the dataset, its options and files, the splits, the seed."""
    d = config.data
    return (d.name, tuple(sorted((k, str(v)) for k, v in d.options.items())), d.data_dir, d.val_split,
            d.train_size, d.image_size, d.download, config.run.seed)


class DataCache:
    def __init__(self, size: int = DATA_CACHE) -> None:
        self.size = max(1, size)
        self._data: dict[tuple, Any] = {}

    def get(self, config: TrainConfig):
        """``api.load_data(config)``, or the data set an earlier job with the same :func:`data_key` loaded."""
        from cnnbench import api

        key = data_key(config)
        if key not in self._data:
            while len(self._data) >= self.size:
                self._data.pop(next(iter(self._data)))
            self._data[key] = api.load_data(config)
        return self._data[key]
