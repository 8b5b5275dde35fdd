"""cnnbench: MLflow-tracked training, tuning and comparison of convolutional image classifiers."""

import time as _time

__version__ = "0.1.0"

# cnnbench's own start (``time_startup_s``, cnnbench.tracking.phases.startup_s): the console script's
# first import is this package. The CPU seconds the process spent before it bound the interpreter's
# bootstrap (a shell that ran `pip install ...` and then exec'd cnnbench waited, it did not compute).
_STARTED = (_time.perf_counter(), _time.process_time())
