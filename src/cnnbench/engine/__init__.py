"""The training engine: a pure fit loop that emits events; no MLflow, Optuna or file formats here."""
