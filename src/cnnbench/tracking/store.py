"""Resolving and checking the MLflow tracking URI before any run is created.

Everything here answers in seconds: a store that cannot be used fails with one line before data is
loaded or a run exists. Credentials never reach a message, tag or param: :func:`mask_uri` hides
the password of any URL, and ``http://USER:PASSWORD@HOST`` is turned into MLflow's own
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (the form MLflow's client reads) plus
a URI without them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import sqlite3
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cnnbench.errors import ConfigError, TrackingError

REACH_TIMEOUT_S = 3.0  # /health
API_TIMEOUT_S = 8.0  # one real API call: a server that answers /health but hangs on the API fails here
HTTP_REQUEST_TIMEOUT_S = "10"  # MLflow's per-request timeout for the rest of the process
HTTP_REQUEST_MAX_RETRIES = "2"
SQLITE_TIMEOUT_S = 10.0
INIT_LOCK_TIMEOUT_S = 300.0  # first use of a new SQLite store: MLflow's migrations take seconds
_SECRET_KEYS = {"password", "passwd", "pwd", "token", "secret", "access_token", "api_key", "apikey"}
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/@:?#]*):(?P<pw>[^/?#]*)@")
_initialised: set[str] = set()


def mask_uri(uri: object) -> str:
    """``uri`` with every password replaced by ``***`` (``user:***@host``, ``?password=***``); other
    text unchanged. Use it wherever a URI is printed, logged, tagged or stored as a param."""
    text = "" if uri is None else str(uri)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    if "?" in text and "=" in text:
        try:
            parts = urlsplit(text)
            pairs = parse_qsl(parts.query, keep_blank_values=True)
        except ValueError:
            return text
        if any(k.lower() in _SECRET_KEYS for k, _ in pairs):
            query = urlencode([(k, "***" if k.lower() in _SECRET_KEYS else v) for k, v in pairs], safe="*")
            text = urlunsplit(parts._replace(query=query))
    return text


def recorded_config(config) -> dict:
    """``config.to_dict()`` as it is stored (config.json): the tracking URI's password masked."""
    data = config.to_dict()
    if data.get("run", {}).get("tracking_uri"):
        data["run"]["tracking_uri"] = mask_uri(data["run"]["tracking_uri"])
    return data


def resolve_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default store.

    An HTTP URI carrying ``USER:PASSWORD@`` is returned without them; they are exported as
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (unless those are set already),
    which MLflow's client sends as basic auth, and which tune's worker processes inherit.
    """
    if not uri:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or None
    if not uri:
        import mlflow

        uri = mlflow.get_tracking_uri()
    return _take_http_credentials(uri)


def _take_http_credentials(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    from urllib.parse import unquote

    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(user))
    if password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(password))
    clean = urlunsplit(parts._replace(netloc=hostport))
    if os.environ.get("MLFLOW_TRACKING_URI") == uri:
        os.environ["MLFLOW_TRACKING_URI"] = clean  # child processes must not see the password either
    return clean


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (None for an in-memory one)."""
    if not uri.startswith("sqlite:"):
        return None
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else urlsplit(uri).path
    path = path.split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).expanduser().resolve()


