"""Engine behaviours on CPU with tiny digits runs: determinism, NaN stop, interrupt + resume
equality, early stopping restores the best weights, exact grad accumulation, optimizers,
schedulers, penalties, label smoothing, CUDA-only flags as noted no-ops, progress output."""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import pytest
import torch

from cnnbench import api
from cnnbench.config import TrainConfig
from cnnbench.engine import checkpoint
from cnnbench.engine.fit import evaluate, make_loaders
from cnnbench.engine.optim import build_optimizer, build_scheduler, penalised_parameters, penalty
from cnnbench.errors import ConfigError, TrainingError
from cnnbench.events import Callback

from conftest import tiny_config as tiny  # noqa: E402  (lenet5 on 200 digits images: 4 batches of 64, the last 8)


@pytest.fixture(scope="module")
def data():
    return api.load_data(tiny())


def train(config: TrainConfig, data, callbacks=(), resume_state=None):
    return api.train(config, list(callbacks), data=data, resume_state=resume_state)


class Recorder(Callback):
    """Records events; optionally acts at a given step or epoch."""

    def __init__(self, act_at_step=None, act_at_epoch_start=None, action=None, save_to=None):
        self.save_to = save_to
        self.events, self.steps, self.status, self.notes = [], 0, None, []
        self.act_at_step, self.act_at_epoch_start, self.action = act_at_step, act_at_epoch_start, action
        self.saved: Path | None = None

    def on_epoch_start(self, run, epoch):
        self.events.append(("epoch_start", epoch))
        if epoch == self.act_at_epoch_start:
            self.action(run)

    def on_step_end(self, run, step, loss):
        self.steps = step
        if step == self.act_at_step:
            self.action(run)

    def on_epoch_end(self, run, epoch, metrics):
        self.events.append(("epoch_end", epoch))

    def on_checkpoint(self, run, path):
        self.events.append(("checkpoint", torch.load(path, weights_only=False)["epoch"]))

    def on_run_end(self, run, summary):
        self.notes, self.params = list(run.notes), dict(run.params)

    def on_failure(self, run, error, status):
        self.status, self.notes = status, list(run.notes)
        last = run.artifacts_dir / "checkpoints" / checkpoint.LAST
        if self.save_to is not None and last.exists():  # what the tracker uploads for --resume
            self.saved = Path(shutil.copy(last, Path(self.save_to) / "last.pt"))


def test_same_seed_same_metrics_on_cpu(data):
    config = tiny(model={"options": {"dropout": 0.3}}, run={"epochs": 2})
    a, b = train(config, data), train(config, data)
    assert a.history == [{**h, "epoch_time_s": a.history[i]["epoch_time_s"], "epoch_images_per_s": a.history[i]["epoch_images_per_s"]}
                         for i, h in enumerate(b.history)]
    assert a.metrics["test_loss"] == b.metrics["test_loss"]
    assert a.metrics["test_accuracy"] == b.metrics["test_accuracy"]
    c = train(config.replace(run={"seed": 1}), data)
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]


def test_nan_loss_stops_at_once(data):
    def poison(run):  # the next forward pass returns NaN logits
        run.model.register_forward_hook(lambda m, i, out: out * float("nan"))

    rec = Recorder(act_at_step=2, action=poison)
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at epoch 1, batch 3"):
        train(tiny(), data, [rec])
    assert rec.status == "FAILED"
    assert rec.steps == 2  # no optimizer step after the bad batch
    assert ("epoch_end", 1) not in rec.events


def _metrics(result):
    return [{k: v for k, v in h.items() if k not in ("epoch_time_s", "epoch_images_per_s")} for h in result.history]


def test_interrupt_then_resume_matches_uninterrupted(data, tmp_path):
    config = tiny(model={"options": {"dropout": 0.3}}, run={"epochs": 3})
    straight = train(config, data)

    def interrupt(run):
        raise KeyboardInterrupt

    steps_per_epoch = math.ceil(200 / 64)
    rec = Recorder(act_at_step=steps_per_epoch + 2, action=interrupt, save_to=tmp_path)  # in the middle of epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(config, data, [rec])
    assert rec.status == "KILLED"
    assert any("interrupted during epoch 2" in n for n in rec.notes)
    state = checkpoint.load(rec.saved)
    assert state["epoch"] == 1 and state["global_step"] == steps_per_epoch
    resumed_rec = Recorder()
    resumed = train(config, data, [resumed_rec], resume_state=state)
    assert resumed_rec.events[0] == ("epoch_start", 2)  # continues at the next epoch
    # short epochs: last.pt is written after this process's first epoch (the tracker uploads it, so
    # even a SIGKILLed run can be resumed) and after the last one (and on the interrupt above)
    assert [e for e in resumed_rec.events if e[0] == "checkpoint"] == [("checkpoint", 2), ("checkpoint", 3)]
    assert _metrics(resumed) == _metrics(straight)
    assert resumed.metrics["test_loss"] == straight.metrics["test_loss"]
    assert resumed.metrics["test_accuracy"] == straight.metrics["test_accuracy"]


