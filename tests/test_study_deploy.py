"""The deploy/ examples start workers with a command line ``cnnbench study run`` accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from cnnbench.study.command import command

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def parses(args: list[str]) -> dict:
    ctx = command.commands["run"].make_context("run", list(args))
    return ctx.params


def test_kubernetes_job_runs_parallel_workers_of_one_study():
    docs = list(yaml.safe_load_all((DEPLOY / "k8s-study-job.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 8
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["cnnbench", "study", "run"]
    params = parses(container["command"][3:])
    assert params["study_ref"] == "digits-optimizers" and params["workers"] == 1
    assert params["storage"] == "$(CNNBENCH_STUDY_STORAGE)"  # Kubernetes expands it from the Secret
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert secret["stringData"]["CNNBENCH_STUDY_STORAGE"].startswith("postgresql://")


def test_slurm_array_script_is_valid_bash_running_one_worker_per_task():
    script = DEPLOY / "slurm-study.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith("exec cnnbench study run"))
    assert '--storage "$CNNBENCH_STUDY_STORAGE"' in line and "--workers 1" in line
