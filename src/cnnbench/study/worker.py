"""``python -m cnnbench.study.worker SPEC.json``: one extra ``--workers`` process of ``study run``.

Exits 0 when no job is left, 130 on Ctrl-C / SIGTERM or when the command that started it is gone
(its running cell ends KILLED and is re-run on resume), 1 on an error outside a cell.
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str]) -> int:
    from cnnbench.errors import CnnbenchError
    from cnnbench.study.run import Worker, WorkerSpec

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        Worker(WorkerSpec.load(argv[0])).run()
    except KeyboardInterrupt:
        return 130
    except CnnbenchError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from cnnbench.processes import prompt_exit

    prompt_exit(main(sys.argv[1:]))
