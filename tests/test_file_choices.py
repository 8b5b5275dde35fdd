"""What a study file may choose (issue 30, the rule of FAULTS X26 applied to the launcher table).

A study file describes an experiment. Where its workers run and who receives the user's store
credentials is the command line's: a ``[launcher] ray_address`` is used only when it is the user's own
(``--ray-address``, ``$RAY_ADDRESS``) or with ``--use-file-destination``; a ``[launcher] folder``
(submitit's job scripts and pickled tasks) stays under the working directory. Each refusal is one
line, exit 2, before any run or storage is created.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_faults_round2 import one_line

from cnnbench.cli_options import launcher_from
from cnnbench.errors import ConfigError


def study_file(tmp_path: Path, launcher: str) -> Path:
    path = tmp_path / "chooser.toml"
    path.write_text('name = "chooser"\nseeds = 1\n[base]\nmodel = "lenet5"\ndataset = "digits"\nepochs = 1\n'
                    f'[grid]\nlr = [0.01]\n[launcher]\n{launcher}\n')
    return path


def test_X26_a_study_files_ray_address_is_refused_without_the_users_word(cli, tmp_path, tracking_uri, runs_in,
                                                                        monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    study = study_file(tmp_path, 'name = "ray"\nray_address = "10.9.8.7:6379"')
    storage = tmp_path / "q.db"
    result = cli("study", "run", study, "--tracking-uri", tracking_uri, "--storage", f"sqlite:///{storage}")
    one_line(result, 2, "'10.9.8.7:6379'", "--ray-address", "--use-file-destination", "credentials")
    assert runs_in("chooser") == [] and not storage.exists()  # nothing created, nothing contacted
    # the user's $RAY_ADDRESS differs: refused naming it
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6380")
    result = cli("study", "run", study, "--tracking-uri", tracking_uri, "--storage", f"sqlite:///{storage}")
    one_line(result, 2, "'10.9.8.7:6379'", "$RAY_ADDRESS is '127.0.0.1:6380'")
    assert runs_in("chooser") == [] and not storage.exists()


@pytest.mark.parametrize("given, env, accept, expected", [
    ("127.0.0.1:7000", None, False, "127.0.0.1:7000"),  # the command line's wins, the file's is never used
    (None, "10.9.8.7:6379", False, "10.9.8.7:6379"),    # the file names the user's own cluster
    (None, None, True, "10.9.8.7:6379"),                # --use-file-destination
])
def test_a_files_ray_address_is_used_only_as_the_users_own(monkeypatch, given, env, accept, expected):
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    options = launcher_from({"launcher_ray_address": given}, {"name": "ray", "ray_address": "10.9.8.7:6379"},
                            "study file s.toml", accept_file=accept)
    assert options.ray_address == expected and options.name == "ray"


@pytest.mark.parametrize("folder", ["/tmp/elsewhere", "~/.ssh", "../up", "a/../../b", ""])
def test_a_files_launcher_folder_stays_under_the_working_directory(folder):
    with pytest.raises(ConfigError, match=r"\[launcher\] folder .*relative path without '\.\.'"):
        launcher_from({}, {"name": "slurm", "folder": folder}, "study file s.toml")
    assert launcher_from({}, {"name": "slurm", "folder": "runs/slurm"}, "study file s.toml").folder == "runs/slurm"
