"""The one opener of a campaign's database (``tune``'s Optuna study and ``study``'s job queue live
in it): the default SQLite file beside the local MLflow store, URL checks that fail in seconds,
passwords from the environment only, and on SQLite every transaction serialised.

SQLite is for one machine. Several local processes may share it (``--workers`` of tune and study, two
commands): the file is put in WAL mode, writers wait up to ``SQLITE_BUSY_TIMEOUT_S`` for the lock,
and every transaction begins with ``BEGIN IMMEDIATE`` (:func:`serialise_sqlite`): pysqlite runs a
``SELECT ... FOR UPDATE``-style read outside any transaction, so two processes could both read a
trial WAITING and both claim it (measured: 60 re-queued trials, 3 processes, 83 claims). Workers on
several machines need a server database (PostgreSQL or MySQL).
"""

from __future__ import annotations

import sqlite3
import time
import warnings
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from cnnbench.errors import CnnbenchError, ConfigError

DEFAULT_FILE = "optuna.db"
SQLITE_BUSY_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 5
SERVER_DIALECTS = {"postgresql": "psycopg2-binary", "mysql": "pymysql", "mariadb": "pymysql"}
ACCEPTED = "sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB or mysql+pymysql://USER:PASSWORD@HOST:PORT/DB"


def default_storage(tracking_uri: str) -> str:
    """``sqlite:///<folder>/optuna.db`` beside a local MLflow store (its SQLite file or its folder);
    in the working directory when the tracking store is remote."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite" and tracking_uri.startswith("sqlite:///") and ":memory:" not in tracking_uri:
        folder = Path(tracking_uri[len("sqlite:///"):]).expanduser().resolve().parent
    elif parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme else tracking_uri).expanduser().resolve().parent
    else:
        folder = Path.cwd()
    return f"sqlite:///{folder / DEFAULT_FILE}"


def redact(url: str) -> str:
    """The URL as Optuna's own tools take it (``optuna.load_study``, ``optuna-dashboard``: see
    :func:`canonical`), without its password (for tags and messages)."""
    from cnnbench.tracking.store import mask_uri

    return mask_uri(canonical(url))


def canonical(url: str) -> str:
    """The installed driver named (``postgresql+psycopg2://``, what cnnbench itself connects with) and
    a relative SQLite path made absolute, so the URL works from any folder."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        path = url[len("sqlite:///"):]
        if path:
            return f"sqlite:///{Path(path).expanduser().resolve()}"
    return with_driver(url)


def is_sqlite(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0].lower() == "sqlite"


def check_url(url: str) -> str:
    """Parse the URL and return its dialect; a ConfigError that says what is accepted otherwise."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if url.split(":", 1)[0].lower() in ("postgres", "postgres+psycopg2"):
        raise ConfigError(f"--storage {redact(url)}: the scheme is spelled postgresql://, not postgres://")
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 -- parsed lazily: 'HOST:notaport' raises ValueError here
    except (ArgumentError, ValueError):
        raise ConfigError(f"--storage {redact(url)!r} is not a database URL; accepted: {ACCEPTED}") from None
    dialect = parsed.get_backend_name()
    if dialect == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError(f"--storage {url!r}: an in-memory SQLite study cannot be shared or resumed; give a file, sqlite:///PATH")
        return dialect
    if dialect not in SERVER_DIALECTS and dialect not in ("oracle", "mssql"):
        raise ConfigError(f"--storage {redact(url)}: unsupported database {dialect!r}; accepted: {ACCEPTED}")
    return dialect


def with_driver(url: str) -> str:
    """``postgresql://`` / ``mysql://`` with an installed driver named: SQLAlchemy's default for a
    bare scheme (psycopg 3, mysqlclient) is often not the one installed (psycopg2-binary, pymysql)."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    drivers = {"postgresql": ("psycopg", "psycopg2"), "mysql": ("MySQLdb", "pymysql"), "mariadb": ("MySQLdb", "pymysql")}
    if scheme.lower() not in drivers:
        return url
    installed = [m for m in drivers[scheme.lower()] if importlib.util.find_spec(m) is not None]
    if not installed or installed[0] == drivers[scheme.lower()][0]:
        return url  # the default driver is there (or none is: the error names what to install)
    return f"{scheme}+{installed[0].lower()}{sep}{rest}"


PASSWORD_ENV = "CNNBENCH_STORAGE_PASSWORD"


def with_password(url: str) -> str:
    """``USER@HOST`` URLs get their password from ``$CNNBENCH_STORAGE_PASSWORD``, so it never has to be
    on a command line (``ps``, shell history) or in ``mlflow run -P storage=...``, which MLflow stores as
    a param in clear text. PostgreSQL's own ``PGPASSWORD`` and ``~/.pgpass`` work as well."""
    import os

    password = os.environ.get(PASSWORD_ENV)
    if not password:
        return url
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.username or parsed.password:
        return url
    return parsed.set(password=password).render_as_string(hide_password=False)


def warn_if_logged_by_mlflow_run(url: str) -> str | None:
    """Under ``mlflow run`` the ``-P storage=...`` value is already a param of the run: say so when it
    carries a password (it cannot be removed from MLflow afterwards)."""
    import os

    from cnnbench.tracking.store import mask_uri

    if os.environ.get("MLFLOW_RUN_ID") and mask_uri(url) != url:
        return (f"the study storage URL passed to `mlflow run -P storage=...` holds a password, which MLflow stored "
                f"as a param of run {os.environ['MLFLOW_RUN_ID']}; pass the URL without it and set {PASSWORD_ENV} "
                f"(or PGPASSWORD) instead")
    return None


def serialise_sqlite(engine) -> None:
    """Open every transaction of a SQLite engine with ``BEGIN IMMEDIATE`` (no-op elsewhere).

    SQLAlchemy's recipe for pysqlite: stop the driver's own transaction handling on each new
    connection and emit BEGIN ourselves. Connections already pooled predate the listeners: dropped.
    """
    from sqlalchemy import event

    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, connection_record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()


def _engine_kwargs(dialect: str, url: str) -> dict:
    if dialect == "sqlite":
        _prepare_sqlite(url)
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}


