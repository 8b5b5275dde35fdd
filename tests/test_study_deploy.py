"""deploy/README.md stays true to the commands: every ``cnnbench`` command line in its code blocks
is one its Click command accepts, its ``export-k8s`` example prints a manifest, and it names no
hand-written deploy file that no longer exists (the Slurm script and the Kubernetes Job are now
made by ``study run --launcher slurm`` and ``study export-k8s``)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
README = DEPLOY / "README.md"


def commands() -> list[list[str]]:
    """The ``cnnbench ...`` lines of the README's code blocks (continuations joined), as argv."""
    text = README.read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"^ *```\n(.*?)^ *```", text, flags=re.DOTALL | re.MULTILINE):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip()
            found = re.search(r"(?:^|--\s+)cnnbench (?=study |tune )", line)
            if found:
                argv = shlex.split(line[found.end() - len("cnnbench "):], comments=True)
                out.append([a for a in argv[1:] if a != ">" and not a.endswith(".yaml")])
    return out


def parse(argv: list[str]) -> tuple[str, dict]:
    """Resolve the subcommand through cnnbench's groups and parse its options with Click."""
    from cnnbench.cli import main

    command: click.Command = main
    path, args = [], list(argv)
    while isinstance(command, click.Group):
        name = args.pop(0)
        command = command.get_command(click.Context(command), name)
        assert command is not None, f"no command {' '.join([*path, name])}"
        path.append(name)
    return " ".join(path), command.make_context(path[-1], args).params


def test_the_readme_shows_each_route():
    seen = {name for name, _ in map(parse, commands())}
    assert {"study run", "study export-k8s", "study status", "study report", "tune"} <= seen


@pytest.mark.parametrize("argv", commands(), ids=lambda a: " ".join(a[:3]))
def test_every_command_line_in_the_readme_is_accepted(argv):
    name, params = parse(argv)
    if name == "study run" and params.get("launcher_name"):
        assert params["storage"].startswith("postgresql+psycopg2://") and ":" not in params["storage"].split("//")[1].split("@")[0]
        assert params["tracking_uri"].startswith("http")


def test_the_readme_export_example_prints_a_job(cli):
    (argv,) = [a for a in commands() if a[:2] == ["study", "export-k8s"]]
    result = cli(*argv)
    assert result.exit_code == 0, result.output
    (job,) = yaml.safe_load_all(result.stdout)
    assert job["kind"] == "Job"
    name = job["metadata"]["name"]
    assert f"-l app.kubernetes.io/instance={name}" in README.read_text(encoding="utf-8")  # its kubectl lines


def test_no_hand_written_manifest_or_script_is_left_or_named():
    assert not (DEPLOY / "k8s-study-job.yaml").exists() and not (DEPLOY / "slurm-study.sbatch").exists()
    text = README.read_text(encoding="utf-8")
    assert "k8s-study-job.yaml" not in text and "slurm-study.sbatch" not in text
