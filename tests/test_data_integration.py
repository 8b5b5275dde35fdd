"""End to end through ``cnnbench train``: real CIFAR-10 from ../shared, each on-disk format on fake
files, ``edges`` with a pixel permutation and a domain shift, and the bad-input messages."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_files import write_cifar, write_idx_set

SHARED = Path(__file__).resolve().parents[2] / "shared"
PREPARE = SHARED / "data" / "prepare_cifar10.py"
CIFAR_CACHE = Path.home() / ".cache" / "cnnbench-test" / "cifar10"


@pytest.fixture(scope="session")
def real_cifar10() -> Path:
    """Real CIFAR-10 in its python layout, materialised once (reused across sessions)."""
    if not PREPARE.is_file():
        pytest.skip(f"real CIFAR-10 needs {PREPARE} (the shared/ folder beside the repository), which is absent")
    subprocess.run([sys.executable, str(PREPARE), str(CIFAR_CACHE)], check=True, capture_output=True)
    return CIFAR_CACHE


def _train(cli, tracking_uri, experiment, fast_flags, *args):
    result = cli("train", "--tracking-uri", tracking_uri, "--experiment", experiment, "--epochs", "1",
                 *fast_flags, *args)
    return result


def _finished_run(runs_in, experiment):
    runs = runs_in(experiment)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    return runs[0]


@pytest.mark.shared
@pytest.mark.slow
def test_real_cifar10_loads_complete_and_fast(real_cifar10):
    import torch  # noqa: F401 - imported before timing: the budget is for reading the data

    from cnnbench.data.cifar import CIFAR10

    start = time.perf_counter()
    bundle = CIFAR10.load(data_dir=real_cifar10, seed=0, download=False)
    load_s = time.perf_counter() - start
    assert load_s < 5.0, f"loading CIFAR-10 took {load_s:.1f} s"
    assert bundle.train.images.shape == (50_000, 3, 32, 32) and bundle.test.images.shape == (10_000, 3, 32, 32)
    assert bundle.train.labels.bincount().tolist() == [5000] * 10
    assert bundle.test.labels.bincount().tolist() == [1000] * 10
    assert bundle.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    mean = bundle.train.images[:5000].float().mean().item() / 255
    assert 0.4 < mean < 0.55  # natural images, not noise or zeros


@pytest.mark.shared
@pytest.mark.slow
def test_cli_trains_one_epoch_on_real_cifar10(real_cifar10, cli, tracking_uri, experiment, runs_in, fast_flags):
    result = _train(cli, tracking_uri, experiment, fast_flags, "--dataset", "cifar10", "--data-dir", real_cifar10,
                    "--model", "strided_cnn", "--train-size", "2000", "--augment", "flip-crop",
                    "--val-split", "0.02")
    assert result.exit_code == 0, result.output
    run = _finished_run(runs_in, experiment)
    assert run.data.params["dataset"] == "cifar10" and run.data.params["train_size"] == "2000"
    m = run.data.metrics
    assert m["train_loss"] < 2.30  # below chance-level cross-entropy ln(10): it learned something
    assert m["test_accuracy"] > 0.15 and m["baseline_accuracy"] == pytest.approx(0.1)  # above chance (0.1)


def _imagefolder(root: Path, classes=("circle", "square"), per_class=12):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 4)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8) + np.uint8(150 * c)
                Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["cifar10", "mnist-gz", "fashion_mnist-raw",
                                 "imagefolder"])
def test_cli_trains_one_epoch_on_each_fake_format(fmt, tmp_path, cli, tracking_uri, experiment, runs_in, fast_flags):
    if fmt == "cifar10":
        write_cifar(tmp_path, per_batch=20)
        args, sizes = ["--dataset", "cifar10", "--model", "lenet5"], "90 train / 10 val / 20 test"
    elif fmt == "mnist-gz":
        write_idx_set(tmp_path / "MNIST" / "raw", n_train=40, n_test=10, gz=True)
        args, sizes = ["--dataset", "mnist", "--model", "lenet5"], "36 train / 4 val / 10 test"
    elif fmt == "fashion_mnist-raw":
        write_idx_set(tmp_path / "fashion_mnist", n_train=40, n_test=10, gz=False)
        args, sizes = ["--dataset", "fashion_mnist", "--model", "mlp"], "36 train / 4 val / 10 test"
    else:
        _imagefolder(tmp_path)
        args = ["--dataset", "imagefolder", "--model", "lenet5", "--dataset-option", "size=32", "--val-split", "0.25"]
        sizes = "18 train / 6 val / 8 test"
    result = cli("train", "--tracking-uri", tracking_uri, "--experiment", experiment, "--epochs", "1",
                 *[f for f in fast_flags if f != "--quiet"], "--data-dir", tmp_path, "--batch-size", "16", *args)
    assert result.exit_code == 0, result.output
    assert f"({sizes} images)" in result.output
    run = _finished_run(runs_in, experiment)
    assert run.data.params["data_dir"] == str(tmp_path)
    if fmt == "imagefolder":
        assert run.data.params["data.size"] == "32"


@pytest.mark.slow
def test_cli_edges_with_permutation_and_domain_shift(cli, tracking_uri, experiment, runs_in, fast_flags):
    result = cli("train", "--tracking-uri", tracking_uri, "--experiment", experiment, "--epochs", "1",
                 *[f for f in fast_flags if f != "--quiet"], "--dataset", "edges", "--model", "simple_cnn",
                 "--dataset-option", "data_per_class=40", "--dataset-option", "use_permutation=true",
                 "--dataset-option", "possible_edge_location_ratio=0.5", "--dataset-option", "num_classes=4")
    assert result.exit_code == 0, result.output
    assert "(160 train / 160 val / 160 test images)" in result.output  # val is the plugin's shifted split
    p = _finished_run(runs_in, experiment).data.params
    assert (p["data.use_permutation"], p["data.possible_edge_location_ratio"], p["data.num_classes"]) == ("True", "0.5", "4")


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--train-size", "0"], "--train-size must be positive; got 0"),
    (["--train-size", "5000"], "--train-size must be between 1 and 1293 (the training images left after the validation hold-out); got 5000"),
    (["--val-split", "1.5"], "--val-split must lie strictly between 0 and 1; got 1.5"),
    (["--val-split", "0"], "--val-split must lie strictly between 0 and 1; got 0.0"),
    (["--augment", "mixup"], "unknown --augment value 'mixup'; accepted: none, flip-crop, strong"),
    (["--dataset", "edges", "--dataset-option", "colour=red"], "unknown option(s) colour for dataset 'edges'; valid options: data_per_class"),
    (["--dataset", "edges", "--dataset-option", "num_classes=7"], "must be one of 3, 4, 5"),
    (["--model", "maxpool_cnn", "--model-option", "modules=4", "--dataset", "edges", "--image-size", "8"],
     "needs inputs of at least 16x16 pixels (4 max-pools of 2x2); got 8x8"),
    (["--dataset", "imagefolder"], "needs --data-dir"),
])
def test_cli_bad_data_input_is_a_usage_error(cli, tracking_uri, experiment, runs_in, fast_flags, args, message):
    result = _train(cli, tracking_uri, experiment, fast_flags, *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


@pytest.mark.slow
def test_cli_missing_files_offline_names_them(cli, tmp_path, tracking_uri, experiment, runs_in, fast_flags,
                                              monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline)
    result = _train(cli, tracking_uri, experiment, fast_flags, "--dataset", "mnist", "--data-dir", tmp_path / "none")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "train-images-idx3-ubyte" in text and str(tmp_path / "none" / "MNIST" / "raw") in text
    assert "download failed (OSError: network unreachable)" in text and "Download the four .gz files" in text
