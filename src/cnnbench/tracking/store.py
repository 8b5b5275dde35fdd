"""Resolving and checking the MLflow tracking URI before any run is created."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from cnnbench.errors import TrackingError

REACH_TIMEOUT_S = 3.0


def resolve_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default store."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    import mlflow

    return mlflow.get_tracking_uri()


def check_reachable(uri: str) -> None:
    """Fail fast (seconds, not the client's minutes of retries) on a store that cannot be used."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        # Keep the client's own retry loop short too, for the rest of this process.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=REACH_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            return  # the server answered: reachable (older servers have no /health)
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingError(
                f"cannot reach the MLflow tracking server at {uri} ({reason}). Start it (e.g. "
                f"`mlflow server --host 127.0.0.1 --port 5000`), or pass another --tracking-uri / MLFLOW_TRACKING_URI"
            ) from None
    elif parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else parsed.path
        if path and path != ":memory:":
            parent = Path(path).expanduser().resolve().parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise TrackingError(f"cannot create the folder of the MLflow store {uri}: {err}") from None
            if not os.access(parent, os.W_OK):
                raise TrackingError(f"the MLflow store {uri} is in a folder this user cannot write ({parent})")
    elif parsed.scheme in ("", "file"):
        return
    elif parsed.scheme not in ("postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc") and "+" not in parsed.scheme:
        raise TrackingError(
            f"unsupported tracking URI {uri!r}: use http(s)://HOST:PORT, sqlite:///PATH, a database URL or a folder"
        )


def ui_hint(uri: str) -> str:
    """How to open the MLflow UI on this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"
