"""Real servers for the tests, started and stopped by process id (never by name): a throwaway
PostgreSQL, an ``mlflow server`` on it, and a one-node Slurm (munged, slurmctld, slurmd). Each is a
context manager; the fixtures that use them skip with a reason where a binary is missing.
See ../shared/docs/CLUSTERS.md for the configuration seen to work on these machines."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from faultkit import free_port, start_mlflow_server, stop


class Unavailable(Exception):
    """A server cannot be started here (the reason is the message): the fixture skips."""


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return candidates[-1].parent if candidates else None


@contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1; yields its URL (initdb refuses root: run as 'postgres' then)."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        raise Unavailable("PostgreSQL binaries (initdb, pg_ctl) not found; install Debian's postgresql package")
    folder = Path(tempfile.mkdtemp(prefix="cnnbench-pg-"))  # not under pytest's root-only tmp: postgres must reach it
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise Unavailable("running as root and runuser is missing: cannot start PostgreSQL as a non-root user")
        try:
            shutil.chown(folder, "postgres")
        except (LookupError, PermissionError) as err:
            raise Unavailable(f"running as root without a usable 'postgres' user ({err})") from None
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def create_database(url: str, name: str) -> str:
    """A new database on the server of ``url``; its URL (psycopg2 named)."""
    import sqlalchemy as sa

    base = url.replace("postgresql://", "postgresql+psycopg2://")
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return base.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def mlflow_server(backend: str, artifacts: Path) -> Iterator[str]:
    """``mlflow server`` on ``backend`` (serving artifacts from ``artifacts``) on a free loopback port
    (faultkit's, stopped by its process group: it spawns workers); yields its http URL."""
    port = free_port()
    try:
        proc = start_mlflow_server(backend, artifacts, port, environ=dict(os.environ))
    except AssertionError as err:
        raise Unavailable(str(err)) from None
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


SLURM_CONF = """ClusterName=cnnbench-test
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10,socket={munge_socket}
StateSaveLocation={dir}/state/ctld
SlurmdSpoolDir={dir}/state/d
SlurmctldPidFile={dir}/state/slurmctld.pid
SlurmdPidFile={dir}/state/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
KillWait=5
MinJobAge=300
NodeName={host} CPUs={cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def slurm(folder: Path, cpus: int = 2, timeout_s: float = 60) -> Iterator[dict[str, str]]:
    """A one-node Slurm (its own munged, slurmctld and slurmd, config in ``folder``); yields the
    environment its client commands need (``SLURM_CONF``). At the end every job is cancelled and
    the queue drained before the daemons are stopped by process id."""
    for binary in ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "munged", "srun"):
        if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
            raise Unavailable(f"Slurm is not installed ({binary} missing): apt-get install slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        raise Unavailable("a one-node Slurm needs root here (slurmd runs jobs as their user)")
    if not Path("/etc/munge/munge.key").exists():
        raise Unavailable("munge has no key (/etc/munge/munge.key); the munge package creates it")
    host = socket.gethostname().split(".")[0]
    for sub in ("state/ctld", "state/d", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # munged checks every folder above its socket (root-owned, not writable by others): under /run,
    # not under pytest's 0700 temporary folders
    munge_dir = Path(tempfile.mkdtemp(prefix="cnnbench-munge-", dir="/run" if os.access("/run", os.W_OK) else None))
    shutil.chown(munge_dir, "munge", "munge")
    os.chmod(munge_dir, 0o755)
    munge_socket = munge_dir / "munge.socket"
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, dir=folder, cpus=cpus, ctld_port=free_port(), d_port=free_port(),
                                      munge_socket=munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            ["runuser", "-u", "munge", "--", "/usr/sbin/munged", "-F", f"--socket={munge_socket}",
             f"--pid-file={munge_dir}/munged.pid", f"--seed-file={munge_dir}/seed", "--force"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        _wait(lambda: munge_socket.exists(), timeout_s, "munged did not create its socket")
        procs.append(subprocess.Popen(["/usr/sbin/slurmctld", "-D", "-f", str(conf)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        procs.append(subprocess.Popen(["/usr/sbin/slurmd", "-D", "-f", str(conf), "-N", host], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))

        def idle() -> bool:
            for p in procs:
                if p.poll() is not None:
                    raise Unavailable(f"a Slurm daemon exited ({p.args[0]}): {_tail(folder / 'log')}")
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            return out.returncode == 0 and out.stdout.strip() == "idle"

        _wait(idle, timeout_s, f"the Slurm node never became idle: {_tail(folder / 'log')}")
        yield {"SLURM_CONF": str(conf)}
    finally:
        if len(procs) == 3 and procs[1].poll() is None:
            subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)
            try:
                _wait(lambda: not subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip(),
                      60, "")
            except Unavailable:
                pass
        for p in reversed(procs):  # slurmd, slurmctld, munged
            stop(p)
        shutil.rmtree(munge_dir, ignore_errors=True)


def _wait(ready, timeout_s: float, message: str) -> None:
    deadline = time.time() + timeout_s
    while not ready():
        if time.time() > deadline:
            raise Unavailable(message)
        time.sleep(0.3)


def _tail(folder: Path) -> str:
    return " | ".join(f"{p.name}: {p.read_text()[-600:]}" for p in sorted(folder.glob("*.log")))