def test_interrupt_in_first_epoch_leaves_an_epoch_zero_checkpoint(data, tmp_path):
    def interrupt(run):
        raise KeyboardInterrupt

    rec = Recorder(act_at_step=1, action=interrupt, save_to=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(run={"epochs": 1}), data, [rec])
    state = checkpoint.load(rec.saved)
    assert state["epoch"] == 0 and state["history"] == []
    assert train(tiny(run={"epochs": 1}), data, resume_state=state).metrics["test_accuracy"] == \
        train(tiny(run={"epochs": 1}), data).metrics["test_accuracy"]


def test_early_stopping_restores_best_weights(data, tmp_path):
    snapshots = {}
    per_epoch = math.ceil(200 / 64)

    class Spy(Callback):
        def on_epoch_end(self, run, epoch, metrics):
            snapshots[epoch] = {k: v.clone() for k, v in run.model.state_dict().items()}

        def on_eval_end(self, run, result):
            snapshots["test"] = result
            snapshots["best_file"] = torch.load(run.artifacts_dir / "checkpoints" / checkpoint.BEST)

    def wreck(run):  # after the last step of epoch 3: validation collapses to chance
        with torch.no_grad():
            for p in run.model.parameters():
                p.zero_()

    config = tiny(run={"epochs": 6, "patience": 1}, optim={"lr": 3e-3})
    rec = Recorder(act_at_step=3 * per_epoch, action=wreck)
    result = train(config, data, [rec, Spy()])
    assert [e for e in rec.events if e[0] == "epoch_end"] == [("epoch_end", 1), ("epoch_end", 2), ("epoch_end", 3)]
    assert result.metrics["best_epoch"] == 2.0 and result.metrics["epochs_completed"] == 3.0
    assert any("early stopping after epoch 3" in n for n in rec.notes)
    best = snapshots[2]
    assert all(torch.equal(snapshots["best_file"][k], v) for k, v in best.items())
    # the test set was scored with epoch 2's weights, not the wrecked epoch-3 ones
    model = api.build_model(api.resolve(config).config, api.resolve(config).info)
    model.load_state_dict(best)
    run = type("R", (), {"config": config, "data": data, "device": torch.device("cpu")})()
    expected = evaluate(model, make_loaders(run)["test"], "test")
    assert snapshots["test"].accuracy == expected.accuracy > 0.3
    assert torch.equal(snapshots["test"].predictions, expected.predictions)


def test_grad_accumulation_equals_the_large_batch(data):
    # 200 images: batches of 64 (64, 64, 64, 8) vs groups of 2 x 32 (the last group one batch of 8)
    big = train(tiny(optim={"batch_size": 64}, run={"epochs": 2}), data)
    accumulated = train(tiny(optim={"batch_size": 32, "grad_accum": 2}, run={"epochs": 2}), data)
    for a, b in zip(big.model.state_dict().values(), accumulated.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
    assert accumulated.metrics["test_accuracy"] == big.metrics["test_accuracy"]
    assert tiny(optim={"batch_size": 32, "grad_accum": 2}).flat_params()["effective_batch_size"] == 64


@pytest.mark.parametrize("name, klass, extra", [
    ("sgd", torch.optim.SGD, {"momentum": 0, "nesterov": False}),
    ("momentum", torch.optim.SGD, {"momentum": 0.8, "nesterov": False}),
    ("nesterov", torch.optim.SGD, {"momentum": 0.8, "nesterov": True}),
    ("rmsprop", torch.optim.RMSprop, {"momentum": 0}),
    ("adam", torch.optim.Adam, {}),
    ("adamw", torch.optim.AdamW, {}),
])
def test_optimizers(name, klass, extra):
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(TrainConfig().optim.__class__(optimizer=name, lr=0.05, momentum=0.8, weight_decay=1e-3), model)
    assert type(opt) is klass
    group = opt.param_groups[0]
    assert group["lr"] == 0.05 and group["weight_decay"] == 1e-3
    assert {k: group[k] for k in extra} == extra


def test_every_optimizer_trains(data):
    from cnnbench.config import OPTIMIZERS

    for name in OPTIMIZERS:
        lr = {"sgd": 0.05, "momentum": 0.02, "nesterov": 0.02}.get(name, 1e-3)
        result = train(tiny(optim={"optimizer": name, "lr": lr}, run={"epochs": 3}), data)
        losses = [h["train_loss"] for h in result.history]
        assert losses[-1] < losses[0], (name, losses)


def test_schedulers_shape_the_learning_rate(data):
    step = train(tiny(optim={"scheduler": "step", "step_size": 1, "gamma": 0.5, "lr": 0.01}), data)
    assert [h["lr"] for h in step.history] == pytest.approx([0.01, 0.005, 0.0025])
    cosine = train(tiny(optim={"scheduler": "cosine", "lr": 0.01}), data)
    assert [h["lr"] for h in cosine.history] == pytest.approx([0.01, 0.01 * (1 + math.cos(math.pi / 3)) / 2, 0.01 * (1 + math.cos(2 * math.pi / 3)) / 2])
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig().optim.__class__(scheduler="onecycle", lr=0.01)
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, epochs=3, steps_per_epoch=4)
    lrs = []
    for _ in range(12):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) <= 0.01 + 1e-9 and lrs[-1] < 0.05 * max(lrs) and lrs[2] > lrs[0]
    assert build_scheduler(TrainConfig().optim, opt, epochs=3, steps_per_epoch=4) is None


