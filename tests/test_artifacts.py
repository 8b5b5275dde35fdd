"""The artifact builders on real (tiny) data: digits at 28x28 with LeNet-5, driven through the
callback hooks the engine calls, plus the pure functions on synthetic inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread

from cnnbench.artifacts import callbacks as cb
from cnnbench.artifacts import artifact_callbacks, kernels, latent, memory, retrieval
from cnnbench.artifacts.evaluation import confusion_tables, majority_baseline
from cnnbench.config import TrainConfig
from cnnbench.data.pipeline import prepare
from cnnbench.engine.probes import collect_features
from cnnbench.events import EvalResult, RunState, dispatch
from cnnbench.models import build_model
from cnnbench.registry import DATASETS
from conftest import ARTIFACTS_OFF


@pytest.fixture(scope="module")
def digits():
    return prepare(DATASETS.get("digits").load(**DATASETS.get("digits").defaults()), val_split=0.1, seed=0)


def lenet(data):
    torch.manual_seed(0)
    return build_model("lenet5", num_classes=len(data.classes), in_channels=data.channels, image_size=data.image_size)


def simulate_run(run: RunState, callbacks, epochs: int = 2, steps_per_epoch: int = 5) -> EvalResult:
    """Emit the engine's events around a few real SGD steps (the engine itself is tested elsewhere)."""
    model, data = run.model, run.data
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    dispatch(callbacks, "on_run_start", run)
    for epoch in range(1, epochs + 1):
        dispatch(callbacks, "on_epoch_start", run, epoch)
        for i in range(steps_per_epoch):
            sl = slice(i * 64, (i + 1) * 64)
            x = (data.train.images[sl].float() / 255.0 - data.mean[0]) / data.std[0]
            loss = torch.nn.functional.cross_entropy(model(x), data.train.labels[sl])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.global_step += 1
            dispatch(callbacks, "on_step_end", run, run.global_step, loss.detach())
        metrics = {"train_loss": 2.0 / epoch, "train_accuracy": 0.3 * epoch, "val_loss": 2.1 / epoch, "val_accuracy": 0.25 * epoch}
        run.epoch = epoch
        run.history.append({"epoch": epoch, **metrics})
        dispatch(callbacks, "on_epoch_end", run, epoch, metrics)
    logits = collect_features(model, data.test.images, mean=data.mean, std=data.std, which=("logits",))["logits"]
    preds = logits.argmax(1)
    result = EvalResult("test", 1.0, float((preds == data.test.labels).float().mean()), logits, data.test.labels, preds)
    dispatch(callbacks, "on_eval_end", run, result)
    dispatch(callbacks, "on_run_end", run, {"test_accuracy": result.accuracy})
    return result


@pytest.fixture(scope="module")
def finished_run(digits, tmp_path_factory):
    config = TrainConfig().replace(run={"epochs": 2}, artifacts={"tsne_samples": 150, "kernel_every": 1, "memory_every": 2})
    run = RunState(config=config, model=lenet(digits), data=digits, device=torch.device("cpu"),
                   artifacts_dir=tmp_path_factory.mktemp("artifacts"))
    callbacks = artifact_callbacks(config)
    result = simulate_run(run, callbacks)
    return run, result, callbacks


def test_default_run_writes_every_artifact(finished_run):
    run, _, _ = finished_run
    written = {p.relative_to(run.artifacts_dir).as_posix() for p in run.artifacts_dir.rglob("*") if p.is_file()}
    expected = {
        "config.json", "model/summary.txt", "plots/learning_curves.png", "metrics/history.csv",
        "eval/confusion_matrix.png", "eval/confusion_matrix.csv", "eval/confusion_matrix_normalized.csv",
        "eval/classification_report.json", "eval/classification_report.txt", "eval/predictions.png",
        "kernels/conv1_start.png", "kernels/conv1_end.png", "kernels/conv1_epoch001.png", "kernels/conv1_epoch002.png",
        "latent/tsne_begin.png", "latent/tsne_begin.csv", "latent/tsne_middle.png", "latent/tsne_middle.csv",
        "latent/tsne_end.png", "latent/tsne_end.csv", "retrieval/summary.json", "memory/memory.csv",
        *{f"retrieval/{c}.png" for c in run.data.classes},
    }
    assert expected <= written, sorted(expected - written)


