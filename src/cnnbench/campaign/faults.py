"""Tests' fault injection at the phases of a campaign job, for both job sources (``study run`` cells
and ``tune`` trials): ``$CNNBENCH_FAULT`` = ``POINT:kill`` SIGKILLs this process the first time it
reaches ``POINT``; ``POINT:kill:worker`` only in an extra ``--workers`` process
(``python -m cnnbench.campaign.workers``). Unset (always, outside the tests), a hook does nothing.

The points, in a job's order: ``job-claimed`` (a study job's claim is committed, nothing else done),
``data-loaded`` (the worker loaded its data, its run not created yet),
``trial-run-created`` / ``cell-run-created`` (a tune trial's or a study cell's run exists, the
trial or the queue does not name it yet),
``artifacts-uploading`` (the end-of-run upload of the run's artifacts has begun),
``report-writing`` (the campaign's report is about to be logged on the parent run).
"""

from __future__ import annotations

import os
import signal
import sys

FAULT_ENV = "CNNBENCH_FAULT"
POINTS = ("job-claimed", "data-loaded", "trial-run-created", "cell-run-created", "artifacts-uploading", "report-writing")


def fault_hook(point: str) -> None:
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    at, action, where = (wanted.split(":") + ["", ""])[:3]
    if at != point or (where == "worker" and not sys.argv[0].endswith(os.path.join("campaign", "workers.py"))):
        return
    os.environ.pop(FAULT_ENV, None)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
