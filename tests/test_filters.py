"""``cnnbench filters``: the reports' hand-designed kernels on an image, the figure in MLflow."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnnbench.artifacts.filters import KERNELS, apply, parse_kernel
from cnnbench.cli import main


@pytest.fixture
def image(tmp_path):
    pixels = np.zeros((40, 50, 3), np.uint8)
    pixels[:, 25:, 0] = 200  # a vertical edge in the red channel
    path = tmp_path / "edge.png"
    Image.fromarray(pixels).save(path)
    return path


def test_kernels_respond_to_edges_and_not_to_flat_regions():
    flat = np.full((20, 20), 100.0)
    for name in ("laplacian", "edge8"):
        assert np.allclose(apply(flat, KERNELS[name][1])[2:-2, 2:-2], 0)  # zero-sum kernels
    assert np.allclose(apply(flat, KERNELS["average3"][1])[2:-2, 2:-2], 100)
    assert np.allclose(apply(flat, KERNELS["average9"][1])[5:-5, 5:-5], 900)  # ones/9 as the homework: x9
    assert np.allclose(apply(flat, KERNELS["edge4"][1])[2:-2, 2:-2], 400)  # R0's 4-neighbour kernel sums to 4
    step = np.zeros((10, 10))
    step[:, 5:] = 1.0
    response = apply(step, KERNELS["laplacian"][1])[2:-2, :-1]  # (the last column meets the zero padding)
    assert set(np.nonzero(response[0])[0].tolist()) == {4, 5}  # only the columns beside the edge


def test_custom_kernel_rows():
    name, k = parse_kernel("0,1,0;1,-4,1;0,1,0")
    assert name == "custom_3x3" and np.array_equal(k, KERNELS["laplacian"][1])


def test_filters_command_logs_the_figure(image, tracking_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    out = CliRunner().invoke(main, ["filters", str(image), "--channel", "red", "--kernel", "edge8", "--kernel", "laplacian",
                                    "--tracking-uri", tracking_uri, "--experiment", "filters-test"])
    assert out.exit_code == 0, out.output
    run = MlflowClient(tracking_uri).search_runs(
        [MlflowClient(tracking_uri).get_experiment_by_name("filters-test").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.params["channel"] == "red"
    assert run.data.params["kernel.edge8"] == "-1,-1,-1;-1,8,-1;-1,-1,-1"
    files = {f.path for f in MlflowClient(tracking_uri).list_artifacts(run.info.run_id, "filters")}
    assert {"filters/filters.png", "filters/edge8.png", "filters/laplacian.png", "filters/filters.csv"} <= files
    assert run.data.metrics["edge8_min"] == pytest.approx(-200 * 3)  # a dark pixel beside the edge: 3 bright neighbours


@pytest.mark.parametrize("args,message", [
    (["missing.png"], "does not exist"),
    (["{image}", "--kernel", "sobel"], "--kernel expects one of"),
    (["{image}", "--no-mlflow"], "--no-mlflow writes the files only"),
])
def test_filters_bad_input(image, tmp_path, args, message):
    out = CliRunner().invoke(main, ["filters", *[a.format(image=image) for a in args]])
    assert out.exit_code == 2 and message in out.output
    notimage = tmp_path / "x.png"
    notimage.write_text("hello")
    out = CliRunner().invoke(main, ["filters", str(notimage), "--no-mlflow", "--out", str(tmp_path / "o")])
    assert out.exit_code == 2 and "not an image" in out.output
