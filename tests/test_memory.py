"""cnnbench memory: the prediction on fake tensors against the measured CPU step, its breakdown,
the optimizer order, the budget search, bad input, the MLflow run, and gradient accumulation
(same weights as the large batch, float64, for a lower predicted and measured peak)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import new_store
from cnnbench.errors import ConfigError
from cnnbench.events import Callback
from cnnbench.memory import largest_batch, measure, predict
from cnnbench.memory.measure import device_used_bytes, measure_device, process_used_bytes
from cnnbench.memory.predict import BREAKDOWN
from cnnbench.memory.tracker import LiveTensorBytes

MIB = 2**20
DIGITS = (1, 28, 28)
CIFAR = (3, 32, 32)
NO_GPU = not torch.cuda.is_available()


@pytest.fixture(autouse=True)
def one_thread():
    """oneDNN's per-thread buffers depend on the thread count; keep it fixed during a test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the tracker ------------------------------------------------------------------------------------
def test_tracker_counts_storages_once_and_releases_them():
    tracker = LiveTensorBytes()
    with tracker:
        a = torch.empty(1000)  # 4000 bytes
        view = a[:10].view(2, 5)  # same storage: nothing added
        b = a * 2  # 4000 more
        assert tracker.total == 8000 and view.numel() == 10
        del b
        assert tracker.total == 4000
        a.add_(1)  # in place: nothing added
        c = torch.empty(250, dtype=torch.float64)  # 2000
    assert (tracker.total, tracker.peak) == (6000, 8000)
    tracker.mark(c, "gradients")
    assert tracker.live()["gradients"] == 2000 and tracker.live()["temporary"] == 4000
    assert tracker.peak_breakdown()["temporary"] == 8000


def test_cuda_rounding_is_512_byte_blocks():
    tracker = LiveTensorBytes(round_to=512)
    with tracker:
        x = torch.empty(1)  # 4 bytes -> one 512-byte block
        y = torch.empty(129)  # 516 bytes -> two blocks
    assert tracker.total == 512 + 1024 and x.numel() + y.numel() == 130


# -- prediction against measurement ---------------------------------------------------------------
@pytest.mark.parametrize("model, shape, classes, batch, optimizer", [
    ("lenet5", DIGITS, 10, 8, "sgd"),
    ("lenet5", DIGITS, 10, 64, "adam"),
    ("simple_cnn", DIGITS, 3, 32, "momentum"),
    ("strided_cnn", CIFAR, 10, 16, "adam"),
    ("resnet18", CIFAR, 10, 8, "sgd"),
    ("resnet18", CIFAR, 10, 32, "adam"),
])
def test_prediction_within_10_percent_of_the_measured_cpu_step(model, shape, classes, batch, optimizer):
    pred = predict(model, shape, batch, optimizer, num_classes=classes)
    meas = measure(model, shape, batch, optimizer, num_classes=classes)
    assert abs(pred.peak_mb - meas.peak_mb) <= 0.10 * meas.peak_mb, (pred.peak_mb, meas.peak_mb)
    assert abs(pred.eval_peak_mb - meas.eval_peak_mb) <= 0.10 * meas.eval_peak_mb
    # the fake step is the real step: without kernel workspaces, the prediction is exactly what the
    # same tracker counts on the real tensors; the workspace is what the allocator sees on top
    bare = predict(model, shape, batch, optimizer, num_classes=classes, workspace=False)
    assert bare.peak_mb == meas.tracked_peak_mb
    assert bare.peak_mb <= meas.peak_mb
    assert meas.method.startswith("torch.profiler")