def _driver_error(url: str, dialect: str, err: ImportError) -> ConfigError:
    cause = err.__cause__ or err
    hint = SERVER_DIALECTS.get(dialect, getattr(cause, "name", None) or "the database driver")
    return ConfigError(f"--storage {redact(url)}: the database driver is not installed ({cause}); pip install {hint}")


class StorageFull(CnnbenchError):
    """The disk under the study storage is full (exit 1): one line naming the storage and the disk."""


def full_disk(err: BaseException | None) -> BaseException | None:
    """The full-disk error ``err`` is or came from (``orig``, causes, contexts): SQLite's SQLITE_FULL
    ("database or disk is full"), or ENOSPC / EDQUOT from the operating system; else None."""
    import errno

    for _ in range(10):
        if err is None:
            return None
        if isinstance(err, sqlite3.Error) and getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return err
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        err = getattr(err, "orig", None) or err.__cause__ or err.__context__
    return None


def disk_is_full(url: str, err: BaseException) -> bool:
    """:func:`full_disk`, or a SQLite error ("disk I/O error": the WAL index cannot grow) while the
    storage file's disk has less than 64 KiB free (SQLite's WAL index and one page)."""
    import shutil

    if full_disk(err) is not None:
        return True
    if not (is_sqlite(url) and ":///" in url and isinstance(getattr(err, "orig", err), sqlite3.Error)):
        return False
    try:
        return shutil.disk_usage(Path(url.split(":///", 1)[1]).expanduser().parent).free < 64 * 1024
    except OSError:
        return False


def full_disk_error(url: str, err: BaseException) -> StorageFull:
    import shutil

    where = ""
    if is_sqlite(url) and ":///" in url:
        folder = Path(url.split(":///", 1)[1]).expanduser().parent
        try:
            where = f" ({shutil.disk_usage(folder).free:,} bytes free in {folder})"
        except OSError:
            where = f" (in {folder})"
    return StorageFull(f"the study storage {redact(url)} cannot be written: no space left on its disk{where}; free "
                       f"space there or give --storage on another disk")


def refuse_full_disk(engine, url: str) -> None:
    """A write that fails for a full disk raises :class:`StorageFull` (one line) instead of SQLAlchemy's
    error, which Optuna chains into ``StorageInternalError`` ("invalid data in the commit, e.g.
    exceeding max length"): SQLAlchemy's ``handle_error`` event, which may raise its own exception."""
    from sqlalchemy import event

    def handler(context) -> None:
        if disk_is_full(url, context.original_exception):
            raise full_disk_error(url, context.original_exception) from None

    event.listen(engine, "handle_error", handler)


