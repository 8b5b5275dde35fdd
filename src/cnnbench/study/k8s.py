"""The Kubernetes manifests of ``cnnbench study export-k8s``: one Indexed Job of N pods, each running
``cnnbench study run ... --workers 1 --launcher local`` on one shared PostgreSQL queue and one MLflow
server (plus, for a study FILE, a ConfigMap holding the file, mounted into every pod). No Click here.

Every input is checked before anything is built (one-line :class:`~cnnbench.errors.ConfigError`),
and no credential ever reaches the manifest: a password in ``--storage`` or in the tracking URI is
refused; the pods read it from a Secret (``PGPASSWORD``, optional ``MLFLOW_TRACKING_*`` keys).

The pod failure policy follows the exit codes of ``cnnbench study run`` (:mod:`cnnbench.campaign`):

- 0: nothing is left to claim (every pod waits until no job runs anywhere): the index succeeds;
- 3: the campaign ended with jobs failed after their retries: ``FailIndex`` (a new pod would only
  print the same report), so the Job ends Failed once every index is done;
- 143: SIGTERM (``kubectl delete pod``, a drain): its cell ended KILLED and went back to the queue
  without using a retry: ``Ignore`` (a replacement pod rejoins, nothing counted);
- a pod failed by a disruption (condition ``DisruptionTarget``: eviction, preemption, node
  shutdown), whatever its exit code: ``Ignore`` as well;
- anything else (1: a crash or an unreachable server, 2: a configuration error, 137: out of
  memory): counted against ``backoffLimitPerIndex`` (retried with Kubernetes' growing delay).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from cnnbench.campaign import DEFAULT_HEARTBEAT_S, EXIT_JOBS_FAILED, EXIT_TERMINATED
from cnnbench.errors import ConfigError

DEFAULT_IMAGE = "cnnbench:latest"
DEFAULT_SECRET = "cnnbench"
DEFAULT_WORKERS = 4
DEFAULT_CPU = "1"
DEFAULT_MEMORY = "4Gi"
BACKOFF_LIMIT_PER_INDEX = 3
GRACE_PERIOD_S = 120  # SIGTERM: the running cell ends KILLED and its run is uploaded before SIGKILL
MAX_WORKERS = 100_000  # Kubernetes' bound on completions with backoffLimitPerIndex
CONFIGMAP_MAX_BYTES = 1_000_000  # a ConfigMap holds at most 1 MiB
STUDY_MOUNT = "/etc/cnnbench/study"
CONTAINER = "worker"
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CPU_RE = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
MEMORY_RE = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")
# MLflow's own credential variables: optional keys of the Secret
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@dataclass
class Export:
    """What ``export-k8s`` was asked for (the command line's values)."""

    study_ref: str  # built-in name or study FILE, as given
    storage: str
    tracking_uri: str | None
    workers: int = DEFAULT_WORKERS
    image: str = DEFAULT_IMAGE
    namespace: str | None = None
    secret: str = DEFAULT_SECRET
    cpu: str = DEFAULT_CPU
    memory: str = DEFAULT_MEMORY
    gpus: int = 0
    budget: str | None = None
    sets: tuple[str, ...] = ()
    study_name: str | None = None
    heartbeat_interval: int = DEFAULT_HEARTBEAT_S
    job_name: str | None = None
    max_jobs: int | None = None
    max_retries: int | None = None
    experiment: str | None = None


def password_key(storage: str) -> str:
    """The Secret key (and pod variable) carrying the storage's password: ``PGPASSWORD`` for
    PostgreSQL (libpq reads it), else cnnbench's own ``CNNBENCH_STORAGE_PASSWORD``."""
    from sqlalchemy.engine import make_url

    from cnnbench.campaign import storage as storages

    return "PGPASSWORD" if make_url(storage).get_backend_name() == "postgresql" else storages.PASSWORD_ENV


def check_urls(storage: str, tracking_uri: str | None, secret: str) -> tuple[str, str]:
    """(storage, tracking URI) as the pods get them; a ConfigError for a one-machine store or a
    credential inside a URL (it would be in the manifest: it belongs in the Secret)."""
    import os
    from urllib.parse import urlsplit

    from sqlalchemy.engine import make_url

    from cnnbench.campaign import storage as storages
    from cnnbench.campaign.launchers import check_remote

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError("export-k8s needs the MLflow server every pod logs to: --tracking-uri http://HOST:5000 "
                          "(or $MLFLOW_TRACKING_URI)")
    storages.check_url(storage)
    if not storages.is_sqlite(storage) and make_url(storage).password:
        key = password_key(storage)
        raise ConfigError(f"--storage {storages.redact(storage)} holds a password, which would be written into the "
                          f"manifest; give the URL without it and put the password in the Secret {secret!r} under the "
                          f"key {key} (kubectl create secret generic {secret} --from-literal={key}=...)")
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and (parts.username or parts.password):
        raise ConfigError(f"--tracking-uri {parts.scheme}://***@{parts.hostname}: give the URL without credentials and "
                          f"put them in the Secret {secret!r} under the keys MLFLOW_TRACKING_USERNAME and "
                          f"MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
    try:
        check_remote("kubernetes", storage, uri)
    except ConfigError as err:  # its rules, worded for this command
        raise ConfigError(str(err).replace("--launcher kubernetes:", "export-k8s:", 1)) from None
    return storage, uri


def check_quantities(spec: Export) -> int:
    """The pod's CPU, memory and GPUs; returns the torch threads of its worker (the whole CPUs)."""
    if not isinstance(spec.workers, int) or not 1 <= spec.workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be a whole number from 1 to {MAX_WORKERS}; got {spec.workers!r}")
    if not isinstance(spec.heartbeat_interval, int) or spec.heartbeat_interval < 1:
        raise ConfigError(f"--heartbeat-interval must be at least 1; got {spec.heartbeat_interval!r}")
    if spec.max_retries is not None and (not isinstance(spec.max_retries, int) or spec.max_retries < 0):
        raise ConfigError(f"--max-retries must be a whole number >= 0; got {spec.max_retries!r}")
    if not isinstance(spec.gpus, int) or spec.gpus < 0:
        raise ConfigError(f"--gpus must be a whole number >= 0; got {spec.gpus!r}")
    cpu = str(spec.cpu).strip()
    if not CPU_RE.match(cpu) or _cpus(cpu) <= 0:
        raise ConfigError(f"--cpu {spec.cpu!r} is not a Kubernetes CPU quantity; accepted: a number of CPUs (2, 1.5) "
                          f"or millicores (500m)")
    memory = str(spec.memory).strip()
    if not MEMORY_RE.match(memory) or float(re.match(r"^\d+(\.\d+)?", memory).group()) <= 0:
        raise ConfigError(f"--memory {spec.memory!r} is not a Kubernetes memory quantity; accepted e.g. 4Gi, 512Mi, 8G")
    if not IMAGE_RE.match(spec.image or "") or len(spec.image) > 512:
        raise ConfigError(f"--image {spec.image!r} is not a container image reference (REGISTRY/NAME:TAG)")
    return max(1, math.floor(_cpus(cpu)))


def _cpus(text: str) -> float:
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def default_job_name(study_name: str, workers: int) -> str:
    """``cnnbench-<study name>`` made a DNS-1123 label short enough for the pods' ``NAME-INDEX`` hostnames."""
    base = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"cnnbench-{study_name}".lower())).strip("-")
    return base[: job_name_limit(workers)].rstrip("-")