def test_breakdown_sums_to_the_peak_and_sizes_match_the_model():
    from cnnbench.models import build_model

    net = build_model("resnet18", num_classes=10, in_channels=3, image_size=(32, 32))
    weight_bytes = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])
    grad_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    for optimizer, copies in (("sgd", 0), ("momentum", 1), ("adam", 2)):
        pred = predict("resnet18", CIFAR, 16, optimizer)
        assert sum(pred.breakdown().values()) == pytest.approx(pred.peak_mb, abs=0.01)
        assert set(pred.breakdown()) == set(BREAKDOWN)
        assert pred.weights_mb == pytest.approx(weight_bytes / MIB, abs=1e-3)
        assert pred.gradient_size_mb == pytest.approx(grad_bytes / MIB, abs=1e-3)
        # Adam's state also holds one 4-byte step counter per parameter tensor
        assert pred.optimizer_state_size_mb == pytest.approx(copies * grad_bytes / MIB, abs=0.01)
        assert pred.parameters_mb == pytest.approx(pred.weights_mb, abs=1e-3)  # weights are live at any peak
        assert 0 < pred.saved_activations_mb and pred.eval_peak_mb < pred.peak_mb


def test_a_module_predicts_like_its_registered_name():
    from cnnbench.models import build_model

    net = build_model("lenet5", num_classes=10, in_channels=1, image_size=(28, 28))
    before = [p.clone() for p in net.parameters()]
    assert predict(net, DIGITS, 32, "adam").peak_mb == predict("lenet5", DIGITS, 32, "adam").peak_mb
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # the module is not touched
    assert not any(type(p).__name__ == "FakeTensor" for p in net.parameters())


def test_optimizer_state_and_peak_order_adam_momentum_sgd():
    preds = {o: predict("resnet18", CIFAR, 32, o) for o in ("sgd", "momentum", "adam")}
    state = {o: p.optimizer_state_size_mb for o, p in preds.items()}
    assert state["adam"] > state["momentum"] > state["sgd"] == 0
    assert preds["adam"].peak_mb > preds["momentum"].peak_mb > preds["sgd"].peak_mb
    assert preds["momentum"].peak_at.startswith("step 2")  # the state exists from the first step on
    assert preds["sgd"].first_step_peak_mb == preds["sgd"].steady_peak_mb


def test_peak_grows_with_the_batch_and_eval_needs_less():
    small, large = predict("lenet5", DIGITS, 16, "sgd"), predict("lenet5", DIGITS, 256, "sgd")
    assert large.peak_mb > small.peak_mb and large.saved_activations_mb > 10 * small.saved_activations_mb
    assert large.eval_peak_mb < large.peak_mb


def test_cuda_prediction_without_a_gpu():
    """Predicting for CUDA needs no GPU: 512-byte blocks, foreach optimizers, --amp applied (bf16
    halves the activations a wide network saves); no workspace without the device, said in a note."""
    cpu = predict("three_conv", CIFAR, 64, "adam")
    cuda = predict("three_conv", CIFAR, 64, "adam", device="cuda")
    amp = predict("three_conv", CIFAR, 64, "adam", device="cuda", amp=True)
    assert cuda.device == "cuda" and cuda.peak_mb >= predict("three_conv", CIFAR, 64, "adam", workspace=False).peak_mb
    assert amp.amp == "bfloat16" and amp.saved_activations_mb < 0.75 * cuda.saved_activations_mb
    ignored = predict("three_conv", CIFAR, 64, "adam", amp=True)
    assert ignored.amp is None and ignored.peak_mb == cpu.peak_mb and "CUDA only" in ignored.notes[0]
    if NO_GPU:
        assert any("no GPU here" in n for n in cuda.notes) and cuda.workspace_mb == 0


# -- the CUDA measurement degrades on CPU ----------------------------------------------------------
@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU path")
def test_cuda_measurement_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        measure_device("cuda")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        measure("lenet5", DIGITS, 8, "sgd", device="cuda")
    assert device_used_bytes(torch.device("cpu")) is None and process_used_bytes(torch.device("cpu")) is None
    assert measure_device("auto").type == "cpu"


@pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU")
def test_cuda_measurement_matches_the_prediction():
    pred = predict("resnet18", CIFAR, 32, "adam", device="cuda")
    meas = measure("resnet18", CIFAR, 32, "adam", device="cuda")
    assert abs(pred.peak_mb - meas.peak_mb) <= 0.10 * meas.peak_mb
    assert meas.reserved_peak_mb >= meas.peak_mb and meas.device_used_mb > meas.peak_mb


# -- the batch that fits ----------------------------------------------------------------------------
def test_largest_batch_is_the_last_that_fits():
    fit = largest_batch("lenet5", DIGITS, 12.0, "adam")
    assert fit.batch_size > 1 and fit.predicted_peak_mb <= 12.0
    assert predict("lenet5", DIGITS, fit.batch_size + 1, "adam").peak_mb > 12.0
    assert len(fit.probes) <= 16  # interpolation + bisection, not a scan
    sgd = largest_batch("lenet5", DIGITS, 12.0, "sgd")
    assert sgd.batch_size >= fit.batch_size  # less optimizer state, at least as large a batch


def test_largest_batch_confirmed_by_a_measured_step():
    fit = largest_batch("lenet5", DIGITS, 6.0, "sgd", measure=True)
    assert fit.batch_size > 1 and fit.measured_peak_mb <= 6.0
    assert fit.measured[fit.batch_size] == fit.measured_peak_mb


def test_budget_below_the_weights_says_the_minimum():
    with pytest.raises(ConfigError, match=r"smaller than the weights of resnet18 alone \(42\.7 MiB\).*batch 2, adam\) needs"):
        largest_batch("resnet18", CIFAR, 10, "adam")  # BatchNorm cannot train on batch 1 at 1x1 spatial


def test_budget_between_weights_and_one_step_fits_nothing():
    fit = largest_batch("resnet18", CIFAR, 100, "adam")  # weights 42.7, batch 2 with Adam ~190
    assert fit.batch_size == 0 and "needs" in fit.note