def check_reachable(uri: str) -> None:
    """Fail fast (seconds, not the client's minutes of retries) on a store that cannot be used;
    on a new SQLite store, create MLflow's schema once, under a file lock (concurrent first runs)."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_http(uri)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("", "file") or re.match(r"^[A-Za-z]:[\\/]", uri):
        folder = uri[len("file://"):] if scheme == "file" else uri
        suggestion = Path(folder or "mlruns").expanduser().resolve().with_suffix(".db")
        raise ConfigError(
            f"tracking URI {mask_uri(uri)!r} is a local path (MLflow's file store), which MLflow 3 no longer "
            f"supports for new runs; use a SQLite file instead, e.g. --tracking-uri sqlite:///{suggestion}, or an MLflow server http://HOST:PORT"
        )
    elif scheme.split("+", 1)[0] in ("postgresql", "mysql", "mssql"):
        _check_database(uri, scheme.split("+", 1)[0])
    elif scheme not in ("databricks", "databricks-uc", "uc"):
        raise ConfigError(
            f"unsupported tracking URI {mask_uri(uri)!r}: use http(s)://HOST:PORT, sqlite:///PATH or a database URL "
            f"(postgresql://, mysql://)"
        )


def _auth_header() -> dict[str, str]:
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    if user:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}


def _check_http(uri: str) -> None:
    # Keep the client's own retry loop short too, for the rest of this process: a server that
    # stops answering mid-run must end the run in about a minute, not hang it for many.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_REQUEST_MAX_RETRIES)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_REQUEST_TIMEOUT_S)
    shown = mask_uri(uri)
    base = _take_http_credentials(uri).rstrip("/")
    headers = _auth_header()
    hint = "Start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`), or pass another --tracking-uri / MLFLOW_TRACKING_URI"
    try:
        urllib.request.urlopen(urllib.request.Request(base + "/health", headers=headers), timeout=REACH_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        pass  # the server answered (older servers have no /health, an auth proxy may refuse it)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = mask_uri(getattr(err, "reason", err))
        raise TrackingError(f"cannot reach the MLflow tracking server at {shown} ({reason}). {hint}") from None
    probe = base + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        urllib.request.urlopen(urllib.request.Request(probe, headers=headers), timeout=API_TIMEOUT_S).close()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise TrackingError(
                f"the MLflow tracking server at {shown} refused the credentials (HTTP {err.code}); set "
                f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), or put them in the URI"
            ) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = mask_uri(getattr(err, "reason", err))
        raise TrackingError(
            f"the MLflow tracking server at {shown} answers /health but not its API within {API_TIMEOUT_S:.0f} s "
            f"({reason}); check the server (its database or artifact store may be down). {hint}"
        ) from None


def _check_sqlite(uri: str) -> None:
    path = sqlite_path(uri)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrackingError(f"cannot create the folder of the MLflow store {mask_uri(uri)}: {err}") from None
    if not os.access(path.parent, os.W_OK):
        raise TrackingError(f"the MLflow store {mask_uri(uri)} is in a folder this user cannot write ({path.parent})")
    if path.is_dir():
        raise TrackingError(f"the MLflow store {mask_uri(uri)} names a folder, not a database file")
    try:  # one round trip with sqlite itself: seconds, where MLflow retries for minutes
        with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)) as conn:
            conn.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as err:
        raise TrackingError(f"cannot use the MLflow store {mask_uri(uri)}: {err} (is it a SQLite database this user can write?)") from None
    init_store(uri)


def init_store(uri: str) -> None:
    """Open MLflow's store once per process, and, for SQLite, under an exclusive lock on
    ``<db>.lock``: MLflow creates and migrates the schema on first use, and N processes doing that
    at once on a new file crash each other (``duplicate column name``, ``alembic_version already
    exists``). The first one creates the schema; the others wait and find it done."""
    if uri in _initialised:
        return
    from mlflow.tracking._tracking_service.utils import _get_store

    path = sqlite_path(uri)
    try:
        if path is None:
            _get_store(uri)
        else:
            with file_lock(path.with_name(path.name + ".lock"), timeout=INIT_LOCK_TIMEOUT_S):
                _get_store(uri)
    except TimeoutError as err:
        raise TrackingError(f"the MLflow store {mask_uri(uri)}: {err}") from None
    except Exception as err:  # SQLAlchemy / MLflow errors: one line, never the traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrackingError(f"cannot open the MLflow store {mask_uri(uri)}: {mask_uri(first)}") from None
    _initialised.add(uri)


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path`` (created if missing), waited for up to ``timeout`` s.
    Released by the kernel if the holder dies, so a killed process never leaves it held."""
    import fcntl
    import time

    deadline = time.monotonic() + timeout
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process has held {path} for more than {timeout:.0f} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_database(uri: str, dialect: str) -> None:
    """One connection with a short timeout (MLflow's own engine retries for minutes), a clear line
    for a missing driver; then the schema, once."""
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError

    packages = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient"}
    connect_args = {"connect_timeout": 5} if dialect in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args)
    except ImportError as err:
        raise ConfigError(f"tracking URI {mask_uri(uri)}: the database driver is not installed ({err}); "
                          f"pip install {packages.get(err.name, err.name or 'the driver')}") from None
    except (ArgumentError, ValueError) as err:
        raise ConfigError(f"tracking URI {mask_uri(uri)} is not a usable database URL ({mask_uri(err)})") from None
    try:
        with engine.connect():
            pass
    except Exception as err:  # the driver's own errors: one line, password masked
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrackingError(f"cannot connect to the tracking database {mask_uri(uri)}: {mask_uri(first)}") from None
    finally:
        engine.dispose()
    init_store(uri)


UI_MODE = "workflowType=machine_learning"  # MLflow 3.17's UI: the "Model training" view of an experiment
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def run_link(uri: str | None, experiment_id: str, run_id: str | None = None) -> str:
    """The address of a run (or of its experiment's runs table) in the MLflow UI.

    MLflow 3.17's UI does not read the experiment's ``mlflow.experimentKind`` tag: whether an
    experiment opens on the runs table or the GenAI overview is its sidebar switch, carried by the
    ``?workflowType=`` URL parameter, else remembered by the browser (a new one starts on GenAI). So
    every address cnnbench prints or writes carries ``workflowType=machine_learning``."""
    base = mask_uri(uri).rstrip("/") if uri and str(uri).startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/{ui_fragment(experiment_id, run_id)}"


def link_of_run(uri: str | None, run_id: str | None) -> str | None:
    """:func:`run_link` of a run looked up in its store (None when it cannot be: a link is a courtesy,
    the printed run id is the record)."""
    if not run_id:
        return None
    try:
        from mlflow.tracking import MlflowClient

        return run_link(uri, MlflowClient(uri).get_run(run_id).info.experiment_id, run_id)
    except Exception:  # noqa: BLE001
        return None