def test_penalty_values_and_targets(data):
    w = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    assert float(penalty([w], 0.1, 0.0)) == pytest.approx(0.6)
    assert float(penalty([w], 0.0, 0.01)) == pytest.approx(0.14)
    assert float(penalty([w], 0.1, 0.01)) == pytest.approx(0.74)
    assert penalty([w], 0.0, 0.0) is None
    resolved = api.resolve(tiny())
    model = api.build_model(resolved.config, resolved.info)
    assert [p.shape for p in penalised_parameters(model, "head")] == [torch.Size([10, 84])]
    assert len(penalised_parameters(model, "all")) == 5  # 3 conv kernels + 2 linear matrices, no biases
    # plain SGD so the penalty's pull is not rescaled away (Adam bounds every step by lr)
    sgd = {"optimizer": "sgd", "lr": 0.1}
    two = {"epochs": 2}
    plain = train(tiny(optim=sgd, run=two), data).model
    shrunk = train(tiny(optim={**sgd, "l2": 0.5}, run=two), data).model.classifier.weight.norm()
    l1 = train(tiny(optim={**sgd, "l1": 0.05, "penalty_on": "all"}, run=two), data).model.features[0].weight.abs().sum()
    assert shrunk < 0.8 * plain.classifier.weight.norm()
    assert l1 < 0.8 * plain.features[0].weight.abs().sum()


def test_label_smoothing_bounds_the_training_loss(data):
    # with eps=0.5 over 10 classes the smoothed target has entropy 1.677: the loss can never go below it
    eps, k = 0.5, 10
    q, r = 1 - eps + eps / k, eps / k
    floor = -(q * math.log(q) + (k - 1) * r * math.log(r))
    result = train(tiny(optim={"label_smoothing": eps, "lr": 3e-3}), data)
    assert all(h["train_loss"] >= floor - 1e-6 for h in result.history)
    assert result.history[-1]["val_loss"] < floor  # validation loss is plain cross-entropy


def test_amp_is_a_noted_no_op_on_cpu_and_channels_last_applies_there(data):
    rec = Recorder()
    flagged = train(tiny(run={"amp": True, "channels_last": "on", "epochs": 1}), data, [rec])
    assert any(n.startswith("--amp is a no-op on cpu") for n in rec.notes)
    assert rec.params["memory_format"] == "channels_last"
    plain = Recorder()
    reference = train(tiny(run={"channels_last": "off", "epochs": 1}), data, [plain])
    assert plain.params["memory_format"] == "contiguous"
    # the same float32 training in another layout: equal up to the kernels' summation order
    assert abs(flagged.metrics["test_loss"] - reference.metrics["test_loss"]) < 1e-3


def test_channels_last_auto_follows_the_device_and_the_model_declaration():
    from cnnbench.engine.precision import channels_last_for

    assert channels_last_for("auto", "cuda", "lenet5") is True
    assert channels_last_for("auto", "cpu", "fast_cnn") is True  # declared faster on CPU
    assert channels_last_for("auto", "cpu", "mlp") is False
    assert channels_last_for("auto", "mps", "fast_cnn") is False
    assert channels_last_for("off", "cuda", "fast_cnn") is False and channels_last_for("on", "cpu", "mlp") is True


