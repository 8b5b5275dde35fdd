"""Where a campaign's workers run: ``local`` (processes on this machine, the default), ``slurm`` (one
array through submitit) or ``ray`` (plain Ray tasks). The engines only place workers; what runs is
the campaign's own worker (:func:`run_task`), so exactly-once, leases, retries and the exit codes
are the same on every launcher.

Rules for workers on other machines, checked before anything is submitted (:func:`check_remote`):
- the storage is PostgreSQL or MySQL and the tracking URI an ``http(s)://`` MLflow server (SQLite
  files and ``file:`` stores belong to one machine);
- credentials travel only through the environment: a password inside ``--storage`` or the tracking
  URI is taken out of the URL (into ``CNNBENCH_STORAGE_PASSWORD`` / ``MLFLOW_TRACKING_PASSWORD``),
  so the spec submitit pickles, the Slurm script and the Ray task arguments hold URLs without one.
  Slurm hands the submitting environment to its tasks (``--export=ALL``, its default); Ray gets the
  credential variables as the tasks' ``runtime_env``.

Time limits and preemption (Slurm): submitit asks Slurm for ``SIGUSR2`` ``signal_delay_s`` before the
time limit. A task receiving it (or SIGTERM from ``scancel``, a preemption or the limit itself) ends
its running job KILLED, which goes back to the queue without using a retry; on SIGUSR2 the task also
asks Slurm to requeue it (``scontrol requeue``; at most ``max_requeues`` times), so the study goes on
when every task reaches its limit at once. A live task or the requeued one claims the job again.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

from cnnbench.errors import ConfigError

LAUNCHERS = ("local", "slurm", "ray")
# Credentials a worker may need, read from the submitting environment and handed on (never written
# into a URL, a spec, a script or a run param).
CREDENTIAL_ENV = ("CNNBENCH_STORAGE_PASSWORD", "PGPASSWORD", "PGPASSFILE", "PGSERVICEFILE", "MYSQL_PWD",
                  "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS",
                  "MLFLOW_TRACKING_SERVER_CERT_PATH", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                  "AWS_SESSION_TOKEN", "MLFLOW_S3_ENDPOINT_URL", "GOOGLE_APPLICATION_CREDENTIALS",
                  "AZURE_STORAGE_CONNECTION_STRING")
FOLLOW_POLL_S = 2.0
FOLLOW_CONFIRM = 3  # polls in a row that must see no worker before the follower believes it
SLURM_ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
               "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"}
SLURM_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
SBATCH_RE = re.compile(r"^--([a-z][a-z0-9-]*)(?:=(\S.*))?$")
# sbatch options the launcher sets itself (from its own options), not accepted as extra lines
OWN_SBATCH = {"array", "partition", "time", "cpus-per-task", "mem", "gpus-per-task", "gres", "account", "qos",
              "output", "error", "signal", "job-name", "wrap", "export"}


@dataclass
class LauncherOptions:
    """How and where the workers start (the CLI options, or a study file's ``[launcher]`` table)."""

    name: str = "local"
    detach: bool = False
    # slurm
    partition: str | None = None
    time: str = "60"  # sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS
    cpus_per_task: int = 1
    mem: str | None = None  # sbatch --mem: 4G, 500M, ... (default: the partition's)
    gpus_per_task: int = 0
    account: str | None = None
    qos: str | None = None
    sbatch: tuple[str, ...] = ()  # extra sbatch options, e.g. --constraint=a100
    signal_delay_s: int = 120
    max_requeues: int = 3
    folder: str = "cnnbench-slurm"  # submitit's folder (job scripts and logs), under the working directory
    submitit_cluster: str = "slurm"  # "local": submitit's local executor, the same task code as processes (tests)
    # ray
    ray_address: str | None = None  # auto, ray://HOST:10001, HOST:PORT; None: $RAY_ADDRESS, else a local Ray
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str) -> dict[str, Any]:
        """A study file's ``[launcher]`` table as option values (unknown keys refused)."""
        known = {f.name for f in fields(cls)} - {"detach", "submitit_cluster"}
        out = {}
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"{where} [launcher]: unknown key {key!r}; accepted: {', '.join(sorted(known))}")
            out[name] = tuple(value) if name == "sbatch" and isinstance(value, list) else value
        return out

    def check(self, workers: int) -> None:
        """Every value, before anything is submitted."""
        if self.name not in LAUNCHERS:
            raise ConfigError(f"unknown --launcher {self.name!r}; accepted: {', '.join(LAUNCHERS)}")
        if self.detach and self.name == "local":
            raise ConfigError("--detach needs --launcher slurm: local workers are this command's processes")
        if self.detach and self.name == "ray":
            raise ConfigError("--detach is not available with --launcher ray: Ray ends a driver's tasks when the "
                              "driver exits; run the command as a Ray job instead (ray job submit -- cnnbench ...)")
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1; got {workers}")
        for flag, value, low in (("--cpus-per-task", self.cpus_per_task, 1), ("--gpus-per-task", self.gpus_per_task, 0),
                                 ("--signal-delay", self.signal_delay_s, 1), ("--max-requeues", self.max_requeues, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{flag} must be a whole number >= {low}; got {value!r}")
        for flag, value in (("--ray-num-cpus", self.num_cpus), ("--ray-num-gpus", self.num_gpus)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e6:
                raise ConfigError(f"{flag} must be a number >= 0; got {value!r}")
        if self.name == "slurm":
            minutes = slurm_minutes(self.time)
            if self.signal_delay_s >= minutes * 60:
                raise ConfigError(f"--signal-delay {self.signal_delay_s} s must be shorter than --time {self.time} "
                                  f"({minutes} min): the warning comes that long before the limit")
            if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?", str(self.mem)):
                raise ConfigError(f"--mem {self.mem!r} is not a Slurm memory size; accepted: a number of MB, or "
                                  f"with a K, M, G or T suffix (e.g. 8G)")
            sbatch_parameters(self.sbatch)
            for flag, value in (("--partition", self.partition), ("--account", self.account), ("--qos", self.qos)):
                if value is not None and not re.fullmatch(r"[A-Za-z0-9._,-]{1,200}", str(value)):
                    raise ConfigError(f"{flag} {value!r} is not a Slurm name (letters, digits, '.', '_', '-', ',')")


def check_available(name: str) -> None:
    """The engine a remote launcher needs is installed and reachable from here (before any run exists)."""
    import importlib.util
    import shutil

    module = {"slurm": "submitit", "ray": "ray"}.get(name)
    if module and importlib.util.find_spec(module) is None:
        raise ConfigError(f"--launcher {name} needs the {module} package: pip install \"cnnbench[cluster]\"")
    if name == "slurm":
        missing = [tool for tool in ("sbatch", "squeue", "scancel") if shutil.which(tool) is None]
        if missing:
            raise ConfigError(f"--launcher slurm: {', '.join(missing)} not found on PATH; run the command where Slurm's "
                              f"client commands work (a login node)")


def slurm_minutes(text: str | int) -> int:
    """sbatch ``--time`` as whole minutes (rounded up), in the formats Slurm accepts."""
    match = SLURM_TIME_RE.match(str(text).strip())
    if not match or isinstance(text, bool):
        raise ConfigError(f"--time {text!r} is not a Slurm time limit; accepted: MINUTES, MM:SS, HH:MM:SS, D-HH, "
                          f"D-HH:MM or D-HH:MM:SS")
    days, a, b, c = match.groups()
    parts = [int(a), int(b or 0), int(c or 0)]
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    elif c is not None:  # HH:MM:SS
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    elif b is not None:  # MM:SS
        seconds = parts[0] * 60 + parts[1]
    else:
        seconds = parts[0] * 60
    if not 60 <= seconds <= 365 * 86400:
        raise ConfigError(f"--time {text!r} must be between 1 minute and 365 days")
    return math.ceil(seconds / 60)


def sbatch_parameters(lines: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Extra sbatch options (``--constraint=a100``, ``--exclusive``) as submitit's additional parameters."""
    out: dict[str, Any] = {}
    for line in lines:
        text = str(line).strip()
        if text.startswith("#SBATCH"):
            text = text[len("#SBATCH"):].strip()
        match = SBATCH_RE.match(text)
        if not match or "\n" in text:
            raise ConfigError(f"--sbatch {line!r} is not one sbatch option; accepted: --NAME or --NAME=VALUE "
                              f"(e.g. --constraint=a100)")
        name, value = match.groups()
        if name in OWN_SBATCH:
            raise ConfigError(f"--sbatch {line!r}: --{name} is set by cnnbench itself (use its own option)")
        out[name.replace("-", "_")] = True if value is None else value
    return out


# -- multi-machine rules -------------------------------------------------------------------------
@dataclass
class Destination:
    """The URLs remote workers get (no password in either) and the environment that carries the credentials."""

    storage: str
    tracking_uri: str
    env: dict[str, str] = field(default_factory=dict)


def check_remote(launcher: str, storage_url: str, tracking_uri: str) -> Destination:
    """Refuse one-machine stores for a remote launcher; take the passwords out of the URLs."""
    from urllib.parse import urlsplit, urlunsplit

    from sqlalchemy.engine import URL, make_url

    from cnnbench.campaign import storage as storages
    from cnnbench.campaign.storage import canonical, is_sqlite, redact

    if is_sqlite(storage_url):
        raise ConfigError(f"--launcher {launcher}: the storage {redact(storage_url)} is a SQLite file on this machine; "
                          f"workers on other machines need --storage postgresql+psycopg2://USER@HOST/DB (the password "
                          f"in $CNNBENCH_STORAGE_PASSWORD, $PGPASSWORD or ~/.pgpass)")
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"--launcher {launcher}: the tracking URI {tracking_uri!r} is a store on this machine; workers "
                          f"on other machines need an MLflow server: --tracking-uri http://HOST:5000 (mlflow server "
                          f"with a database backend and --serve-artifacts)")
    env = {k: os.environ[k] for k in CREDENTIAL_ENV if k in os.environ}
    url = make_url(canonical(storage_url))
    if url.password:  # cnnbench's own variable: every storage opener reads it (campaign.storage.with_password)
        env[storages.PASSWORD_ENV] = str(url.password)
        url = URL.create(url.drivername, url.username, None, url.host, url.port, url.database, url.query)
    if parts.username or parts.password:  # http://USER:PASSWORD@HOST: MLflow reads them from the environment
        env["MLFLOW_TRACKING_USERNAME"] = parts.username or ""
        if parts.password:
            env["MLFLOW_TRACKING_PASSWORD"] = parts.password
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        tracking_uri = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return Destination(url.render_as_string(hide_password=False), tracking_uri, env)


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` set in this process while submitting (sbatch hands its environment to the tasks)."""
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- the task every remote worker runs -----------------------------------------------------------
def run_task(spec: dict[str, Any]) -> int:
    """One remote worker (a Slurm array task, a Ray task): the job source's entry point on ``spec``,
    under the campaign's signal policy plus SIGUSR2 (Slurm's warning before the time limit). Returns
    the worker's exit code (0: no job left; 130/143: interrupted, its job back in the queue)."""
    from cnnbench.campaign.workers import acknowledge, entry_point, exit_code_for, signal_policy

    spec = dict(spec)
    threads = int(spec.pop("threads", 0) or 0)
    max_requeues = int(spec.pop("max_requeues", 0) or 0)
    try:
        with signal_policy(extra=("SIGUSR2",)):  # first: a loaded node can take half a minute to import torch
            if threads:
                import torch

                torch.set_num_threads(threads)
            entry_point(spec["entry"])(spec)
    except KeyboardInterrupt as err:
        acknowledge()
        if "SIGUSR2" in str(err):
            requeue_this_task(max_requeues)
        return exit_code_for(err)
    return 0


def requeues_left(max_requeues: int) -> bool:
    """Whether this Slurm task has been requeued fewer than ``max_requeues`` times."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) < max_requeues


def requeue_this_task(max_requeues: int) -> bool:
    """Ask Slurm to requeue this array task (it starts again and claims the next job), at most
    ``max_requeues`` times per task; False outside Slurm or past the bound."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or not requeues_left(max_requeues):
        return False
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    target = f"{array}_{task}" if array and task else job
    print(f"worker: the time limit is near; requeueing Slurm task {target}", file=sys.stderr, flush=True)
    try:
        return subprocess.run(["scontrol", "requeue", target], timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class SlurmTask:
    """The callable submitit pickles: :func:`run_task` on the spec (a class, so the pickle names it by module).

    Checkpointable in submitit's sense: when Slurm's SIGUSR2 arrives before :func:`run_task` has
    installed the campaign's signal policy (while the task still unpickles and imports, which takes
    tens of seconds on a loaded node), submitit's own handler calls :meth:`checkpoint` and requeues
    the task, which has claimed nothing yet, instead of failing it as "not checkpointable"."""

    def __call__(self, spec: dict[str, Any]) -> int:
        return run_task(spec)

    def checkpoint(self, spec: dict[str, Any]):
        if not requeues_left(int(spec.get("max_requeues", 0) or 0)):
            return None  # submitit ends the task: past the bound, as requeue_this_task
        import submitit

        print("worker: the time limit is near; requeueing Slurm task (before it started its worker)",
              file=sys.stderr, flush=True)
        return submitit.helpers.DelayedSubmission(self, spec)


# -- launched workers ----------------------------------------------------------------------------
class Launched:
    """Workers started elsewhere: their ids, whether any is still queued or running, and cancel."""

    launcher = "local"
    job_id = ""

    def alive(self) -> bool:
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError

    def codes(self) -> list[int]:
        return []


class SlurmLaunched(Launched):
    launcher = "slurm"

    def __init__(self, jobs: list, cluster: str) -> None:
        self.jobs, self.cluster = jobs, cluster
        self.job_id = str(jobs[0].job_id).split("_")[0] if jobs else ""

    def alive(self) -> bool:
        if self.cluster != "slurm":  # submitit's local executor (tests): its own process states
            return not all(job.done() for job in self.jobs)
        # not submitit's job states: they come from sacct, which needs Slurm's accounting daemon. Every
        # state but an ended one counts (a requeued task passes through REQUEUED and COMPLETING)
        out = subprocess.run(["squeue", "-h", "-t", "all", "-j", self.job_id, "-o", "%T"], capture_output=True,
                             text=True, timeout=60)
        if out.returncode != 0:
            if "Invalid job id" in out.stderr:
                return False
            raise ConfigError(f"squeue failed while following Slurm job {self.job_id}: {out.stderr.strip()}")
        return any(state not in SLURM_ENDED for state in out.stdout.split())

    def cancel(self) -> None:
        if self.cluster == "slurm":
            subprocess.run(["scancel", self.job_id], timeout=60, check=False)
        else:
            for job in self.jobs:
                job.cancel(check=False)

    def codes(self) -> list[int]:
        out = []
        for job in self.jobs:
            try:
                out.append(int(job.result()) if job.done() else -1)
            except Exception:
                out.append(-1)
        return out


class RayLaunched(Launched):
    launcher = "ray"

    def __init__(self, refs: list, address: str) -> None:
        self.refs, self.job_id = refs, address
        self._done: dict[int, int] = {}

    def alive(self) -> bool:
        import ray

        ready, _ = ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
        for ref in ready:
            if id(ref) not in self._done:
                try:
                    self._done[id(ref)] = int(ray.get(ref, timeout=30))
                except Exception:  # the node or the worker died: the job's lease expires, another claims it
                    self._done[id(ref)] = -1
        return len(ready) < len(self.refs)

    def cancel(self) -> None:
        import ray

        for ref in self.refs:
            try:
                ray.cancel(ref)  # a KeyboardInterrupt in the task: its job ends KILLED and goes back to the queue
            except Exception:
                pass

    def codes(self) -> list[int]:
        return [self._done.get(id(ref), -1) for ref in self.refs]


def submit_slurm(spec: dict[str, Any], workers: int, options: LauncherOptions, env: dict[str, str], *,
                 name: str, cluster: str = "slurm") -> SlurmLaunched:
    """One Slurm array of ``workers`` tasks through submitit (``cluster="local"``: submitit's local
    executor, which runs the same task code as processes here)."""
    import submitit

    folder = Path(options.folder).expanduser().resolve() / name / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    minutes = slurm_minutes(options.time)
    params: dict[str, Any] = {"timeout_min": minutes, "name": f"cnnbench-{name}"[:120]}
    if cluster == "slurm":
        extra = sbatch_parameters(options.sbatch)
        slurm = {"slurm_partition": options.partition, "slurm_account": options.account, "slurm_qos": options.qos,
                 "slurm_mem": options.mem, "slurm_signal_delay_s": options.signal_delay_s,
                 "slurm_array_parallelism": workers, "slurm_additional_parameters": extra or None,
                 "cpus_per_task": options.cpus_per_task,
                 "slurm_gpus_per_task": options.gpus_per_task or None}
        params.update({k: v for k, v in slurm.items() if v is not None})
    executor.update_parameters(**params)
    threads = options.cpus_per_task
    specs = [{**spec, "index": index, "threads": threads, "max_requeues": options.max_requeues, "parent_pid": None}
             for index in range(workers)]
    with environment(env):
        jobs = executor.map_array(SlurmTask(), specs)
    return SlurmLaunched(jobs, cluster)


def submit_ray(spec: dict[str, Any], workers: int, options: LauncherOptions, env: dict[str, str]) -> RayLaunched:
    """``workers`` plain Ray tasks (``num_cpus``/``num_gpus`` each); the credentials in their
    runtime environment. A task whose node dies is retried by Ray on another node."""
    import ray

    address = options.ray_address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        try:
            ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=True,
                     include_dashboard=False if address in (None, "local") else None)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise ConfigError(f"--ray-address {address or '(local)'}: could not connect to Ray ({err})") from None
    task = ray.remote(num_cpus=options.num_cpus, num_gpus=options.num_gpus, max_retries=3,
                      retry_exceptions=False)(run_task)
    threads = max(1, int(options.num_cpus)) if options.num_cpus else 1
    refs = [task.remote({**spec, "index": index, "threads": threads, "parent_pid": None}) for index in range(workers)]
    return RayLaunched(refs, address or "local")


def launch(spec: dict[str, Any], workers: int, options: LauncherOptions, env: dict[str, str], *, name: str) -> Launched:
    """``workers`` remote workers on ``spec`` (each gets its ``index``; its torch threads come from the
    launcher's CPUs per task, so the caller's spec says one worker per machine share). A refused
    submission (sbatch refusing a partition or an account, Ray unreachable) is a one-line ConfigError."""
    if options.name not in ("slurm", "ray"):
        raise ConfigError(f"--launcher {options.name!r} does not launch remote workers")
    try:
        if options.name == "slurm":
            return submit_slurm(spec, workers, options, env, name=name, cluster=options.submitit_cluster)
        return submit_ray(spec, workers, options, env)
    except ConfigError:
        raise
    except Exception as err:
        text = str(err).strip().splitlines()
        raise ConfigError(f"--launcher {options.name}: submitting the workers failed: "
                          f"{text[-1] if text else type(err).__name__}") from None


def follow(launched: Launched, done: Callable[[], bool], progress: Callable[[], None] | None = None, *,
           poll_s: float = FOLLOW_POLL_S, stream=None) -> bool:
    """Wait until the campaign is done (``done()``, read from its storage) or no launched worker is
    queued or running any more; ``progress()`` whenever it may have changed. True when done."""
    gone = 0
    while True:
        if done():
            return True
        gone = 0 if launched.alive() else gone + 1
        if gone >= FOLLOW_CONFIRM:  # seen several times: not a requeue passing between states
            return done()
        if progress is not None:
            progress()
        time.sleep(poll_s)
