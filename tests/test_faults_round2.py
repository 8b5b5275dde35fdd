"""FAULTS.md round 2 (issue 30), deliverables 1, 3, 4 and 6: one test per row, named after its ID.

Covered here:
- D23: an IDX header whose dimensions multiply past int64 (2^22 x 2^21 x 2^21) is a one-line DataError
  (the product is taken in Python integers), not a numpy reshape traceback.
- D34, D51, D53x: image-folder PNGs whose headers declare 20000x20000, 50000x50000 and 40000x40000
  pixels (the last cut at 200 bytes) are cnnbench's one-line "image too large" error naming the file
  and the limit (``cnnbench.data.images.MAX_IMAGE_PIXELS``), not Pillow's ``DecompressionBombError``;
  also an image between the limit and twice it, which Pillow only warns about.
- D57: ``cnnbench memory ... --dataset imagefolder`` on such a folder: the same line.
- D63: CIFAR-10 batches all cut alike (a "mini CIFAR") are refused against the 10,000 images per batch
  the format defines, unless ``batches.meta`` declares the smaller count.
- F2b: ``cnnbench filters`` on the bomb PNG: the same line, and no output folder.
- F7: ``cnnbench filters --out`` to a folder that cannot be created: one line, exit 2, no run.
- S6: ``tune --search 'lr=loguniform(1e-5,1e308)'`` is refused at parse time (beyond float32), no run.
- P4: ``--preset fast-cifar10 --model lenet5`` drops the preset's model options (``widths``) with a
  printed note, and trains lenet5.
- X26: a study file's ``[base] tracking_uri`` different from ``$MLFLOW_TRACKING_URI`` / ``--tracking-uri``
  is refused in one line naming both and ``--use-file-destination``, contacting nothing; with nothing
  else given the file's URI is used without the environment's MLflow credentials; a ``--config``
  file's ``run.tracking_uri`` is ignored with a note (the run lands in the user's store) unless
  ``--use-file-destination`` (train, tune, study run).
- X5: under ``mlflow run`` a ``-P storage=`` password MLflow logged as the run's ``storage`` param is
  masked in that run (database stores) before the storage is opened, with a note.
- X25: the spec files ``run_local`` writes for worker processes hold no password (it goes through
  ``$CNNBENCH_STORAGE_PASSWORD`` / MLflow's variables), are 0600, and are gone with their folder.
- R4 (deliverable 4): ``train`` SIGKILLed after 3+ epochs were logged (its newest checkpoint is the first
  epoch's), then ``train --resume``: one printed line names the checkpoint's epoch, the epochs re-trained
  and those still to train; every metric has one entry per epoch step (none logged twice); FINISHED.

Every refusal is checked for its exit code, exactly one line on stderr with the file or value and the
limit, no traceback, and no MLflow run left (none RUNNING).
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import zlib
from pathlib import Path

import pytest
from test_data_files import write_cifar, write_idx_set
from test_data_imagefolder import write_tree

from conftest import new_store
from cnnbench.data import cifar, mnist
from cnnbench.data.images import MAX_IMAGE_PIXELS

Q = ["--epochs", "1", "--no-tsne", "--no-retrieval", "--no-kernels", "--no-predictions", "--no-memory",
     "--no-log-model", "--quiet"]
LOG_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARNING|DEBUG) ")
LIMIT = f"{MAX_IMAGE_PIXELS:,} pixels"


def error_lines(result) -> list[str]:
    """stderr without MLflow's own INFO log lines (schema creation on a new store)."""
    return [line for line in result.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def one_line(result, code: int, *words: str) -> str:
    """The refusal: exit ``code``, exactly one stderr line holding every word, no traceback."""
    lines = error_lines(result)
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "DecompressionBomb" not in result.output, result.output
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def bomb_png(path: Path, width: int, height: int, *, cut: int | None = None) -> Path:
    """A 1-bit grayscale PNG whose header declares width x height; only its first rows are stored
    (the header is what Pillow checks), optionally cut after ``cut`` bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\x00" + bytes((width + 7) // 8)) * 4
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 0)) + chunk(b"IEND", b""))  # stored: a few KB
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:cut] if cut else data)
    return path


def bomb_folder(root: Path, width: int, height: int, *, cut: int | None = None) -> Path:
    """An image folder with one ordinary class and one class holding the bomb."""
    write_tree(root, {"train": {"ok": 2}}, mode="L", size=(28, 28))
    return bomb_png(root / "train" / "zbomb" / "big.png", width, height, cut=cut)


def train_imagefolder(cli, root: Path, tracking_uri: str, experiment: str):
    return cli("train", "--dataset", "imagefolder", "--data-dir", root, "--model", "lenet5",
               "--tracking-uri", tracking_uri, "--experiment", experiment, *Q)


# -- D: bad data files ----------------------------------------------------------------------------------
def test_D23_idx_dimensions_beyond_int64_are_one_line(cli, tmp_path, tracking_uri, experiment, runs_in):
    folder = tmp_path / "MNIST" / "raw"
    write_idx_set(folder, gz=False)
    header = struct.pack(">I3I", mnist.IMAGE_MAGIC, 2**22, 2**21, 2**21)  # np.prod wraps this to 0
    (folder / mnist.FILES["train_images"]).write_bytes(header)
    result = cli("train", "--dataset", "mnist", "--no-download", "--data-dir", tmp_path,
                 "--tracking-uri", tracking_uri, "--experiment", experiment, *Q)
    line = one_line(result, 2, "train-images-idx3-ubyte is truncated", "16 bytes",
                    str(16 + 2**22 * 2**21 * 2**21), "(4194304, 2097152, 2097152)")
    assert "reshape" not in line
    assert runs_in(experiment) == []


@pytest.mark.parametrize("side", [20_000, 9_000], ids=["above-twice-the-limit", "between-limit-and-twice"])
def test_D34_an_oversized_png_in_a_class_folder_is_one_line(cli, tmp_path, tracking_uri, experiment, runs_in, side):
    """20000x20000 is above twice the limit (Pillow's DecompressionBombError); 9000x9000 lies between
    the limit and twice it, where Pillow only warns: cnnbench refuses both by name."""
    assert MAX_IMAGE_PIXELS < side * side
    big = bomb_folder(tmp_path, side, side)
    result = train_imagefolder(cli, tmp_path, tracking_uri, experiment)
    one_line(result, 2, "image too large", str(big), f"{side * side:,} pixels", LIMIT)
    assert runs_in(experiment) == []


def test_D51_a_50000_square_bomb_png_is_one_line(cli, tmp_path, tracking_uri, experiment, runs_in):
    big = bomb_folder(tmp_path, 50_000, 50_000)
    result = train_imagefolder(cli, tmp_path, tracking_uri, experiment)
    one_line(result, 2, "image too large", str(big), "2,500,000,000 pixels", LIMIT)
    assert runs_in(experiment) == []


def test_D53x_a_bomb_header_with_its_data_cut_is_one_line(cli, tmp_path, tracking_uri, experiment, runs_in):
    big = bomb_folder(tmp_path, 40_000, 40_000, cut=200)
    assert big.stat().st_size == 200
    result = train_imagefolder(cli, tmp_path, tracking_uri, experiment)
    one_line(result, 2, "image too large", str(big), "1,600,000,000 pixels", LIMIT)
    assert runs_in(experiment) == []


def test_D57_memory_on_a_bomb_folder_is_one_line(cli, tmp_path):
    big = bomb_folder(tmp_path, 50_000, 50_000)
    result = cli("memory", "lenet5", "--dataset", "imagefolder", "--data-dir", tmp_path, "--no-track")
    one_line(result, 2, "image too large", str(big), LIMIT)


def test_D63_cifar_batches_all_cut_alike_are_refused_against_the_format(cli, tmp_path, tracking_uri, experiment,
                                                                        runs_in):
    write_cifar(tmp_path, per_batch=100)
    meta = tmp_path / cifar.FOLDER / cifar.META_FILE  # the real meta file: 10,000 per batch
    meta.write_bytes(pickle.dumps({"label_names": list(cifar.CLASSES), "num_cases_per_batch": 10_000,
                                   "num_vis": 3072}, protocol=2))
    result = cli("train", "--dataset", "cifar10", "--no-download", "--data-dir", tmp_path, "--train-size", "50",
                 "--tracking-uri", tracking_uri, "--experiment", experiment, *Q)
    one_line(result, 2, f"every CIFAR-10 batch in {tmp_path / cifar.FOLDER} holds 100 images",
             "defines 10000 per batch")
    assert runs_in(experiment) == []
    meta.write_bytes(pickle.dumps({"label_names": list(cifar.CLASSES)}, protocol=2))  # no count: 10,000 too
    with pytest.raises(cifar.DataError, match=r"holds 100 images where the format defines 10000"):
        cifar.load(data_dir=tmp_path, download=False)
    # a subset made on purpose says so in its meta file (as the fake files of the other tests do)
    meta.write_bytes(pickle.dumps({"label_names": list(cifar.CLASSES), "num_cases_per_batch": 100}, protocol=2))
    assert len(cifar.load(data_dir=tmp_path, download=False).train.labels) == 500
    (tmp_path / cifar.FOLDER / "test_batch").write_bytes(pickle.dumps(
        {"data": cifar_data(99), "labels": [0] * 99}, protocol=2))
    with pytest.raises(cifar.DataError, match=r"test_batch holds 99 images where every other CIFAR-10 batch holds 100"):
        cifar.load(data_dir=tmp_path, download=False)


def cifar_data(n: int):
    import numpy as np

    return np.zeros((n, cifar.PIXELS), np.uint8)


# -- F: cnnbench filters --------------------------------------------------------------------------------
def test_F2b_filters_on_a_bomb_png_is_one_line(cli, tmp_path):
    big = bomb_png(tmp_path / "bomb.png", 50_000, 50_000)
    out = tmp_path / "out"
    result = cli("filters", big, "--kernel", "laplacian", "--no-mlflow", "--out", out)
    one_line(result, 2, "image too large", str(big), "2,500,000,000 pixels", LIMIT)
    assert not out.exists()


@pytest.mark.parametrize("where", ["/proc/forbidden", "under-a-file"])
def test_F7_filters_out_to_an_unwritable_path_is_one_line(cli, tmp_path, tracking_uri, experiment, runs_in, where):
    from PIL import Image

    image = tmp_path / "small.png"
    Image.new("L", (12, 10), 128).save(image)
    if where == "under-a-file":
        (tmp_path / "afile").write_text("not a folder")
        where = str(tmp_path / "afile" / "out")
    result = cli("filters", image, "--kernel", "laplacian", "--no-mlflow", "--out", where)
    one_line(result, 2, f"--out {where}: cannot create the folder")
    result = cli("filters", image, "--kernel", "laplacian", "--out", where, "--tracking-uri", tracking_uri,
                 "--experiment", experiment)
    one_line(result, 2, f"--out {where}: cannot create the folder")
    assert runs_in(experiment) == []


# -- S: bad tune input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("expr, value, limit", [
    ("lr=loguniform(1e-5,1e308)", "1e308", "float32"), ("lr=choice(1e-3,1e39)", "1e39", "float32"),
    ("batch_size=int(1,100000000000000000000)", "100000000000000000000", "64-bit integer"),
])
def test_S6_search_ranges_beyond_float32_are_refused_at_parse_time(cli, tmp_path, tracking_uri, experiment,
                                                                   runs_in, expr, value, limit):
    result = cli("tune", "--trials", "1", "--epochs", "1", "--storage", f"sqlite:///{tmp_path}/optuna.db",
                 "--study-name", "s6", "--tracking-uri", tracking_uri, "--experiment", experiment, "--search", expr)
    one_line(result, 2, f"--search {expr!r}", value, limit)
    assert runs_in(experiment) == []


# -- P: presets -----------------------------------------------------------------------------------------
def test_P4_preset_with_another_model_drops_the_presets_model_options(cli, tracking_uri, experiment, runs_in):
    result = cli("train", "--preset", "fast-cifar10", "--model", "lenet5", "--model-option", "dropout=0.1",
                 "--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--tracking-uri", tracking_uri, "--experiment", experiment, "--device", "cpu",
                 *Q[2:])
    assert result.exit_code == 0, result.output
    notes = [line for line in error_lines(result) if line.startswith("note:")]
    note = ("note: --model lenet5 replaces the preset's model fast_cnn, so its model option(s) widths=32,64,128 "
            "are not used (give them again with --model-option to keep them)")
    assert notes == [note], result.stderr
    (run,) = runs_in(experiment)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model"] == "lenet5" and params["preset"] == "fast-cifar10" and "model.widths" not in params
    assert params["model.dropout"] == "0.1"  # an option given beside --model is kept
    assert params["optimizer"] == "nesterov"  # the rest of the preset still applies



# -- X: credentials go only where the user sends them (deliverable 1) -----------------------------------
class Listener:
    """A tiny HTTP server on 127.0.0.1 (a free port) that records every request's path and
    Authorization header: /health answers 200, anything else 401 (the run stops there, in seconds)."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append((self.path, self.headers.get("Authorization")))
                self.send_response(200 if self.path.startswith("/health") else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def user_env(monkeypatch, tmp_path):
    """The user's own store and credentials in the environment (FAULTS X26's setting)."""
    mine = f"sqlite:///{tmp_path / 'mine.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mine)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "EnvSecret42")
    return mine


def innocent_study(tmp_path: Path, uri: str) -> Path:
    path = tmp_path / "innocent.toml"
    path.write_text(f'name = "innocent"\nseeds = 1\n[base]\nmodel = "lenet5"\ndataset = "digits"\nepochs = 1\n'
                    f'tracking_uri = "{uri}"\n[grid]\nlr = [0.01]\n')
    return path


def test_X26_a_study_files_tracking_uri_never_replaces_the_users_nor_gets_its_credentials(cli, tmp_path, listener,
                                                                                          user_env, runs_in):
    study = innocent_study(tmp_path, listener.uri)
    result = cli("study", "run", study, "--storage", f"sqlite:///{tmp_path / 'q.db'}")
    line = one_line(result, 2, listener.uri, user_env, "$MLFLOW_TRACKING_URI", "--use-file-destination")
    assert "EnvSecret42" not in line
    assert listener.requests == []  # nothing contacted, no credentials sent
    # the same with --tracking-uri on the command line
    result = cli("study", "run", study, "--tracking-uri", user_env, "--storage", f"sqlite:///{tmp_path / 'q.db'}")
    one_line(result, 2, listener.uri, user_env, "--tracking-uri", "--use-file-destination")
    assert listener.requests == []


def test_X26_a_file_chosen_uri_with_nothing_else_given_gets_no_environment_credentials(cli, tmp_path, listener,
                                                                                       monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "EnvSecret42")
    result = cli("study", "run", innocent_study(tmp_path, listener.uri), "--storage", f"sqlite:///{tmp_path / 'q.db'}")
    assert result.exit_code != 0  # the listener refuses the API: the run stops at the reachability check
    assert listener.requests, "the file's URI is used when nothing else is given"
    assert all(auth is None for _, auth in listener.requests), listener.requests
    assert "EnvSecret42" not in result.output
    assert "MLFLOW_TRACKING_USERNAME" in result.stderr and "not sent" in result.stderr


def test_X26_a_replayed_config_json_replays_the_experiment_not_its_destination(cli, tmp_path, listener, user_env,
                                                                               runs_in, experiment):
    config = tmp_path / "someone-elses-config.json"
    config.write_text(json.dumps({"run": {"tracking_uri": listener.uri}, "data": {"name": "digits"}}))
    result = cli("train", "--config", config, "--experiment", experiment, *Q)
    assert result.exit_code == 0, result.output
    assert listener.requests == []
    notes = [line for line in error_lines(result) if line.startswith("note:")]
    assert len(notes) == 1 and listener.uri in notes[0] and "--use-file-destination" in notes[0], notes
    assert "EnvSecret42" not in result.output
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(user_env).get_experiment_by_name(experiment)
    assert exp is not None and len(MlflowClient(user_env).search_runs([exp.experiment_id])) == 1  # in the user's store
    # --use-file-destination sends it there (with the user's credentials: the user said so)
    result = cli("train", "--config", config, "--use-file-destination", "--experiment", experiment, *Q)
    assert result.exit_code != 0 and listener.requests
    assert listener.requests[0][1] is not None
    # tune reads --config the same way: nothing contacted, and a --tracking-uri beside the flag is refused
    listener.requests.clear()
    result = cli("tune", "--config", config, "--use-file-destination", "--tracking-uri", user_env, "--trials", "1")
    one_line(result, 2, "--use-file-destination", listener.uri)
    assert listener.requests == []


def test_X5_a_password_in_mlflow_run_storage_param_is_masked_in_the_run(cli, tmp_path, monkeypatch, tracking_uri):
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    secret = "postgresql://alice:TopSecret@127.0.0.1:9/db"
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment(f"secrets-{tmp_path.name}")
    run = client.create_run(exp)  # what `mlflow run . -e tune -P storage=...` does before cnnbench starts
    client.log_batch(run.info.run_id, params=[Param("storage", secret), Param("trials", "1")])
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    result = cli("tune", "--storage", secret, "--trials", "1", "--epochs", "1", "--quiet")
    assert result.exit_code != 0  # nothing listens on port 9
    assert "TopSecret" not in result.output
    params = client.get_run(run.info.run_id).data.params
    assert params["storage"] == "postgresql://alice:***@127.0.0.1:9/db" and params["trials"] == "1"
    assert "masked" in result.stderr and run.info.run_id in result.stderr


def test_X25_worker_specs_hold_no_password_and_are_removed(monkeypatch):
    import os
    import stat

    from cnnbench.campaign import workers

    seen = []

    class FakeProcess:
        def __init__(self, args, env=None):
            path = Path(args[-1])
            seen.append((path, path.read_text(), stat.S_IMODE(path.stat().st_mode), dict(env or os.environ)))

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(workers.subprocess, "Popen", FakeProcess)
    monkeypatch.delenv("CNNBENCH_STORAGE_PASSWORD", raising=False)
    spec = {"storage": "postgresql://alice:TopSecret@db.example:5432/campaign", "tracking_uri": "http://bob:Pw9@mlflow:5000",
            "config": {"run": {"tracking_uri": "http://bob:Pw9@mlflow:5000"}}, "entry": "x:y"}
    here = []
    _, codes = workers.run_local(spec, 3, here.append)
    assert codes == [0, 0] and len(seen) == 2
    for path, text, mode, env in seen:
        assert "TopSecret" not in text and "Pw9" not in text, text
        assert json.loads(text)["storage"] == "postgresql://alice@db.example:5432/campaign"
        assert mode == 0o600
        assert env["CNNBENCH_STORAGE_PASSWORD"] == "TopSecret" and env["MLFLOW_TRACKING_PASSWORD"] == "Pw9"
        assert not path.exists() and not path.parent.exists()  # removed with its folder at the end
    assert here[0]["storage"] == spec["storage"]  # worker 0, in this process, keeps the URL as given


def _span(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


@pytest.mark.slow
def test_R4_resume_after_sigkill_logs_each_epoch_once_and_says_which_are_retrained(tmp_path):
    """R4: a run SIGKILLed after some epochs were logged (its newest checkpoint is older: the first
    epoch's, later ones at most once a minute) is resumed from the newest checkpoint there is; the
    epochs it trains again are named in one line and each metric has one entry per epoch."""
    import signal
    import time

    from faultkit import FAST, Proc, env, run_cli
    from mlflow.tracking import MlflowClient

    store, epochs = new_store(tmp_path), 8
    environ = env(CNNBENCH_HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path))  # no other resume cache
    proc = Proc("train", "--tracking-uri", store, "--experiment", "r4", "--epochs", str(epochs), *FAST, environ=environ)
    run_id, deadline = None, time.monotonic() + 240
    try:
        proc.wait_for(r"^epoch 1/")  # the process has created the store (two processes creating one SQLite schema race)
        client = MlflowClient(store)
        while time.monotonic() < deadline and proc.popen.poll() is None:  # until 3 epochs are in the store
            exp = client.get_experiment_by_name("r4") if run_id is None else None
            runs = client.search_runs([exp.experiment_id]) if exp is not None else []
            run_id = run_id or (runs[0].info.run_id if runs else None)
            if run_id is not None and len(client.get_metric_history(run_id, "val_accuracy")) >= 3:
                break
            time.sleep(0.05)
        alive = proc.popen.poll() is None
        if alive:
            proc.signal(signal.SIGKILL)
    finally:
        done = proc.finish()
    assert alive and run_id is not None and done.rc == -9, done.output
    logged = sorted(m.step for m in client.get_metric_history(run_id, "val_accuracy"))
    assert len(logged) >= 3 and logged[-1] < epochs, logged
    time.sleep(3.5)  # the killed process's heartbeat (1 s here) is past 3 missed beats
    resumed = run_cli("train", "--resume", run_id, "--tracking-uri", store, environ=environ)
    assert resumed.rc == 0, resumed.output
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED", run.info.status
    per_epoch = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s", "epoch_images_per_s"]
    for key in run.data.metrics:
        history = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert len(history) == len(set(history)), (key, history)  # no step logged twice
        if key in per_epoch:
            assert history == list(range(1, epochs + 1)), (key, history)
    assert set(per_epoch) <= set(run.data.metrics)
    lines = [line for line in resumed.output.splitlines() if f"resuming run {run_id} from epoch" in line]
    assert len(lines) == 1, resumed.output
    start = int(re.search(r"from epoch (\d+)", lines[0]).group(1))
    assert 1 <= start < logged[-1], (lines[0], logged)  # SIGKILL: epochs after the checkpoint are trained again
    assert f"{_span(start + 1, logged[-1])} re-trained" in lines[0], lines[0]
    assert f"{_span(logged[-1] + 1, epochs)} to train" in lines[0], lines[0]
