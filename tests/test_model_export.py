"""The logged model is self-contained: it loads and predicts the right classes where cnnbench cannot be
imported, takes images in the documented layouts (and a CSV through `mlflow models predict`),
carries its class names, input shape and normalisation, links the run's test metrics, and can be
registered in the Model Registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import new_store
from cnnbench import api
from cnnbench.config import TrainConfig
from cnnbench.tracking.classifier_pyfunc import to_images
from cnnbench.tracking.mlflow_tracker import MlflowTracker

NO_EXTRAS = ["--no-tsne", "--no-retrieval", "--no-kernels", "--no-predictions", "--no-memory", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real `cnnbench train` run (digits, 6 epochs) with its logged model, in its own store."""
    from click.testing import CliRunner

    from cnnbench.cli import main

    uri = new_store(tmp_path_factory.mktemp("export"))
    result = CliRunner().invoke(main, ["train", "--tracking-uri", uri, "--experiment", "export", "--epochs", "6", *NO_EXTRAS],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("export").experiment_id])[0]
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert len(models) == 1
    data = api.load_data(TrainConfig())
    return {"uri": uri, "run": run, "model": models[0], "data": data}


def _predict_without_cnnbench(model_uri: str, tracking_uri: str, arrays: dict[str, object], folder: Path) -> dict:
    """Load the model in a fresh interpreter where `import cnnbench` fails, predict each input."""
    for name, value in arrays.items():
        if isinstance(value, pd.DataFrame):
            value.to_csv(folder / f"{name}.csv", index=False)
        else:
            np.save(folder / f"{name}.npy", value)
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        sys.modules["cnnbench"] = None  # any `import cnnbench...` now raises ImportError
        import mlflow, numpy as np, pandas as pd
        try:
            import cnnbench.models.base
            blocked = False
        except ImportError:
            blocked = True
        mlflow.set_tracking_uri({tracking_uri!r})
        model = mlflow.pyfunc.load_model({model_uri!r})
        out = {{"blocked": blocked, "loaded": sorted(m for m in sys.modules if m.startswith("cnnbench") and sys.modules[m])}}
        for path in sorted(Path({str(folder)!r}).iterdir()):
            data = pd.read_csv(path) if path.suffix == ".csv" else np.load(path)
            frame = model.predict(data)
            out[path.stem] = {{"columns": list(frame.columns), "classes": frame["predicted_class"].tolist(),
                               "probs": frame.filter(like="prob_").to_numpy().tolist()}}
        print("RESULT" + json.dumps(out))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_model_predicts_right_classes_with_cnnbench_blocked(trained, tmp_path):
    test = trained["data"].test
    nchw = test.images.numpy()  # uint8 (N, 1, 28, 28)
    nhwc = nchw.transpose(0, 2, 3, 1)
    inputs = {"nhwc_uint8": nhwc, "nchw_uint8": nchw, "float01": nchw.astype(np.float32) / 255.0,
              "flat_csv": pd.DataFrame(nchw.reshape(len(nchw), -1))}
    out = _predict_without_cnnbench(trained["model"].model_uri, trained["uri"], inputs, tmp_path)
    assert out["blocked"] and out["loaded"] == []
    labels = [str(trained["data"].classes[i]) for i in test.labels.tolist()]
    got = out["nhwc_uint8"]
    accuracy = np.mean([p == t for p, t in zip(got["classes"], labels)])
    run_accuracy = trained["run"].data.metrics["test_accuracy"]
    assert accuracy > 0.8
    assert abs(accuracy - run_accuracy) <= 1.0 / len(labels) + 1e-9  # the normalisation is inside the model
    assert got["columns"] == ["predicted_class", "predicted_index"] + [f"prob_{c}" for c in trained["data"].classes]
    np.testing.assert_allclose(np.sum(got["probs"], axis=1), 1.0, atol=1e-5)
    for other in ("nchw_uint8", "float01", "flat_csv"):
        assert out[other]["classes"] == got["classes"], other
        np.testing.assert_allclose(out[other]["probs"], got["probs"], atol=1e-5)


