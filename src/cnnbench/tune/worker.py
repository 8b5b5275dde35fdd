"""``python -m cnnbench.tune.worker SPEC.json``: one extra ``--n-jobs`` worker process.

Exits 0 when its trials are done, 130 on Ctrl-C / SIGTERM / SIGHUP (its running trial ends FAIL in
Optuna and KILLED in MLflow), 1 on an error outside a trial. It stops with its parent: when the
``tune`` process that started it is gone (even by SIGKILL), the worker interrupts itself.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

PARENT_CHECK_S = 1.0


def stop_with_parent(parent_pid: int) -> threading.Event:
    """A daemon thread that sends this process SIGTERM once its parent process has gone (it is
    then re-parented, so ``os.getppid()`` changes). Set the returned event to stop watching."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(PARENT_CHECK_S):
            if os.getppid() != parent_pid:
                print("worker: the tune process that started this worker is gone; stopping", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="cnnbench-parent-watch", daemon=True).start()
    return done


def main(argv: list[str]) -> int:
    from cnnbench.api import interrupt_signals
    from cnnbench.errors import CnnbenchError
    from cnnbench.tune.study import WorkerSpec, run_worker

    watching = stop_with_parent(os.getppid())
    try:
        with interrupt_signals():
            run_worker(WorkerSpec.load(argv[0]))
    except KeyboardInterrupt:
        from cnnbench.engine import interrupts

        interrupts.acknowledge()
        return 130
    except CnnbenchError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    finally:
        watching.set()
    return 0


if __name__ == "__main__":
    from cnnbench.processes import prompt_exit

    prompt_exit(main(sys.argv[1:]))
