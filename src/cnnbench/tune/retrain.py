"""``--retrain-best``: train the best trial's configuration on train + validation with the full epoch
budget and score it on the test set, in its own MLflow run linked from the parent.

How "train + validation" is done: the data are loaded exactly as for the trials, then the
validation images are appended to the training split (the normalisation statistics are recomputed on
the union). The validation split is still evaluated every epoch so the curves and the MLflow
metrics keep their usual keys, but it is now seen in training: its accuracy is optimistic, and the
run is tagged ``cnnbench.train_on=train+val`` to say so. The test split is untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from cnnbench import api
from cnnbench.config import TrainConfig
from cnnbench.data.bundle import Split
from cnnbench.data.pipeline import channel_stats
from cnnbench.tune.space import apply
from cnnbench.campaign.runs import TAG_CAMPAIGN, TAG_ROLE
from cnnbench.tune.tracker import TAG_PARENT, TAG_STUDY


def merged_train_val(config: TrainConfig):
    """The trial data with the validation images appended to the training images."""
    data = api.load_data(config)
    train = Split(torch.cat([data.train.images, data.val.images]), torch.cat([data.train.labels, data.val.labels]))
    mean, std = channel_stats(train.images)
    return dataclasses.replace(data, train=train, mean=mean, std=std)


def retrain_best(base: TrainConfig, best_params: dict[str, Any], *, epochs: int, study_name: str,
                 parent_run_id: str, best_trial_number: int, experiment: str, tags: dict[str, str] | None = None):
    """Run the retrain (default artifacts, model logged), ``tags`` added to its own; returns ``api.TrainResult``."""
    from cnnbench.tracking.describe import trial_run_name

    name = "best " + trial_run_name(base, best_trial_number, best_params)  # `best t07 lr=3.2e-3 · lenet5`
    config = apply(base, best_params).replace(run={"epochs": epochs, "run_name": name, "experiment": experiment})
    tags = {**(tags or {}), TAG_STUDY: study_name, TAG_PARENT: parent_run_id, TAG_ROLE: "retrain", TAG_CAMPAIGN: study_name,
            "cnnbench.train_on": "train+val", "best_trial_number": str(best_trial_number)}
    data = merged_train_val(config)
    # a run of its own: under `mlflow run`, MLFLOW_RUN_ID is the tune parent, not this run
    return api.train(config, api.run_callbacks(config, adopt_mlflow_run=False, extra_tags=tags), data=data)
