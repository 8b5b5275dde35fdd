"""The campaign layer under ``tune`` and ``study``: a parent MLflow run, child runs, and workers
pulling jobs from one database with leases, so every job runs exactly once through every fault.

- :mod:`.storage`: the one opener of the campaign database (Optuna's storage and the job queue);
- :mod:`.runs`: the identity schema of every run cnnbench creates;
- :mod:`.queue`: the indexed jobs table (claim, lease, retry, requeue, completion);
- :mod:`.workers`: the worker main, its signal policy, heartbeat and parent watch.

This package imports neither :mod:`cnnbench.tune` nor :mod:`cnnbench.study`; they plug into it.
"""

DEFAULT_HEARTBEAT_S = 30  # seconds between a worker's beats; a job silent for twice as long is given to another worker

# Exit codes of campaign commands (``study run``, ``tune``): what the campaign's state is.
EXIT_COMPLETE = 0  # every job FINISHED
EXIT_JOBS_FAILED = 3  # the campaign ended, but some jobs FAILED after their retries (named on stderr and the parent)
EXIT_INCOMPLETE = 4  # this command stopped with jobs still waiting or running elsewhere and cannot wait (--no-wait)
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT
EXIT_TERMINATED = 143  # SIGTERM / SIGHUP (a scheduler's time limit, a pod eviction, a closed terminal)