def test_model_metadata_requirements_and_linked_metrics(trained):
    model, run, data = trained["model"], trained["run"], trained["data"]
    assert model.name == "lenet5-digits"
    info = mlflow.models.get_model_info(model.model_uri)
    meta = info.metadata
    assert meta["classes"] == [str(c) for c in data.classes] and meta["input_shape"] == [1, 28, 28]
    np.testing.assert_allclose(meta["mean"], data.mean) and np.testing.assert_allclose(meta["std"], data.std)
    assert "(N, H, W, C)" in meta["input"]
    assert set(info.flavors) == {"python_function"}
    mlflow.set_tracking_uri(trained["uri"])
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model.model_uri))
    requirements = (folder / "requirements.txt").read_text()
    assert "cnnbench" not in requirements and "torch==" in requirements
    # models-from-code: the pyfunc is a source file shipped in the model, nothing pickled
    assert info.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert (folder / "classifier_pyfunc.py").is_file() and not list(folder.rglob("*.pkl"))
    assert "import cnnbench" not in (folder / "classifier_pyfunc.py").read_text()
    linked = {m.key: m for m in model.metrics}
    assert linked["test_accuracy"].value == run.data.metrics["test_accuracy"]
    assert linked["test_accuracy"].run_id == run.info.run_id and linked["test_accuracy"].dataset_name == "digits"
    # logged once: the run's history holds one test_accuracy, not one per link
    assert len(MlflowClient(trained["uri"]).get_metric_history(run.info.run_id, "test_accuracy")) == 1


def test_the_requirement_check_is_skipped_only_while_logging_and_could_not_have_warned(monkeypatch):
    """MLflow's check of the model's pins against the installed packages costs 0.4-1 s a process
    (it maps every installed distribution); cnnbench skips it while logging because its pins are
    read from this environment. Both halves of that claim are checked here."""
    from mlflow.utils import environment
    from mlflow.utils.requirements_utils import _check_requirement_satisfied

    from cnnbench.tracking import model_export

    pins = model_export.requirements()
    assert [p.split("==")[0] for p in pins] == ["mlflow", "torch", "numpy", "pandas"]
    assert [_check_requirement_satisfied(p) for p in pins] == [None] * len(pins)  # the check would pass
    calls = []
    monkeypatch.setattr(environment, "warn_dependency_requirement_mismatches", calls.append)
    with model_export._pins_taken_from_this_environment():
        environment.warn_dependency_requirement_mismatches(["inside"])
    environment.warn_dependency_requirement_mismatches(["after"])
    assert calls == [["after"]]


def test_csv_reaches_the_model_through_mlflow_models_predict(trained, tmp_path):
    images = trained["data"].test.images[:5].numpy()
    csv = tmp_path / "pixels.csv"
    pd.DataFrame(images.reshape(5, -1)).to_csv(csv, index=False)
    out = tmp_path / "pred.json"
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained["uri"], "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mlflow", "models", "predict", "-m", trained["model"].model_uri,
                           "-i", str(csv), "-t", "csv", "-o", str(out), "--env-manager", "local"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = json.loads(out.read_text())["predictions"]
    assert len(predictions) == 5 and {"predicted_class", "prob_0", "prob_9"} <= set(predictions[0])
    labels = [str(trained["data"].classes[i]) for i in trained["data"].test.labels[:5].tolist()]
    assert sum(p["predicted_class"] == t for p, t in zip(predictions, labels)) >= 4


def test_register_model_creates_a_registry_version(tracking_uri, experiment):
    config = TrainConfig().replace(
        run={"tracking_uri": tracking_uri, "experiment": experiment, "epochs": 1, "quiet": True},
        data={"train_size": 300},
    )
    tracker = MlflowTracker(tracking_uri=tracking_uri, experiment=experiment, register_model=f"{experiment}-clf")
    api.train(config, [tracker])
    client = MlflowClient(tracking_uri)
    versions = client.search_model_versions(f"name = '{experiment}-clf'")
    assert [int(v.version) for v in versions] == [1]
    run_id = tracker.run_id
    assert versions[0].run_id == run_id
    loaded = mlflow.pyfunc.load_model(f"models:/{experiment}-clf/1")
    assert len(loaded.predict(np.zeros((2, 28, 28, 1), dtype=np.uint8))) == 2


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw", "flat", "frame_flat", "frame_cells", "list", "single"])
def test_input_layouts_agree(layout):
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, size=(3, 1, 6, 5), dtype=np.uint8)
    expected = nchw.astype(np.float32) / 255
    given = {
        "nhwc": nchw.transpose(0, 2, 3, 1), "nchw": nchw, "nhw": nchw[:, 0], "flat": nchw.reshape(3, -1),
        "frame_flat": pd.DataFrame(nchw.reshape(3, -1).astype(np.int64)),
        "frame_cells": pd.DataFrame({"image": [im.tolist() for im in nchw]}), "list": nchw.tolist(),
        "single": nchw[0],
    }[layout]
    got = to_images(given, (1, 6, 5))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected[:1] if layout == "single" else expected)


