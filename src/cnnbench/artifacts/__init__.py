"""Analysis artifacts: pure functions that turn engine outputs into figures and tables, and the
callbacks (``callbacks.default_callbacks``) that write them under a run's staging folder.

Nothing here imports MLflow: the tracker uploads whatever lands in ``RunState.artifacts_dir``.
"""
