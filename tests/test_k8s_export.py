"""``cnnbench study export-k8s``, checked offline (no cluster): every document deserializes into its
Kubernetes model (the ``kubernetes`` client refuses missing required fields and wrong types) and
serializes back to exactly the document (a misspelt or unknown field, which deserialization drops
silently, fails); then what matters: an Indexed Job of --workers pods each running a command
``cnnbench study run`` accepts, the failure policy of its exit codes, the password only in the
Secret, a study FILE mounted from a ConfigMap with its exact text, bad inputs refused before any YAML.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from kubernetes.client import ApiClient

from cnnbench.study.command import run_
from cnnbench.study.k8s import STUDY_MOUNT, default_job_name

STORAGE = "postgresql+psycopg2://cnnbench@db.example.svc:5432/studies"
TRACKING = "http://mlflow.example.svc:5000"
BASE = ["--storage", STORAGE, "--tracking-uri", TRACKING, "--image", "registry.example/cnnbench:1.0"]
BUILTIN = "digits-optimizers"


@pytest.fixture
def export(cli, monkeypatch):
    """``export(*args)`` -> (result, documents); credentials in the environment, which must stay out."""
    monkeypatch.setenv("PGPASSWORD", "pg-env-s3cret")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "mlflow-env-s3cret")

    def invoke(*args: str):
        result = cli("study", "export-k8s", *args)
        assert result.exit_code == 0, result.output
        return result, list(yaml.safe_load_all(result.stdout))

    return invoke


@pytest.fixture
def study_file(tmp_path):
    """A study FILE (the built-in example's text, a non-ASCII comment and a line ending in spaces)
    whose file name differs from its study name."""
    from cnnbench.study import catalog

    _, text = catalog.source(BUILTIN)
    path = tmp_path / "my_study.toml"
    path.write_text("# naïve — an études comment   \n" + text + "\n\n", encoding="utf-8")
    return path


def model_of(doc: dict):
    return ApiClient()._ApiClient__deserialize(doc, f"V1{doc['kind']}")


def job_of(docs: list[dict]) -> dict:
    (job,) = [d for d in docs if d["kind"] == "Job"]
    return job


def container_of(job: dict) -> dict:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def run_params(container: dict) -> dict:
    """The pod's command parsed by the `cnnbench study run` Click command itself."""
    command = container["command"]
    assert command[:3] == ["cnnbench", "study", "run"]
    return run_.make_context("run", list(command[3:])).params


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


# -- valid Kubernetes objects ---------------------------------------------------------------------
@pytest.mark.parametrize("source", ["builtin", "file"])
def test_every_document_is_a_valid_kubernetes_object_with_no_unknown_field(export, study_file, source):
    ref = BUILTIN if source == "builtin" else str(study_file)
    _, docs = export(ref, *BASE, "--workers", "3", "--gpus", "1", "--namespace", "ml", "--budget", "quick")
    assert [d["kind"] for d in docs] == (["Job"] if source == "builtin" else ["ConfigMap", "Job"])
    client = ApiClient()
    for doc in docs:
        assert client.sanitize_for_serialization(model_of(doc)) == doc
        assert doc["metadata"]["namespace"] == "ml"


def test_the_round_trip_catches_a_misspelt_field_and_the_models_a_missing_one(export):
    _, docs = export(BUILTIN, *BASE)
    job = job_of(docs)
    misspelt = copy.deepcopy(job)
    misspelt["spec"]["completionMod"] = misspelt["spec"].pop("completionMode")
    assert ApiClient().sanitize_for_serialization(model_of(misspelt)) != misspelt
    missing = copy.deepcopy(job)
    del container_of(missing)["name"]
    with pytest.raises(ValueError):  # pydantic.ValidationError (a ValueError) in recent clients
        model_of(missing)


# -- the Job ---------------------------------------------------------------------------------------
def test_an_indexed_job_of_one_pod_per_worker_with_a_failure_policy_for_the_exit_codes(export):
    _, docs = export(BUILTIN, *BASE, "--workers", "8")
    spec = job_of(docs)["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 8
    assert spec["backoffLimitPerIndex"] >= 1 and 0 <= spec["maxFailedIndexes"] <= 8
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by podFailurePolicy
    assert pod["terminationGracePeriodSeconds"] >= 120  # the cell ends KILLED and is uploaded
    rules = spec["podFailurePolicy"]["rules"]

    def action(code: int | None = None, condition: str | None = None) -> str:
        for rule in rules:  # Kubernetes applies the first rule that matches
            codes = rule.get("onExitCodes")
            if code is not None and codes and codes["operator"] == "In" and code in codes["values"]:
                return rule["action"]
            if condition and any(c["type"] == condition for c in rule.get("onPodConditions", [])):
                return rule["action"]
        return "Count"

    assert action(3) == "FailIndex"  # the campaign ended with failed jobs: a new pod would not help
    assert action(143) == "Ignore"  # SIGTERM: the cell went back to the queue, no retry used
    assert action(condition="DisruptionTarget") == "Ignore"  # evicted, preempted
    assert action(1) == action(2) == action(137) == "Count"  # crashes and bad configuration use the backoff
    assert all(0 not in (r.get("onExitCodes") or {}).get("values", []) for r in rules)


def test_each_pod_runs_one_local_worker_of_the_shared_study(export):
    _, docs = export(BUILTIN, *BASE, "--budget", "quick", "--set", "epochs=2", "--set", "batch_size=32",
                     "--heartbeat-interval", "20", "--max-retries", "2", "--experiment", "k8s-studies")
    container = container_of(job_of(docs))
    assert container["image"] == "registry.example/cnnbench:1.0"
    params = run_params(container)
    assert params["study_ref"] == BUILTIN and params["workers"] == 1 and params["launcher_name"] == "local"
    assert params["storage"] == STORAGE and params["tracking_uri"] == TRACKING
    assert params["study_name"] == "digits-optimizers-quick" and params["budget"] == "quick"
    assert params["sets"] == ("epochs=2", "batch_size=32")
    assert params["heartbeat_interval"] == 20 and params["max_retries"] == 2 and params["experiment"] == "k8s-studies"


def test_resources_and_threads_follow_the_cpu_memory_and_gpu_options(export):
    _, docs = export(BUILTIN, *BASE, "--cpu", "3500m", "--memory", "6Gi", "--gpus", "2")
    container = container_of(job_of(docs))
    assert container["resources"]["requests"] == {"cpu": "3500m", "memory": "6Gi"}
    assert container["resources"]["limits"] == {"cpu": "3500m", "memory": "6Gi", "nvidia.com/gpu": "2"}
    assert env_of(container)["OMP_NUM_THREADS"]["value"] == "3"
    _, docs = export(BUILTIN, *BASE)
    assert "nvidia.com/gpu" not in container_of(job_of(docs))["resources"]["limits"]


def test_the_password_comes_only_from_the_secret(export):
    result, docs = export(BUILTIN, *BASE, "--secret", "study-db")
    assert "s3cret" not in result.output  # neither PGPASSWORD nor MLFLOW_TRACKING_PASSWORD of this shell
    env = env_of(container_of(job_of(docs)))
    assert env["PGPASSWORD"] == {"name": "PGPASSWORD",
                                 "valueFrom": {"secretKeyRef": {"name": "study-db", "key": "PGPASSWORD"}}}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "study-db", "key": name, "optional": True}
    assert all("value" not in e for e in env.values() if "PASSWORD" in e["name"])
    assert "kubectl create secret generic study-db --from-literal=PGPASSWORD=" in result.stderr


def test_a_study_file_is_mounted_from_a_configmap_with_its_exact_text(export, study_file):
    _, docs = export(str(study_file), *BASE, "--workers", "2")
    config_map, job = docs
    assert config_map["kind"] == "ConfigMap"
    ((key, text),) = config_map["data"].items()
    assert text == study_file.read_text(encoding="utf-8")
    container, pod = container_of(job), job["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == volume["name"] and mount["mountPath"] == STUDY_MOUNT
    params = run_params(container)
    assert params["study_ref"] == f"{STUDY_MOUNT}/{key}"
    assert params["study_name"] == BUILTIN  # the file's study name, as `study run FILE` names it


def test_a_builtin_study_runs_by_name_with_nothing_mounted(export):
    _, docs = export(BUILTIN, *BASE)
    container, pod = container_of(job_of(docs)), job_of(docs)["spec"]["template"]["spec"]
    assert run_params(container)["study_ref"] == BUILTIN
    assert "volumes" not in pod and "volumeMounts" not in container


def test_the_default_job_name_is_a_dns_label_that_leaves_room_for_the_index(export):
    _, docs = export(BUILTIN, *BASE, "--study-name", "My_Study.v2")
    assert job_of(docs)["metadata"]["name"] == "cnnbench-my-study-v2"
    long = default_job_name("x" * 200, 1000)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", long) and len(long + "-999") <= 63
    _, docs = export(BUILTIN, *BASE, "--job-name", "nightly-digits")
    assert job_of(docs)["metadata"]["name"] == "nightly-digits"


# -- refused before anything is printed -----------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--storage", "sqlite:///optuna.db", "--tracking-uri", TRACKING], "is a SQLite file on this machine"),
    (["--storage", "postgresql://cnnbench:hunter2@db/studies", "--tracking-uri", TRACKING],
     "put the password in the Secret 'cnnbench' under the key PGPASSWORD"),
    (["--storage", STORAGE, "--tracking-uri", "file:///tmp/mlruns"], "is a store on this machine"),
    (["--storage", STORAGE, "--tracking-uri", "sqlite:///mlflow.db"], "is a store on this machine"),
    (["--storage", STORAGE, "--tracking-uri", "http://me:hunter2@mlflow:5000"],
     "under the keys MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    ([*BASE, "--job-name", "Study_Job"], "--job-name 'Study_Job' is not accepted: a DNS-1123 label"),
    ([*BASE, "--job-name", "j" * 62, "--workers", "10"], "of at most 61 characters with --workers 10"),
    ([*BASE, "--namespace", "ML"], "--namespace 'ML' is not a Kubernetes namespace name"),
    ([*BASE, "--cpu", "lots"], "--cpu 'lots' is not a Kubernetes CPU quantity"),
    ([*BASE, "--memory", "4GB"], "--memory '4GB' is not a Kubernetes memory quantity"),
    ([*BASE, "--workers", "0"], "--workers must be a whole number from 1"),
    ([*BASE, "--budget", "enormous"], "unknown --budget 'enormous'"),
    (["--storage", STORAGE], "needs the MLflow server every pod logs to: --tracking-uri"),
])
def test_bad_inputs_exit_non_zero_with_the_reason_and_print_no_yaml(cli, monkeypatch, args, message):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = cli("study", "export-k8s", BUILTIN, *args)
    assert result.exit_code != 0
    assert message in result.stderr
    assert result.stdout == "" and "hunter2" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unknown_study_or_a_bad_cell_is_refused_before_any_yaml(cli):
    result = cli("study", "export-k8s", "no-such-study", *BASE)
    assert result.exit_code != 0 and "unknown study 'no-such-study'" in result.stderr and result.stdout == ""
    result = cli("study", "export-k8s", BUILTIN, *BASE, "--set", "model=no-such-model")
    assert result.exit_code != 0 and "no-such-model" in result.stderr and result.stdout == ""
