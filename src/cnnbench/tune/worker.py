"""``python -m cnnbench.tune.worker SPEC.json``: one extra ``--n-jobs`` worker process.

Exits 0 when its trials are done, 130 on Ctrl-C / SIGTERM (its running trial ends FAIL in Optuna
and KILLED in MLflow), 1 on an error outside a trial.
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str]) -> int:
    from cnnbench.errors import CnnbenchError
    from cnnbench.tune.study import WorkerSpec, run_worker

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        run_worker(WorkerSpec.load(argv[0]))
    except KeyboardInterrupt:
        return 130
    except CnnbenchError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
