"""The CLI's contract: version, fast help, listing, and every bad input rejected before any run."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import cnnbench


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and cnnbench.__version__ in result.output


def test_help_does_not_import_torch_or_mlflow():
    code = "import sys; from cnnbench.cli import main; print('torch' in sys.modules, 'mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_list_models_and_datasets(cli):
    result = cli("list")
    assert result.exit_code == 0
    assert "lenet5" in result.output and "[cnnbench]" in result.output
    digits = next(l for l in result.output.splitlines() if l.strip().startswith("digits"))
    assert "1x28x28, 10 classes, 1437 train / 360 test" in digits  # what load() gives (the dataset contract test)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "nope"], "unknown model 'nope'; available models: "),
        (["--dataset", "nope"], "unknown dataset 'nope'; available datasets: "),
        (["--batch-size", "0"], "--batch-size must be positive; got 0"),
        (["--epochs", "-1"], "--epochs must be positive; got -1"),
        (["--lr", "0"], "--lr must be positive; got 0"),
        (["--val-split", "1.0"], "--val-split must lie strictly between 0 and 1; got 1.0"),
        (["--val-split", "0"], "--val-split must lie strictly between 0 and 1; got 0.0"),
        (["--kernel-size", "4"], "accepts odd kernel sizes"),
        (["--kernel-size", "13"], "needs inputs of at least 76x76 pixels"),
        (["--model", "mlp", "--kernel-size", "3"], "model 'mlp' takes no kernel size"),
        (["--model-option", "widthh=3"], "unknown option(s) widthh for model 'lenet5'; valid options: "),
        (["--model-option", "dropout=lots"], "option 'dropout' expects a number, got 'lots'"),
        (["--dataset-option", "size=4"], "option 'size' must be >= 8"),
        (["--model", "lenet5", "--dataset-option", "size=8"], "needs inputs of at least 28x28 pixels"),
        (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
        (["--patience", "-2"], "--patience must be >= 0"),
        (["--retrieval-k", "0"], "--retrieval-k must be positive; got 0"),
        (["--gamma", "0"], "--gamma must be positive"),
        (["--train-size", "0"], "--train-size must be positive; got 0"),
    ],
)
def test_bad_input_exits_2_and_creates_no_run(cli, tracking_uri, experiment, runs_in, args, fragment):
    result = cli("train", "--tracking-uri", tracking_uri, "--experiment", experiment, *args)
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert runs_in(experiment) == []


def test_unknown_model_lists_every_registered_name(cli):
    from cnnbench.registry import MODELS

    result = cli("train", "--model", "nope")
    assert result.exit_code == 2
    for name in MODELS.names():
        assert name in result.stderr


def test_unreachable_tracking_server_fails_fast(cli):
    uri = "http://127.0.0.1:9"  # discard port: nothing listens there
    start = time.monotonic()
    result = cli("train", "--tracking-uri", uri, "--epochs", "1")
    elapsed = time.monotonic() - start
    assert result.exit_code == 1
    assert f"cannot reach the MLflow tracking server at {uri}" in result.stderr
    assert elapsed < 30  # not the client's minutes-long retry loop


def test_config_file_with_unknown_keys_is_listed(cli, tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"optim": {"lr": 0.1, "learning_rate": 1}, "extra": {}}')
    result = cli("train", "--config", str(path))
    assert result.exit_code == 2
    assert "unknown section(s) extra" in result.stderr
    path.write_text('{"optim": {"lr": 0.1, "learning_rate": 1}}')
    result = cli("train", "--config", str(path))
    assert "unknown key(s) in optim: learning_rate" in result.stderr


def test_config_file_is_overridden_only_by_given_flags(tmp_path):
    from cnnbench.cli import main
    from cnnbench.cli_options import config_from_params
    from cnnbench.config import TrainConfig

    path = tmp_path / "config.json"
    path.write_text(__import__("json").dumps(TrainConfig().replace(optim={"lr": 0.05, "batch_size": 16}).to_dict()))
    ctx = main.get_command(None, "train").make_context("train", ["--config", str(path), "--batch-size", "32"])
    config = config_from_params(ctx, ctx.params)
    assert config.optim.lr == 0.05 and config.optim.batch_size == 32


@pytest.mark.parametrize("extra", [["--lr", "5"], ["--epochs", "4", "--model", "mlp"], ["--model-option", "dropout=0.1"],
                                   ["--config", "x.json"], ["--kernel-size", "3"]])
def test_resume_refuses_other_flags_instead_of_ignoring_them(cli, tracking_uri, extra):
    result = cli("train", "--resume", "0123456789abcdef0123456789abcdef", "--tracking-uri", tracking_uri, *extra)
    assert result.exit_code == 2
    assert "--resume continues a run with the settings it was started with; drop" in result.output
    assert extra[0] in result.output.split("drop", 1)[1]


PROMPT_EXIT = """
import atexit, sys, threading, time
from pathlib import Path
import cnnbench.processes
from cnnbench.processes import prompt_exit
if sys.argv[2] == "public":  # as on an interpreter the private exit calls were not checked on
    cnnbench.processes.PRIVATE_EXIT_VERSIONS = ()