def test_config_json_round_trips(finished_run, tmp_path):
    run, _, _ = finished_run
    raw = json.loads((run.artifacts_dir / "config.json").read_text())
    assert TrainConfig.from_dict(raw) == run.config
    # config.json files of cnnbench 0.1 (model.kernel_size, run.resume: null) still load
    raw["model"]["kernel_size"], raw["run"]["resume"] = 5, None
    assert TrainConfig.from_dict(raw).model.options["kernel_size"] == run.config.model.options.get("kernel_size", 5)


def test_model_summary_names_layers_and_parameter_count(finished_run):
    run, _, _ = finished_run
    text = (run.artifacts_dir / "model" / "summary.txt").read_text()
    assert "61,706" in text and "Conv2d" in text


def test_history_csv_and_curves(finished_run):
    run, _, _ = finished_run
    frame = pd.read_csv(run.artifacts_dir / "metrics" / "history.csv")
    assert list(frame["epoch"]) == [1, 2]
    assert frame.columns[0] == "epoch"
    assert frame["val_accuracy"].tolist() == pytest.approx([0.25, 0.5])
    assert imread(run.artifacts_dir / "plots" / "learning_curves.png").shape[1] > 500


def test_confusion_csv_counts_the_test_set(finished_run):
    run, result, _ = finished_run
    counts = pd.read_csv(run.artifacts_dir / "eval" / "confusion_matrix.csv", index_col=0)
    assert list(counts.index.astype(str)) == list(run.data.classes)
    assert list(counts.columns) == list(run.data.classes)
    assert counts.to_numpy().sum() == len(run.data.test)
    assert np.trace(counts.to_numpy()) == int((result.predictions == result.labels).sum())
    assert counts.sum(axis=1).tolist() == torch.bincount(run.data.test.labels, minlength=10).tolist()
    norm = pd.read_csv(run.artifacts_dir / "eval" / "confusion_matrix_normalized.csv", index_col=0)
    assert norm.sum(axis=1).to_numpy() == pytest.approx(np.ones(10), abs=1e-3)


def test_classification_report_and_baseline(finished_run):
    run, result, _ = finished_run
    report = json.loads((run.artifacts_dir / "eval" / "classification_report.json").read_text())
    assert sum(report[c]["support"] for c in run.data.classes) == len(run.data.test)
    assert report["accuracy"] == pytest.approx(result.accuracy, abs=1e-6)
    assert "precision" in (run.artifacts_dir / "eval" / "classification_report.txt").read_text()
    # digits is nearly balanced: always guessing the majority class scores about 1/10
    assert 0.05 < run.summary_metrics["baseline_accuracy"] < 0.15
    assert run.summary_metrics["baseline_macro_f1"] < run.summary_metrics["baseline_accuracy"]
    assert run.summary_metrics["test_macro_f1"] == pytest.approx(report["macro avg"]["f1-score"])


def test_majority_baseline_on_a_skewed_set():
    out = majority_baseline(torch.tensor([2, 2, 2, 0, 1]), torch.tensor([2, 2, 0, 1]), num_classes=3)
    assert out["baseline_accuracy"] == 0.5
    # F1 of class 2: precision 0.5, recall 1 -> 2/3; the other two classes score 0
    assert out["baseline_macro_f1"] == pytest.approx((2 / 3) / 3)


def test_confusion_tables_keep_absent_classes():
    counts, norm = confusion_tables(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), ["a", "b", "c"])
    assert counts.loc["a"].tolist() == [1, 1, 0]
    assert counts.loc["c"].tolist() == [0, 0, 0]
    assert norm.loc["a"].tolist() == [0.5, 0.5, 0.0]
    assert norm.loc["c"].tolist() == [0.0, 0.0, 0.0]