def _unreachable(url: str, err: BaseException) -> CnnbenchError:
    if disk_is_full(url, err):
        return full_disk_error(url, err)
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return StorageUnreachable(
        f"cannot open the study storage {redact(url)}: {first}. Check the host, port, database name and "
        f"credentials (the server must be running and reachable); accepted: {ACCEPTED}")


class StorageUnreachable(ConfigError):
    """The storage URL is well formed but the database does not answer (exit 1, like an unreachable
    tracking store: the input may be right, the server is not there)."""

    exit_code = 1


def open_engine(url: str):
    """A SQLAlchemy engine on the campaign database that answered a query (SQLite serialised), or a
    ConfigError naming the URL. What the job queue (:mod:`cnnbench.campaign.queue`) runs on."""
    import sqlalchemy
    from sqlalchemy.exc import SQLAlchemyError

    dialect = check_url(url)
    try:
        engine = sqlalchemy.create_engine(with_driver(with_password(url)), **_engine_kwargs(dialect, url))
        serialise_sqlite(engine)
        refuse_full_disk(engine, url)
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except ImportError as err:
        raise _driver_error(url, dialect, err) from None
    except (SQLAlchemyError, OSError, ValueError) as err:
        raise _unreachable(url, err) from None
    return engine


def open_storage(url: str, *, heartbeat_interval: int | None = None, on_stale: Callable | None = None):
    """An ``optuna.storages.RDBStorage`` that answered a query (SQLite serialised), or a ConfigError
    naming the URL.

    ``on_stale(study, trial)`` runs after Optuna fails a trial whose worker stopped beating.
    """
    from sqlalchemy.exc import SQLAlchemyError

    dialect = check_url(url)
    engine_url = with_driver(with_password(url))
    engine_kwargs = _engine_kwargs(dialect, url)
    heartbeat = {}
    if heartbeat_interval:
        heartbeat = {"heartbeat_interval": int(heartbeat_interval), "grace_period": 2 * int(heartbeat_interval)}
        heartbeat.update(_stale_callback_kwarg(on_stale))
    try:
        storage = _connect(engine_url, engine_kwargs, heartbeat)
    except ImportError as err:
        raise _driver_error(url, dialect, err) from None
    except (SQLAlchemyError, OSError, ValueError) as err:
        raise _unreachable(url, err) from None
    serialise_sqlite(storage.engine)
    refuse_full_disk(storage.engine, url)
    return storage


def _connect(url: str, engine_kwargs: dict, heartbeat: dict, attempts: int = 5):
    """Open the storage and make one round trip. Workers started together on a new database race
    to create Optuna's tables (one gets "relation already exists"): the loser tries again."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are 'experimental'
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
            storage.get_all_studies()
            return storage
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def _prepare_sqlite(url: str) -> None:
    """Create the folder and switch the file to WAL mode, so readers do not block the writer."""
    path = Path(url.split(":///", 1)[1]).expanduser() if ":///" in url else None
    if path is None:
        return
    for attempt in range(LOCKED_RETRIES):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except (OSError, sqlite3.Error) as err:
            # processes opening a new file together: switching the journal mode can answer "locked"
            # at once, without waiting for the busy timeout; the file is fine, look again
            from cnnbench.campaign.workers import is_transient

            if is_transient(err) and attempt < LOCKED_RETRIES - 1:
                time.sleep(0.2 * (attempt + 1))
                continue
            if disk_is_full(url, err):
                raise full_disk_error(url, err) from None
            raise ConfigError(f"cannot use the SQLite study storage {path}: {err}") from None


LOCKED_RETRIES = 6


def _stale_callback_kwarg(on_stale: Callable | None) -> dict:
    """Optuna >= 4.9 calls it ``heartbeat_stale_trial_callback``; older versions ``failed_trial_callback``."""
    import inspect

    import optuna

    retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = retry_cls(max_retry=2)

    def callback(study, trial) -> None:
        retry(study, trial)
        if on_stale is not None:
            on_stale(study, trial)

    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
    return {key: callback}
