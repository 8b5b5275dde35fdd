"""Whether an interrupt (Ctrl-C, SIGTERM, SIGHUP) is being handled.

Python raises a signal handler's exception in whatever code runs at that moment, and an exception
raised inside a finaliser or weakref callback (a garbage collection between trials, say) is
printed as "Exception ignored" and lost. So the handler (``cnnbench.api.interrupt_signals``)
keeps re-raising ``KeyboardInterrupt`` until the code that cleans up after an interrupt says it
has it, by calling :func:`acknowledge`; signals after that are only reported.
"""

from __future__ import annotations

_acknowledged = False


def acknowledge() -> None:
    """Called where an interrupt is caught and cleanup starts (engine, tune, workers)."""
    global _acknowledged
    _acknowledged = True


def acknowledged() -> bool:
    return _acknowledged


def reset() -> None:
    global _acknowledged
    _acknowledged = False