def test_tsne_csvs_have_the_subset_size_and_stratification(finished_run):
    run, _, _ = finished_run
    frames = {stage: pd.read_csv(run.artifacts_dir / "latent" / f"tsne_{stage}.csv") for stage in ("begin", "middle", "end")}
    for frame in frames.values():
        assert len(frame) == 150
        assert list(frame.columns) == ["test_index", "label", "class", "x", "y"]
        assert np.isfinite(frame[["x", "y"]].to_numpy()).all()
        # stratified: every class of digits (~36 test images each) gets 14-16 of the 150
        assert frame["label"].value_counts().between(14, 16).all()
        assert (run.data.test.labels[torch.as_tensor(frame["test_index"].to_numpy().copy())].numpy() == frame["label"].to_numpy()).all()
    # the same test images at every stage; the map itself changes as the model trains
    assert (frames["begin"]["test_index"] == frames["end"]["test_index"]).all()
    assert not np.allclose(frames["begin"][["x", "y"]], frames["end"][["x", "y"]])


def test_tsne_separates_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 80)) * 10
    feats = np.concatenate([c + rng.normal(size=(30, 80)) for c in centres])
    coords = latent.tsne_embed(feats)
    labels = np.repeat(np.arange(3), 30)
    means = np.stack([coords[labels == k].mean(0) for k in range(3)])
    spread = max(coords[labels == k].std(0).max() for k in range(3))
    gaps = [np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 3 * spread


def test_kernel_png_dimensions_follow_filter_count(finished_run, tmp_path):
    run, _, _ = finished_run
    # lenet5: 6 filters of 1x5x5 -> a 2x3 grid of tiles enlarged 48 // 5 = 9 times
    img = imread(run.artifacts_dir / "kernels" / "conv1_end.png")
    scale = kernels.TARGET_TILE_PX // 5
    g = kernels.GAP_PX
    assert img.shape[:2] == (2 * 5 * scale + 3 * g, 3 * 5 * scale + 4 * g)
    sizes = {}
    for filters in (6, 16, 64):
        path = kernels.save_kernel_grid(torch.randn(filters, 3, 3, 3), tmp_path / f"k{filters}.png")
        sizes[filters] = imread(path).shape
        rows, cols = kernels.grid_shape(filters)
        tile = 3 * (kernels.TARGET_TILE_PX // 3)
        assert sizes[filters][:2] == (rows * tile + (rows + 1) * g, cols * tile + (cols + 1) * g)
    assert sizes[6][1] < sizes[16][1] < sizes[64][1]


def test_kernel_grid_colour_and_per_channel_layout():
    rgb = kernels.kernel_grid(torch.randn(4, 3, 2, 2))
    tile = 2 * (kernels.TARGET_TILE_PX // 2)
    g = kernels.GAP_PX
    # RGB filters are coloured: channels differ somewhere
    assert not np.allclose(rgb[..., 0], rgb[..., 1])
    assert rgb.shape[:2] == (2 * tile + 3 * g, 2 * tile + 3 * g)
    gray = kernels.kernel_grid(torch.randn(4, 2, 2, 2))
    # two input channels: each cell holds two grayscale tiles side by side
    assert gray.shape[:2] == (2 * tile + 3 * g, 2 * (2 * tile + g) + 3 * g)
    assert np.allclose(gray[..., 0], gray[..., 1])


def test_kernels_are_normalised_per_filter():
    w = torch.zeros(2, 1, 2, 2)
    w[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    w[1, 0] = torch.tensor([[100.0, 200.0], [300.0, 400.0]])
    norm = kernels.normalise_filters(w)
    assert norm[0, 0].ravel() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert norm[1, 0].ravel() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert (kernels.normalise_filters(torch.ones(1, 1, 2, 2)) == 0.5).all()


def test_retrieval_summary_fractions(finished_run):
    run, _, _ = finished_run
    summary = json.loads((run.artifacts_dir / "retrieval" / "summary.json").read_text())
    assert summary["k"] == 10 and summary["queries"] == 10
    assert set(summary["layers"]) == {"intermediate", "output"}
    for stats in summary["layers"].values():
        assert 0.0 <= stats["same_class_fraction"] <= 1.0
        assert set(stats["per_class"]) == set(run.data.classes)
        assert all(0.0 <= v <= 1.0 for v in stats["per_class"].values())
        assert all(v * 10 == pytest.approx(round(v * 10)) for v in stats["per_class"].values())
    assert run.summary_metrics["retrieval_output_same_class"] == summary["layers"]["output"]["same_class_fraction"]


def test_retrieval_finds_same_class_neighbours():
    # two well-separated groups: every neighbour of a query shares its class
    feats = torch.cat([torch.randn(6, 4) * 0.01 + torch.tensor([1.0, 0, 0, 0]), torch.randn(6, 4) * 0.01 + torch.tensor([0, 1.0, 0, 0])])
    labels = torch.tensor([0] * 6 + [1] * 6)
    nb = retrieval.retrieve({"f": feats}, labels, 2, k=5)
    assert set(nb["f"]) == {0, 1}
    assert 0 not in nb["f"][0].tolist()  # the query itself is excluded
    summary = retrieval.summarise(nb, labels, ["a", "b"], 5)
    assert summary["layers"]["f"]["same_class_fraction"] == 1.0
    assert retrieval.cosine_neighbours(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [-1.0, 0]]), 0, 3).tolist() == [1, 2, 3]


def test_memory_csv_on_cpu(finished_run):
    run, _, _ = finished_run
    frame = pd.read_csv(run.artifacts_dir / "memory" / "memory.csv")
    assert list(frame.columns) == list(memory.RSS_COLUMNS)
    # start, every 2nd of 10 steps, end
    assert frame["step"].tolist() == [0, 2, 4, 6, 8, 10, 10]
    assert (frame["rss_mb"] > 10).all()
    assert run.summary_metrics["peak_rss_mb"] == frame["rss_mb"].max()
    assert "gpu_peak_allocated_mb" not in run.summary_metrics


def test_memory_cuda_columns_formatting(tmp_path):
    log = memory.MemoryLog(cuda=True)
    mb = int(memory.MB)
    for step, alloc in ((0, 10), (50, 30), (100, 20)):
        counters = {"allocated": alloc * mb, "reserved": 64 * mb, "peak_allocated": max(alloc, 30 if step else 10) * mb, "peak_reserved": 64 * mb}
        log.add(memory.memory_row(step, 1, 0.5, 200 * mb, counters))
    frame = pd.read_csv(log.write(tmp_path / "memory.csv"))
    assert list(frame.columns) == list(memory.RSS_COLUMNS + memory.CUDA_COLUMNS)
    assert frame["gpu_allocated_mb"].tolist() == [10.0, 30.0, 20.0]
    assert log.peaks() == {"peak_rss_mb": 200.0, "gpu_peak_allocated_mb": 30.0, "gpu_peak_reserved_mb": 64.0}
    assert memory.cuda_bytes(torch.device("cpu")) is None


def test_predictions_grid_and_end_of_run_timing(finished_run):
    run, _, callbacks = finished_run
    assert imread(run.artifacts_dir / "eval" / "predictions.png").shape[0] > 400
    timed = sum(s for c in callbacks for phase, s in c.seconds.items() if not phase.startswith("tsne_") or phase == "tsne_end")
    assert run.summary_metrics["artifacts_time_s"] == pytest.approx(timed)


def test_switches_turn_kinds_off(digits, tmp_path):
    config = TrainConfig().replace(run={"epochs": 1}, artifacts=ARTIFACTS_OFF)
    run = RunState(config=config, model=lenet(digits), data=digits, device=torch.device("cpu"), artifacts_dir=tmp_path)
    simulate_run(run, artifact_callbacks(config), epochs=1, steps_per_epoch=1)
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    # the per-example test predictions stay (~4 bytes an example): the study report's McNemar test reads them
    assert written == {"config.json", "eval/test_predictions.npz"}
    assert "baseline_accuracy" in run.summary_metrics  # a number, not a file: always there
    assert run.summary_metrics["test_examples"] == len(digits.test)


def test_failure_salvages_curves_without_raising(digits, tmp_path):
    config = TrainConfig()
    run = RunState(config=config, model=lenet(digits), data=digits, device=torch.device("cpu"), artifacts_dir=tmp_path)
    run.history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "train_accuracy": 0.5, "val_accuracy": 0.4}]
    dispatch(artifact_callbacks(config), "on_failure", run, RuntimeError("boom"), "FAILED")
    assert (tmp_path / "metrics" / "history.csv").exists()
    assert (tmp_path / "memory" / "memory.csv").exists()