def job_name_limit(workers: int) -> int:
    """An Indexed Job's pods are named (and their hostnames are) ``NAME-INDEX``: a DNS label of at most 63."""
    return 63 - len(f"-{workers - 1}")


def check_names(spec: Export, job_name: str) -> None:
    limit = job_name_limit(spec.workers)
    if not DNS_LABEL_RE.match(job_name) or len(job_name) > limit:
        raise ConfigError(f"--job-name {job_name!r} is not accepted: a DNS-1123 label (lower-case letters, digits and "
                          f"'-', starting and ending with a letter or digit) of at most {limit} characters with "
                          f"--workers {spec.workers} (the pods' hostnames are NAME-INDEX)")
    if spec.namespace is not None and (not DNS_LABEL_RE.match(spec.namespace) or len(spec.namespace) > 63):
        raise ConfigError(f"--namespace {spec.namespace!r} is not a Kubernetes namespace name (a DNS-1123 label: "
                          f"lower-case letters, digits and '-', at most 63 characters)")
    if not DNS_SUBDOMAIN_RE.match(spec.secret or "") or len(spec.secret) > 253:
        raise ConfigError(f"--secret {spec.secret!r} is not a Kubernetes Secret name (lower-case letters, digits, '-' "
                          f"and '.', at most 253 characters)")


