"""User-facing error types: each carries the exit code the CLI returns for it."""


class CnnbenchError(Exception):
    """An error whose message is written for the user (what was wrong, what is accepted)."""

    exit_code = 1


class ConfigError(CnnbenchError):
    """Bad input found before any work starts: option values, names, files on the command line."""

    exit_code = 2


class PluginError(ConfigError):
    """A model or dataset plugin is unknown, broken (failed to import) or claimed twice."""


class ModelInputError(ConfigError):
    """A model cannot take the requested input (too small, wrong kernel size, unsupported option)."""


class DataError(ConfigError):
    """A dataset's files are missing, truncated or malformed (the message names the file)."""


class ImageTooLargeError(DataError):
    """An image file whose header declares more pixels than cnnbench reads
    (:data:`cnnbench.data.images.MAX_IMAGE_PIXELS`); refused before its pixels are decoded."""


class TrackingError(CnnbenchError):
    """The MLflow tracking store cannot be reached or refuses the run."""

    exit_code = 1


class TrainingError(CnnbenchError):
    """Training itself failed (non-finite loss, out of memory, ...)."""

    exit_code = 1


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM / SIGHUP stopped a run; the message names the run, its state and the command
    that resumes it. A ``KeyboardInterrupt`` (so nothing that catches ``Exception`` swallows it);
    the CLI prints the message and exits 130."""

    exit_code = 130

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