def ui_fragment(experiment_id: str, run_id: str | None = None) -> str:
    """``#/experiments/<id>[/runs/<run_id>]?workflowType=machine_learning`` (relative to the UI)."""
    path = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{path}?{UI_MODE}"


def ui_hint(uri: str) -> str:
    """How to open the MLflow UI on this store."""
    uri = mask_uri(uri)
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"


# -- destinations named by files (FAULTS X26) -----------------------------------------------------
FILE_DESTINATION_FLAG = "--use-file-destination"
FILE_DESTINATION_HELP = ("send the runs to the tracking URI a --config or study file names (its run.tracking_uri / "
                         "[base] tracking_uri), with this environment's MLflow credentials; without it a file never "
                         "chooses where runs go nor receives $MLFLOW_TRACKING_USERNAME/PASSWORD")
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def same_destination(a: str | None, b: str | None) -> bool:
    """Whether two URIs name the same store (credentials in the URL and a trailing slash aside)."""
    if not a or not b:
        return False
    strip = lambda u: _USERINFO_ANY.sub(r"\g<scheme>", str(u).strip()).rstrip("/")  # noqa: E731
    return strip(a) == strip(b)


_USERINFO_ANY = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@?#]*@")


def choose_tracking_uri(given: str | None, from_file: str | None, *, where: str, accept_file: bool = False,
                        replay: bool = False, flag: str = "--tracking-uri", note=None) -> str | None:
    """The tracking URI to use when a file (``where``) names ``from_file`` and the command line gave
    ``given`` (None: not given; ``$MLFLOW_TRACKING_URI`` is looked up here).

    A file never silently replaces the destination the user gave, nor receives the user's
    credentials (FAULTS X26):
    - ``accept_file`` (the command line's ``--use-file-destination``): the file's URI;
    - ``replay`` (a ``--config`` file: a run's recorded config.json replays the experiment, not its
      destination): the file's URI is ignored, with a note;
    - the user's (``given``, else ``$MLFLOW_TRACKING_URI``) differs from the file's: a ConfigError
      naming both and the flag that accepts the file's;
    - the user gave none: the file's, but the environment's MLflow credentials are dropped from this
      process (and so from its workers), so they never go to a host a file chose.
    Returns what to pass to :func:`resolve_uri` (None: the user's / MLflow's default)."""
    say = note or (lambda line: print(line, file=sys.stderr, flush=True))
    if not from_file:
        return given
    if accept_file:
        if given and not same_destination(given, from_file):
            raise ConfigError(f"{flag} {mask_uri(given)} contradicts {FILE_DESTINATION_FLAG} ({where} names "
                              f"{mask_uri(from_file)}); give one of them")
        return from_file
    user = given or os.environ.get("MLFLOW_TRACKING_URI") or None
    if same_destination(user, from_file):
        return given or from_file
    if replay:
        say(f"note: {where} names the tracking URI {mask_uri(from_file)}, not used (a config replays the experiment, "
            f"not its destination; {FILE_DESTINATION_FLAG} sends the run there)")
        return given
    if user:
        origin = flag if given else "$MLFLOW_TRACKING_URI"
        raise ConfigError(f"{where} names the tracking URI {mask_uri(from_file)}, but {origin} is {mask_uri(user)}; "
                          f"refusing to let a file choose where runs go: drop it from the file, or pass "
                          f"{FILE_DESTINATION_FLAG} to use the file's")
    dropped = [name for name in CREDENTIAL_VARIABLES if os.environ.pop(name, None) is not None]
    if dropped:
        say(f"note: the tracking URI {mask_uri(from_file)} comes from {where}, so {', '.join(dropped)} from this "
            f"environment are not sent to it ({FILE_DESTINATION_FLAG} does)")
    return from_file


def mask_logged_params(tracking_uri: str, run_id: str) -> tuple[list[str], list[str]]:
    """The params of ``run_id`` whose value holds a password (what ``mlflow run -P storage=...`` logs
    before cnnbench starts: FAULTS X5) masked in place, where the store is a database MLflow opens
    here (SQLite, PostgreSQL, MySQL); MLflow's API cannot change a param, so an ``http://`` server's
    stay. Returns (masked keys, keys left in clear)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        params = client.get_run(run_id).data.params
    except Exception:  # not a run of this store: nothing of ours to mask
        return [], []
    secret = {k: v for k, v in params.items() if mask_uri(v) != v}
    if not secret:
        return [], []
    try:
        from mlflow.store.tracking.dbmodels.models import SqlParam
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = client._tracking_client.store
        if isinstance(store, SqlAlchemyStore):
            with store.ManagedSessionMaker() as session:
                for key, value in secret.items():
                    session.query(SqlParam).filter(SqlParam.run_uuid == run_id, SqlParam.key == key).update(
                        {SqlParam.value: mask_uri(value)}, synchronize_session=False)
            return sorted(secret), []
    except Exception:  # an MLflow whose schema differs: say so instead
        pass
    return [], sorted(secret)
