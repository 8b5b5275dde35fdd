"""``cnnbench tune``: Optuna studies over train options, tracked as one parent MLflow run with a
nested child run per trial.

space.py (search grammar) -> study.py (storage, sampler, pruner, workers) -> objective.py (one trial
= one ``api.train``) with reporter.py (pruning) and tracker.py (MLflow parent/child runs); plots.py
writes the end-of-study artifacts; retrain.py retrains the best configuration; the CLI is cnnbench.commands.tune.
"""

# Declared here, light to import, for the CLI's --help and for study.py's builders alike.
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
OBJECTIVES = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")