def test_probes_shapes_and_mode_restored(digits):
    model = lenet(digits)
    model.train()
    feats = collect_features(model, digits.test.images[:70], mean=digits.mean, std=digits.std, batch_size=32)
    assert model.training
    assert feats["penultimate"].shape == (70, 84)
    assert feats["intermediate"].shape == (70, 120)  # conv3 output 120@1x1
    assert feats["logits"].shape == (70, 10)
    with torch.no_grad():
        model.eval()
        x = (digits.test.images[:70].float() / 255 - digits.mean[0]) / digits.std[0]
        assert torch.allclose(model(x), feats["logits"], atol=1e-5)


def test_probes_pool_large_feature_maps():
    from cnnbench.engine.probes import pool_flatten

    assert pool_flatten(torch.randn(2, 8, 16, 16)).shape == (2, 8 * 16)
    assert pool_flatten(torch.randn(2, 8, 3, 2)).shape == (2, 8 * 6)
    assert pool_flatten(torch.randn(2, 5)).shape == (2, 5)


def test_probes_do_not_touch_the_rng(digits):
    model = lenet(digits)
    state = torch.get_rng_state()
    collect_features(model, digits.test.images[:10], mean=digits.mean, std=digits.std)
    cb.model_summary_text(RunState(config=TrainConfig(), model=model, data=digits, device=torch.device("cpu"), artifacts_dir=Path(".")))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.slow