def build(spec: Export) -> list[dict[str, Any]]:
    """The manifests (ConfigMap for a study FILE, then the Job) as plain dicts; every check first."""
    from cnnbench.study import catalog, definition
    from cnnbench.study.run import resolve_cells

    storage, tracking_uri = check_urls(spec.storage, spec.tracking_uri, spec.secret)
    threads = check_quantities(spec)
    if spec.study_name is not None:
        definition.check_study_name(spec.study_name)
    source, text = catalog.source(spec.study_ref)
    is_file = text is None
    limit = definition.MAX_JOBS if spec.max_jobs is None else spec.max_jobs
    study = definition.load(source, text, budget=spec.budget, sets=spec.sets, max_jobs=limit)
    resolve_cells(study)
    campaign = spec.study_name or study.study_id
    job_name = spec.job_name if spec.job_name is not None else default_job_name(campaign, spec.workers)
    check_names(spec, job_name)

    labels = {"app.kubernetes.io/name": "cnnbench", "app.kubernetes.io/component": "study-worker",
              "app.kubernetes.io/instance": job_name}
    annotations = {"cnnbench/study": campaign, "cnnbench/source": spec.study_ref}

    def metadata(name: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name}
        if spec.namespace:
            meta["namespace"] = spec.namespace
        return {**meta, "labels": dict(labels), "annotations": dict(annotations)}

    docs: list[dict[str, Any]] = []
    ref = f"{STUDY_MOUNT}/{study.name}.toml" if is_file else spec.study_ref
    config_map = f"{job_name}-study"
    if is_file:
        if len(study.source_text.encode("utf-8")) > CONFIGMAP_MAX_BYTES:
            raise ConfigError(f"study file {source} is larger than a ConfigMap holds (1 MiB)")
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(config_map),
                     "data": {f"{study.name}.toml": study.source_text}})

    args = [ref, "--workers", "1", "--launcher", "local", "--storage", storage, "--tracking-uri", tracking_uri,
            "--heartbeat-interval", str(spec.heartbeat_interval), "--study-name", campaign]
    if spec.budget:
        args += ["--budget", spec.budget]
    for pair in spec.sets:
        args += ["--set", pair]
    if spec.max_jobs is not None:
        args += ["--max-jobs", str(spec.max_jobs)]
    if spec.max_retries is not None:
        args += ["--max-retries", str(spec.max_retries)]
    if spec.experiment:
        args += ["--experiment", spec.experiment]

    key = password_key(storage)
    env: list[dict[str, Any]] = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": spec.secret, "key": key}}},
        *({"name": name, "valueFrom": {"secretKeyRef": {"name": spec.secret, "key": name, "optional": True}}}
          for name in MLFLOW_SECRET_KEYS),
        {"name": "OMP_NUM_THREADS", "value": str(threads)},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    cpu, memory = str(spec.cpu).strip(), str(spec.memory).strip()
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
    if spec.gpus:
        resources["limits"]["nvidia.com/gpu"] = str(spec.gpus)
    container: dict[str, Any] = {"name": CONTAINER, "image": spec.image,
                                 "command": ["cnnbench", "study", "run", *args], "env": env, "resources": resources}
    pod: dict[str, Any] = {"restartPolicy": "Never", "terminationGracePeriodSeconds": GRACE_PERIOD_S,
                           "containers": [container]}
    if is_file:
        container["volumeMounts"] = [{"name": "study", "mountPath": STUDY_MOUNT, "readOnly": True}]
        pod["volumes"] = [{"name": "study", "configMap": {"name": config_map}}]
    failure_policy = {"rules": [
        {"action": "FailIndex",
         "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_JOBS_FAILED]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "Ignore",
         "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_TERMINATED]}},
    ]}
    docs.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata(job_name), "spec": {
        "completionMode": "Indexed", "completions": spec.workers, "parallelism": spec.workers,
        "backoffLimitPerIndex": BACKOFF_LIMIT_PER_INDEX, "maxFailedIndexes": spec.workers,
        "podFailurePolicy": failure_policy,
        "template": {"metadata": {"labels": dict(labels), "annotations": dict(annotations)}, "spec": pod}}})
    return docs


def render(docs: list[dict[str, Any]]) -> str:
    """Multi-document YAML from PyYAML's safe dumper (plain types only), a multi-line text (the study
    file in the ConfigMap) as a literal block where YAML allows one, so the manifest reads like the file."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump_all(docs, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
