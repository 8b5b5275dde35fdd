"""The experiments cnnbench creates, tagged so MLflow 3's UI opens them on the runs table.

MLflow 3 picks an experiment's page from its ``mlflow.experimentKind`` tag: ``genai_development``
opens the GenAI overview (traces, latency), ``custom_model_development`` the training runs table.
An untagged experiment is "inferred" by the UI, and a study's or a tune's experiment was inferred as
GenAI (no "Training runs" entry in the sidebar). :func:`ensure_experiment` is the one place cnnbench
finds or creates an experiment by name (train, tune, study, memory, filters), and tags it:

- an experiment it creates: always;
- an existing one: only while it has no run yet (of any lifecycle stage) and no kind tag; a
  user's experiment that already holds runs, or whose kind the user chose, is left as it is.
"""

from __future__ import annotations

KIND_TAG = "mlflow.experimentKind"
KIND_MODEL_DEVELOPMENT = "custom_model_development"  # MLflow 3's ExperimentKind for training runs


def ensure_experiment(client, name: str) -> str:
    """The id of experiment ``name`` (created if missing; another process creating it at the same
    moment is fine), tagged as a model-development experiment when it is new or still empty."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = client.create_experiment(name, tags={KIND_TAG: KIND_MODEL_DEVELOPMENT})
        except MlflowException as err:  # a concurrent worker created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise err from None
        else:
            return exp_id
    tag_if_empty(client, exp)
    return exp.experiment_id


def tag_if_empty(client, exp) -> bool:
    """Tag ``exp`` (an Experiment) as model development if it has no kind tag and no run; True if tagged."""
    from mlflow.entities import ViewType

    if KIND_TAG in (exp.tags or {}):
        return False
    if client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1):
        return False
    client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND_MODEL_DEVELOPMENT)
    return True