out = Path(sys.argv[1])
def late():  # a non-daemon thread still writing: the interpreter would wait for it, so must we
    time.sleep(0.3)
    out.with_suffix(".thread").write_text("joined")
threading.Thread(target=late).start()
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(1)  # never shut down (MLflow's artifact pool): its idle worker must not hang the exit
pool.submit(time.sleep, 0.1).result()
atexit.register(lambda: out.write_text("atexit ran"))
print("buffered, not yet flushed", end="")
try:
    prompt_exit({code})
except SystemExit:  # the public path: the interpreter's own exit does the rest
    out.with_suffix(".public").write_text("SystemExit")
    raise
"""


@pytest.mark.parametrize("path", ["private", "public"])
@pytest.mark.parametrize("code, status", [("0", 0), ("3", 3), ("None", 0), ("-1", 255), ("'a message'", 1)])
def test_the_prompt_exit_keeps_the_exit_status_output_threads_and_atexit_handlers(tmp_path, code, status, path):
    """cnnbench's console script skips the interpreter's teardown (os._exit): everything a normal
    exit does for the user must still happen, in the same order; and the same where the private
    calls are not used (an unchecked interpreter: SystemExit and the ordinary teardown)."""
    marker = tmp_path / "marker.txt"
    out = subprocess.run([sys.executable, "-c", PROMPT_EXIT.format(code=code), str(marker), path], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == status, out.stderr
    assert out.stdout == "buffered, not yet flushed"
    assert marker.read_text() == "atexit ran" and marker.with_suffix(".thread").read_text() == "joined"
    assert ("a message" in out.stderr) == (status == 1)
    from cnnbench.processes import private_exit_hooks

    assert marker.with_suffix(".public").exists() == (path == "public" or private_exit_hooks() is None)


def test_the_private_exit_calls_exist_as_checked_on_the_versions_that_use_them():
    """``prompt_exit`` calls CPython's private ``threading._shutdown()`` and ``atexit._run_exitfuncs()``
    only on :data:`~cnnbench.processes.PRIVATE_EXIT_VERSIONS`: on those, both must still exist and take
    no argument (this fails when CPython renames or changes them; then drop the version, or adapt).
    A version outside the list (e.g. a new CPython) takes the public path until someone checks it."""
    import atexit
    import inspect
    import threading

    from cnnbench.processes import PRIVATE_EXIT_VERSIONS, private_exit_hooks

    checked = sys.implementation.name == "cpython" and tuple(sys.version_info[:2]) in PRIVATE_EXIT_VERSIONS
    if not checked:
        assert private_exit_hooks() is None
        pytest.skip(f"{sys.implementation.name} {sys.version_info[:2]} is not a checked version: the public exit is used")
    assert private_exit_hooks() == (threading._shutdown, atexit._run_exitfuncs)
    assert inspect.isfunction(threading._shutdown)
    assert not inspect.signature(threading._shutdown).parameters
    assert callable(atexit._run_exitfuncs) and inspect.isbuiltin(atexit._run_exitfuncs)
    try:
        params = inspect.signature(atexit._run_exitfuncs).parameters
    except ValueError:  # a builtin without a text signature: a call with an argument must be refused
        with pytest.raises(TypeError):
            atexit._run_exitfuncs(None)
    else:
        assert not params


def test_the_console_script_exits_with_the_commands_status(tmp_path):
    """``python -m cnnbench.cli`` and the ``cnnbench`` script go through ``entry``: a usage error
    still exits 2 with its message; ``--version`` 0 with its output."""
    bad = subprocess.run([sys.executable, "-m", "cnnbench.cli", "train", "--epochs", "-1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--epochs must be positive; got -1" in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "cnnbench.cli", "--version"], capture_output=True, text=True)
    assert ok.returncode == 0 and cnnbench.__version__ in ok.stdout
