"""--time-budget (budgeted training): the run measures its first steps' speed, chooses its length
(logged), sizes the schedule to end at zero there; bad budgets are refused before any run exists.
Every run also carries the machine tags (CPU capability, model, flags) that "same seed, same metrics"
depends on. No timing is asserted: the chosen length is checked against the logged measurements."""

from __future__ import annotations

import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from cnnbench import api
from cnnbench.config import TrainConfig, preset_values
from cnnbench.engine.optim import BUDGET_MARGIN, budget_steps
from cnnbench.errors import ConfigError
from cnnbench.events import Callback

from conftest import new_store, tiny_config


MAX_EPOCHS = 1000  # far more than a few seconds train: the budget decides


class Steps(Callback):
    def __init__(self):
        self.last = 0

    def on_step_end(self, run, step, loss):
        self.last = step


@pytest.fixture(scope="module")
def digits():
    """The data, loaded once, and the process warmed by one short run: the budget then pays for
    training, not for this test's data loading or the first run's one-time costs."""
    data = api.load_data(tiny_config())
    api.train(tiny_config(run={"epochs": 1, "quiet": True, "device": "cpu"}), [], data=data)
    return data


def budget_run(tmp_path, data, scheduler: str, budget: float):
    uri = new_store(tmp_path)
    config = tiny_config(optim={"scheduler": scheduler, "lr": 0.01, "batch_size": 32},
                         run={"epochs": MAX_EPOCHS, "time_budget": budget, "quiet": True, "device": "cpu",
                              "tracking_uri": uri, "experiment": "budget"})
    steps = Steps()
    result = api.train(config, [steps, *api.run_callbacks(config)], data=data)
    client = MlflowClient(uri)
    return config, result, steps, client.get_run(result.run_id)


def brute_force_steps(budget, elapsed, step_s, epoch_eval_s, final_eval_s, spe, done, max_steps):
    """The longest run whose predicted cost fits, found by trying every length (not a bisection)."""
    room = budget * (1 - BUDGET_MARGIN) - elapsed - final_eval_s
    fitting = [t for t in range(done + 1, max_steps + 1)
               if (t - done) * step_s + math.ceil(t / spe) * epoch_eval_s <= room]
    return max(fitting, default=0)


def test_budget_run_logs_a_length_that_follows_from_its_measured_speed(tmp_path, digits):
    config, result, steps, run = budget_run(tmp_path, digits, "onecycle", 15.0)
    m, p = run.data.metrics, run.data.params
    assert p["time_budget_s"] == "15.0" and "time_budget" not in p
    data = digits
    spe = math.ceil(len(data.train.labels) / config.optim.batch_size)
    step_s = config.optim.batch_size / m["budget_measured_images_per_s"]
    n_val, n_test = len(data.val.labels), len(data.test.labels)
    rate = m["budget_eval_images_per_s"]
    done = int(m["budget_planned_at_step"])  # chosen again after epoch 1, with its measured overhead
    assert done == spe and m["budget_epoch_overhead_s"] >= 0
    expected = brute_force_steps(15.0, m["budget_elapsed_s"], step_s, n_val / rate + m["budget_epoch_overhead_s"],
                                 n_test / rate, spe, done, MAX_EPOCHS * spe)
    assert done < expected < MAX_EPOCHS * spe and m["budget_steps"] == expected  # the budget decided
    assert steps.last == expected  # exactly that many optimizer steps were taken
    assert m["budget_epochs"] == pytest.approx(expected / spe)
    assert m["epochs_completed"] == math.ceil(expected / spe)
    assert m["budget_last_step_lr"] < 1e-5 * config.optim.lr  # onecycle's last step at its floor (lr / 25 / 1e4)
    assert "--time-budget 15 s: measured" in run.data.tags["cnnbench.notes"]
    # the machine tags every run carries
    tags = run.data.tags
    assert tags["cnnbench.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert tags["cnnbench.cpu_model"] and tags["cnnbench.cpu_flags"]
    assert set(tags["cnnbench.cpu_flags"].split(",")) <= {"none", "avx2", "avx512f", "avx512_vnni", "avx512_bf16",
                                                         "amx_tile", "amx_bf16", "amx_int8"}
    assert ("cnnbench.gpu" in tags) == torch.cuda.is_initialized()


def test_a_budgeted_cosine_schedule_is_stepped_per_step_and_ends_at_zero(tmp_path, digits):
    config, result, steps, run = budget_run(tmp_path, digits, "cosine", 10.0)
    m = run.data.metrics
    total = m["budget_steps"]
    assert steps.last == total  # the last step trained at the rate of a cosine sized to the chosen length:
    assert m["budget_last_step_lr"] == pytest.approx(0.01 * (1 + math.cos(math.pi * (total - 1) / total)) / 2)
    history = MlflowClient(config.run.tracking_uri).get_metric_history(run.info.run_id, "lr")
    rates = [h.value for h in sorted(history, key=lambda h: h.step)]
    assert rates[0] == pytest.approx(0.01) and all(a > b for a, b in zip(rates, rates[1:]))  # decays within epochs


def test_the_length_is_the_longest_that_fits_and_zero_when_nothing_does():
    args = dict(elapsed_s=1.0, step_s=0.1, epoch_eval_s=0.5, final_eval_s=0.5, steps_per_epoch=10, done_steps=4)
    assert budget_steps(budget_s=10.0, max_steps=1000, **args) == brute_force_steps(10.0, 1.0, 0.1, 0.5, 0.5, 10, 4, 1000)
    assert budget_steps(budget_s=10.0, max_steps=12, **args) == 12  # --epochs is the upper bound
    assert budget_steps(budget_s=1.5, max_steps=1000, **args) == 0  # not one more step and evaluation fit


@pytest.mark.parametrize("value", ["0", "-5", "abc", "0.001"])
def test_bad_budgets_are_refused_in_one_line_before_any_run(cli, tmp_path, fast_flags, value):
    uri = new_store(tmp_path)
    result = cli("train", "--time-budget", value, "--train-size", "100", "--epochs", "1", "--device", "cpu",
                 "--tracking-uri", uri, "--experiment", "refused", *fast_flags)
    assert result.exit_code == 2, result.output
    assert "--time-budget" in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert MlflowClient(uri).get_experiment_by_name("refused") is None or not MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("refused").experiment_id])


def test_the_budget_comes_from_config_files_and_the_fast_preset():
    assert TrainConfig.from_dict({"run": {"time_budget": 30}}).run.time_budget == 30
    with pytest.raises(ConfigError, match=r"run.time_budget: --time-budget must be positive; got -1"):
        TrainConfig.from_dict({"run": {"time_budget": -1}})
    values = preset_values("fast-cifar10")
    assert values["time_budget"] == 570.0 and values["scheduler"] == "onecycle" and values["epochs"] >= 50