def test_tracked_run_uploads_every_artifact(tracking_uri, experiment, tmp_path):
    """End to end: api.train with the MLflow tracker; the artifacts arrive under their paths."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from cnnbench import api

    config = TrainConfig().replace(
        data={"train_size": 300}, run={"epochs": 2, "quiet": True, "device": "cpu", "tracking_uri": tracking_uri, "experiment": experiment},
        artifacts={"tsne_samples": 100, "model": False},
    )
    result = api.train(config, api.run_callbacks(config))
    client = MlflowClient(tracking_uri)

    def walk(path=None):
        for item in client.list_artifacts(result.run_id, path):
            yield from walk(item.path) if item.is_dir else [item.path]

    paths = set(walk())
    expected = {"config.json", "model/summary.txt", "plots/learning_curves.png", "metrics/history.csv",
                "eval/confusion_matrix.png", "eval/confusion_matrix.csv", "eval/classification_report.json",
                "eval/classification_report.txt", "eval/predictions.png", "kernels/conv1_start.png",
                "kernels/conv1_end.png", "latent/tsne_begin.csv", "latent/tsne_middle.png", "latent/tsne_end.csv",
                "retrieval/summary.json", "retrieval/7.png", "memory/memory.csv"}
    assert expected <= paths, sorted(expected - paths)
    assert "checkpoints/last.pt" not in paths  # a finished run is not resumable: no dead weight
    local = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, tracking_uri=tracking_uri, dst_path=str(tmp_path)))
    assert pd.read_csv(local / "eval" / "confusion_matrix.csv", index_col=0).to_numpy().sum() == 360
    assert len(pd.read_csv(local / "latent" / "tsne_end.csv")) == 100
    assert len(pd.read_csv(local / "metrics" / "history.csv")) == 2
    assert TrainConfig.from_dict(json.loads((local / "config.json").read_text())).to_dict() == api.resolve(config).config.to_dict()
    metrics = client.get_run(result.run_id).data.metrics
    for key in ("baseline_accuracy", "baseline_macro_f1", "peak_rss_mb", "artifacts_time_s", "retrieval_output_same_class"):
        assert key in metrics, key
    assert metrics["test_accuracy"] > metrics["baseline_accuracy"]


def test_a_run_with_its_figures_off_never_imports_matplotlib():
    """Not paying for what a run does not log: with every artifact switch off, ``cnnbench train``'s
    builders (run record, test predictions, baseline) run without importing matplotlib."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, 'tests'); from conftest import ARTIFACTS_OFF\n"
            "from cnnbench import api; from cnnbench.config import TrainConfig\n"
            "c = TrainConfig().replace(run={'epochs': 1, 'quiet': True}, data={'train_size': 100}, artifacts=ARTIFACTS_OFF)\n"
            "r = api.train(c, api.run_callbacks(c, tracker=False))\n"
            "print('baseline_accuracy' in r.metrics, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["True", "False"]