# -- the command ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--optimizers", "sgd,lion"], "unknown optimizer 'lion'; accepted: sgd, momentum"),
    (["--batch-sizes", "8,0"], "--batch-sizes expects positive integers"),
    (["--batch-sizes", "8,x"], "--batch-sizes expects positive integers"),
    (["--budget-mb", "0.1"], "smaller than the weights of lenet5 alone (0.2 MiB)"),
    (["--budget-mb", "-5"], "--budget-mb must be a positive number"),
])
def test_bad_input_is_one_line_and_exit_2(cli, args, message):
    result = cli("memory", "lenet5", "--dataset", "digits", "--no-track", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU path")
def test_measure_on_cuda_without_a_gpu_exits_2(cli):
    result = cli("memory", "lenet5", "--measure", "--device", "cuda", "--no-track")
    assert result.exit_code == 2 and "needs a CUDA GPU" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_command_table_json_and_mlflow_run(cli, tmp_path):
    import mlflow

    uri = new_store(tmp_path)
    result = cli("memory", "lenet5", "--dataset", "digits", "--batch-sizes", "8,32", "--optimizers", "sgd,adam",
                 "--measure", "--budget-mb", "6", "--json", "--tracking-uri", uri, "--experiment", "mem")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    rows = {(r["optimizer"], r["batch_size"]): r for r in out["rows"]}
    assert set(rows) == {("sgd", 8), ("sgd", 32), ("adam", 8), ("adam", 32)}
    for r in rows.values():
        assert abs(r["error_pct"]) <= 10 and r["predicted_peak_mb"] == pytest.approx(
            sum(r[k] for k in BREAKDOWN), abs=0.01)
    assert out["input_shape"] == [1, 28, 28] and {f["optimizer"] for f in out["fits"]} == {"sgd", "adam"}
    assert all(0 < f["measured_peak_mb"] <= 6 for f in out["fits"])

    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "lenet5" and run.data.params["input_shape"] == "1x28x28"
    assert run.data.params["optimizers"] == "sgd,adam" and run.data.params["batch_sizes"] == "8,32"
    history = client.get_metric_history(run.info.run_id, "predicted_peak_mb_adam")
    assert {m.step: m.value for m in history} == {8: rows[("adam", 8)]["predicted_peak_mb"],
                                                  32: rows[("adam", 32)]["predicted_peak_mb"]}
    assert run.data.metrics["largest_batch_sgd"] == next(f["batch_size"] for f in out["fits"] if f["optimizer"] == "sgd")
    assert run.data.metrics["max_abs_error_pct"] == out["max_abs_error_pct"]
    folder = client.download_artifacts(run.info.run_id, "memory", str(tmp_path / "dl"))
    with open(f"{folder}/prediction.csv") as handle:
        logged = list(csv.DictReader(handle))
    assert [(r["optimizer"], int(r["batch_size"]), float(r["predicted_peak_mb"])) for r in logged] == [
        (r["optimizer"], r["batch_size"], r["predicted_peak_mb"]) for r in out["rows"]]
    with open(f"{folder}/memory_vs_batch_size.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_command_table_without_tracking(cli):
    result = cli("memory", "resnet18", "--input-shape", "3,32,32", "--batch-sizes", "8", "--optimizers", "momentum",
                 "--no-track")
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("momentum"))
    pred = predict("resnet18", CIFAR, 8, "momentum")
    assert f"{pred.peak_mb:.1f}" in line.split() and "MLflow" not in result.output


# -- gradient accumulation: same weights, lower peak ------------------------------------------------
class _Float64(Callback):
    """Train in float64 through the engine's own loop: the model is converted when the run starts
    (same Parameter objects, so the optimizer keeps them) and its input cast on the way in."""

    def on_run_start(self, run):
        self.initial = {k: v.clone() for k, v in run.model.state_dict().items()}
        run.model.double()
        run.model.register_forward_pre_hook(lambda module, args: (args[0].double(), *args[1:]))


def test_grad_accumulation_reaches_the_large_batch_weights_at_a_lower_peak():
    from cnnbench import api
    from conftest import tiny_config

    # 200 digits images: 4 batches of 64 (the last 8) vs groups of 2 x 32 with --grad-accum 2
    big_cfg = tiny_config(optim={"batch_size": 64, "optimizer": "momentum", "lr": 0.05}, run={"epochs": 2})
    acc_cfg = big_cfg.replace(optim={"batch_size": 32, "grad_accum": 2})
    data = api.load_data(big_cfg)
    watch = _Float64()
    big = api.train(big_cfg, [watch], data=data)
    acc = api.train(acc_cfg, [_Float64()], data=data)
    worst = max(float((a - b).abs().max()) for a, b in zip(big.model.state_dict().values(), acc.model.state_dict().values()))
    assert next(big.model.parameters()).dtype == torch.float64
    assert worst < 1e-12, worst  # float64 round-off only (float32 would differ by ~1e-6)
    moved = max(float((v - watch.initial[k].double()).abs().max()) for k, v in big.model.state_dict().items())
    assert moved > 1e-3  # the weights did train

    shape = (1, 28, 28)
    one = predict("lenet5", shape, 64, "momentum")
    two = predict("lenet5", shape, 32, "momentum", grad_accum=2)
    assert two.peak_mb < one.peak_mb and two.saved_activations_mb < 0.6 * one.saved_activations_mb
    measured = measure("lenet5", shape, 32, "momentum", grad_accum=2).peak_mb
    assert measured < measure("lenet5", shape, 64, "momentum").peak_mb
    assert abs(two.peak_mb - measured) <= 0.10 * measured


def test_prediction_for_a_train_config():
    """What train --batch-size auto / predicted_peak_mb / info / study call: the config's model,
    optimizer, precision and accumulation."""
    from cnnbench import api
    from cnnbench.memory.for_config import largest_batch_config, predict_config
    from conftest import tiny_config

    resolved = api.resolve(tiny_config(optim={"optimizer": "momentum", "batch_size": 48, "grad_accum": 2}))
    pred = predict_config(resolved.config, resolved.info, torch.device("cpu"))
    assert (pred.model, pred.batch_size, pred.optimizer, pred.grad_accum) == ("lenet5", 48, "momentum", 2)
    assert pred.peak_mb == predict("lenet5", DIGITS, 48, "momentum", grad_accum=2).peak_mb
    fit = largest_batch_config(resolved.config, resolved.info, "cpu", 8.0)
    assert fit.optimizer == "momentum" and fit.predicted_peak_mb <= 8.0 < predict(
        "lenet5", DIGITS, fit.batch_size + 1, "momentum", grad_accum=2).peak_mb


# -- wired into train and studies -----------------------------------------------------------------
def test_train_batch_size_auto_picks_the_largest_fitting_batch():
    from cnnbench import api
    from conftest import tiny_config

    config = tiny_config(optim={"batch_size": "auto", "memory_budget": 8.0, "optimizer": "momentum"}, run={"epochs": 1})
    resolved = api.resolve(config)
    batch = resolved.config.optim.batch_size
    assert isinstance(batch, int) and batch > 1
    assert predict("lenet5", DIGITS, batch, "momentum").peak_mb <= 8.0 < predict("lenet5", DIGITS, batch + 1, "momentum").peak_mb
    result = api.train(config)
    assert result.metrics["predicted_peak_mb"] == resolved.memory["predicted_peak_mb"] <= 8.0


def test_train_memory_budget_refuses_a_batch_predicted_above_it_and_auto_needs_a_budget_off_cuda():
    from cnnbench import api
    from conftest import tiny_config

    with pytest.raises(ConfigError, match=r"--batch-size 512 is predicted to need .* above --memory-budget 5 MiB"):
        api.resolve(tiny_config(optim={"batch_size": 512, "memory_budget": 5.0}))
    with pytest.raises(ConfigError, match="smaller than the weights of lenet5 alone"):
        api.resolve(tiny_config(optim={"batch_size": "auto", "memory_budget": 0.1}))
    if NO_GPU:
        with pytest.raises(ConfigError, match="--batch-size auto needs --memory-budget MB when training on cpu"):
            api.resolve(tiny_config(optim={"batch_size": "auto"}))


def test_every_train_that_records_memory_logs_the_prediction(cli, tracking_uri, experiment, runs_in, fast_flags):
    flags = [f for f in fast_flags if f != "--no-memory"]
    result = cli("train", "--model", "lenet5", "--dataset", "digits", "--train-size", "200", "--epochs", "1",
                 "--batch-size", "auto", "--memory-budget", "6", "--optimizer", "sgd", "--tracking-uri", tracking_uri,
                 "--experiment", experiment, *flags)
    assert result.exit_code == 0, result.output
    (run,) = runs_in(experiment)
    batch = int(run.data.params["batch_size"])
    assert run.data.params["batch_size_auto"] == "True" and float(run.data.params["memory_budget"]) == 6.0
    assert run.data.metrics["predicted_peak_mb"] == predict("lenet5", DIGITS, batch, "sgd").peak_mb <= 6.0
    assert "peak_rss_mb" in run.data.metrics  # the measured peak beside it
    assert f"--batch-size auto: {batch}" in run.data.tags["cnnbench.notes"]


def test_study_cell_fit_check():
    from cnnbench import api
    from cnnbench.memory.for_config import cell_fits
    from conftest import tiny_config

    resolved = api.resolve(tiny_config(optim={"batch_size": 256}))
    fits, predicted, budget, reason = cell_fits(resolved.config, resolved.info, torch.device("cpu"), budget_mb=5.0)
    assert not fits and predicted > 5.0 and budget == 5.0 and "not launched" in reason
    assert cell_fits(resolved.config, resolved.info, torch.device("cpu"), budget_mb=500.0)[0]
    if NO_GPU:
        assert cell_fits(resolved.config, resolved.info, torch.device("cpu")) == (True, predicted, None, "")