def test_rgb_layouts_and_refusals():
    rng = np.random.default_rng(1)
    nchw = rng.integers(0, 256, size=(2, 3, 4, 4), dtype=np.uint8)
    np.testing.assert_array_equal(to_images(nchw.transpose(0, 2, 3, 1), (3, 4, 4)), nchw / np.float32(255))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 4, 4, 3\) or \(N, 3, 4, 4\)"):
        to_images(np.zeros((2, 5, 5, 3), np.uint8), (3, 4, 4))
    with pytest.raises(ValueError, match=r"floating-point pixels must lie in \[0, 1\]"):
        to_images(nchw.astype(np.float32), (3, 4, 4))  # 0..255 floats: the silent accuracy drop, refused
    with pytest.raises(ValueError, match="integer pixels must lie in 0..255"):
        to_images(nchw.astype(np.int64) + 300, (3, 4, 4))
    with pytest.raises(ValueError, match="48 pixel columns"):
        to_images(pd.DataFrame(np.zeros((2, 7))), (3, 4, 4))


def test_loaded_model_refuses_a_wrong_shape_with_one_line_naming_shape_and_dtype(trained):
    """In process, as `mlflow.pyfunc.load_model` gives it: good input predicts, a bad one is refused
    by cnnbench's own one-line message (expected shape and dtype), not a stack trace from the network."""
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(trained["uri"])
    model = mlflow.pyfunc.load_model(trained["model"].model_uri)
    assert model.metadata.metadata["input_schema"]["shape"] == [-1, 28, 28, 1]
    assert model.metadata.metadata["input_schema"]["dtype"] == "uint8"
    images = trained["data"].test.images[:4].numpy().transpose(0, 2, 3, 1)  # uint8 NHWC, the README's input
    frame = model.predict(images)
    assert len(frame) == 4 and frame["predicted_class"].isin([str(c) for c in trained["data"].classes]).all()
    expected = "expected images of shape (N, 28, 28, 1) or (N, 1, 28, 28) or (N, 28, 28), or (N, 784) flattened, " \
               "dtype uint8 (pixels 0..255) or float32 in [0, 1]"
    for bad, got in ((np.zeros((2, 32, 32, 3), np.uint8), "got shape (2, 32, 32, 3) (uint8)"),
                     (np.zeros((2, 27), np.float32), "got shape (2, 27) (float32)"),
                     (np.array(["a", "b"]), "got dtype <U1"),
                     ([[0, 1], [2]], "ragged")):
        with pytest.raises(MlflowException) as caught:
            model.predict(bad)
        message = caught.value.message
        assert message.startswith("cnnbench model input: ") and expected in message and got in message, message
        assert "\n" not in message and caught.value.error_code == "INVALID_PARAMETER_VALUE"


def test_serving_answers_the_readme_request_and_refuses_a_bad_one_with_400(trained):
    """The scoring server's own request handler (what `mlflow models serve` runs for /invocations):
    the model folder's serving_input_example.json predicts; a wrong shape is a 400 carrying
    cnnbench's message, not MLflow's 'unexpected error' with a stack trace."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    mlflow.set_tracking_uri(trained["uri"])
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=trained["model"].model_uri))
    model = mlflow.pyfunc.load_model(str(folder))
    schema = model.metadata.get_input_schema()
    body = (folder / "serving_input_example.json").read_text()
    response = scoring_server.invocations(body, "application/json", model, schema)
    assert response.status == 200, response.response
    predictions = json.loads(response.response)["predictions"]
    assert len(predictions) == 2 and {"predicted_class", "prob_0"} <= set(predictions[0])
    bad = json.dumps({"inputs": np.zeros((1, 3, 28, 28), np.uint8).tolist()})
    with pytest.raises(MlflowException) as caught:
        scoring_server.invocations(bad, "application/json", model, schema)
    assert caught.value.get_http_status_code() == 400
    assert "cnnbench model input: expected images of shape (N, 28, 28, 1)" in caught.value.message
    assert "got shape (1, 3, 28, 28)" in caught.value.message
    assert "unexpected error" not in caught.value.message