def test_progress_bar_on_a_terminal_only(data):
    """The bar is the console callback's (the engine has none): shown on a terminal unless quiet."""
    from cnnbench.tracking.progress import ConsoleProgress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for quiet, tty, shown in ((False, True, True), (True, True, False), (False, False, False)):
        stream = Tty() if tty else io.StringIO()
        train(tiny(run={"epochs": 1, "quiet": quiet}), data, [ConsoleProgress(quiet=quiet, stream=stream)])
        out = stream.getvalue()
        assert ("epoch 1/1" in out and "img_s=" in out and "step" in out and "loss=" in out) is shown, (quiet, tty, out)
        assert ("epoch 1/1  train_loss" in out) is (not quiet), out  # the per-epoch line, terminal or not


@pytest.mark.parametrize("change, message", [
    ({"optim": {"optimizer": "lbfgs"}}, "unknown --optimizer value 'lbfgs'; accepted: sgd, momentum"),
    ({"optim": {"scheduler": "cyclic"}}, "unknown --scheduler value 'cyclic'; accepted: none, step"),
    ({"optim": {"weight_decay": -0.1}}, "--weight-decay must be >= 0"),
    ({"run": {"patience": -1}}, "--patience must be >= 0"),
    ({"optim": {"grad_accum": 0}}, "--grad-accum must be positive"),
])
def test_bad_engine_options_fail_before_training(change, message):
    with pytest.raises(ConfigError, match=message):
        api.resolve(TrainConfig().replace(**change))


def test_resume_from_something_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        checkpoint.load(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(ConfigError, match="not a cnnbench checkpoint .missing optimizer, epoch"):
        checkpoint.load(tmp_path / "partial.pt")


@pytest.mark.slow
def test_killed_run_resumes_in_place_in_mlflow(data, tracking_uri, experiment):
    from mlflow.tracking import MlflowClient

    config = tiny(model={"options": {"dropout": 0.3}}, run={"epochs": 3, "tracking_uri": tracking_uri, "experiment": experiment})

    def interrupt(run):
        raise KeyboardInterrupt

    steps_per_epoch = math.ceil(200 / 64)
    with pytest.raises(KeyboardInterrupt):
        api.train(config, [Recorder(act_at_step=steps_per_epoch + 1, action=interrupt), *api.run_callbacks(config)], data=data)
    client = MlflowClient(tracking_uri)
    (killed,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert killed.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(killed.info.run_id, "val_accuracy")] == [1]

    resumed = api.resume(killed.info.run_id, tracking_uri=tracking_uri, quiet=True)
    assert resumed.run_id == killed.info.run_id
    final = client.get_run(killed.info.run_id)
    assert final.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(killed.info.run_id, "val_accuracy")] == [1, 2, 3]
    straight = train(config, data)
    assert final.data.metrics["test_accuracy"] == pytest.approx(straight.metrics["test_accuracy"], abs=0)
    assert final.data.metrics["test_loss"] == pytest.approx(straight.metrics["test_loss"], rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_and_channels_last_on_cuda(data):
    rec = Recorder()
    result = train(tiny(run={"device": "cuda", "amp": True, "channels_last": "on", "epochs": 2}), data, [rec])
    assert any(n.startswith("--amp: autocast to") for n in rec.notes)
    assert not any("no-op" in n for n in rec.notes)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_linear_lr_scaling_trains_with_the_scaled_rate(data):
    """--lr-scale linear: lr 1e-3 given for batch 64 trains batch 32 x 4 accumulated at 2e-3."""
    config = tiny(optim={"lr_scale": "linear", "lr_reference_batch": 64, "batch_size": 32, "grad_accum": 4}, run={"epochs": 1})
    result = train(config, data)
    assert result.history[0]["lr"] == pytest.approx(2e-3)
    assert config.flat_params()["lr_reference_batch"] == 64
    assert "lr_reference_batch" not in tiny().flat_params()


def test_cpu_training_pins_the_threads_to_the_physical_cores_unless_the_user_set_them(data, monkeypatch):
    import psutil

    from cnnbench.engine.precision import cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        rec = Recorder()
        train(tiny(run={"epochs": 1}), data, [rec])
        expected = min(psutil.cpu_count(logical=False) or 1, len(psutil.Process().cpu_affinity()))
        assert rec.params["cpu_threads"] == expected
        monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 1)  # one physical core, 2+ logical
        if (psutil.Process().cpu_affinity() and len(psutil.Process().cpu_affinity()) > 1):
            assert cpu_threads() == 1 == torch.get_num_threads()
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's choice wins: nothing is changed
        assert cpu_threads() == before == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
