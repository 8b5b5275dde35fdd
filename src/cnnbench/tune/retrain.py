"""``--retrain-best``: train the best trial's configuration on train + validation with the full epoch
budget and score it on the test set, in its own MLflow run linked from the parent.

"Train + validation" means what ``--train-on train+val`` means everywhere: the validation images
join the training images (normalisation statistics on the union) and there is no validation split,
so no early stopping (the trial's ``--patience`` is dropped for the retrain) and ``val_*`` metrics
are NaN. The run logs ``train_on=train+val`` as a param and a ``cnnbench.train_on`` tag. The test
split is untouched.
"""

from __future__ import annotations

from typing import Any


from cnnbench import api
from cnnbench.config import TrainConfig
from cnnbench.tune.space import apply
from cnnbench.campaign.runs import TAG_CAMPAIGN, TAG_ROLE
from cnnbench.tune.tracker import TAG_PARENT, TAG_STUDY


def retrain_best(base: TrainConfig, best_params: dict[str, Any], *, epochs: int, study_name: str,
                 parent_run_id: str, best_trial_number: int, experiment: str, tags: dict[str, str] | None = None):
    """Run the retrain (default artifacts, model logged), ``tags`` added to its own; returns ``api.TrainResult``."""
    from cnnbench.tracking.describe import trial_run_name

    name = "best " + trial_run_name(base, best_trial_number, best_params)  # `best t07 lr=3.2e-3 · lenet5`
    config = apply(base, best_params).replace(run={"epochs": epochs, "run_name": name, "experiment": experiment,
                                                   "patience": 0}, data={"train_on": "train+val"})
    tags = {**(tags or {}), TAG_STUDY: study_name, TAG_PARENT: parent_run_id, TAG_ROLE: "retrain", TAG_CAMPAIGN: study_name,
            "cnnbench.train_on": "train+val", "best_trial_number": str(best_trial_number)}
    # a run of its own: under `mlflow run`, MLFLOW_RUN_ID is the tune parent, not this run
    return api.train(config, api.run_callbacks(config, adopt_mlflow_run=False, extra_tags=tags))
