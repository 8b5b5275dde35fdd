"""numpy_mlp's hand-written backward pass and ``cnnbench gradcheck``."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cnnbench.cli import main
from cnnbench.numpy_mlp import NumpyMLP, gradient_differences, random_batch, torch_twin


@pytest.fixture
def net_and_batch():
    net = NumpyMLP.random(5, 4, 3, seed=1)
    x, t = random_batch(6, 5, 3, seed=1)
    return net, x, t


def test_gradients_match_central_finite_differences(net_and_batch):
    """Independent of torch: perturb every weight and compare the loss slope with the analytic gradient."""
    net, x, t = net_and_batch
    _, grads = net.loss_and_gradients(x, t)
    eps = 1e-6
    for name, param in net.parameters().items():
        numeric = np.zeros_like(param)
        for idx in np.ndindex(param.shape):
            original = param[idx]
            param[idx] = original + eps
            up, _ = net.loss_and_gradients(x, t)
            param[idx] = original - eps
            down, _ = net.loss_and_gradients(x, t)
            param[idx] = original
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grads[name], numeric, atol=1e-8, err_msg=name)


def test_numpy_and_autograd_agree_in_float64(net_and_batch):
    diffs = gradient_differences(*net_and_batch)
    assert set(diffs) == {"loss", "w1", "b1", "w2", "b2"}
    assert max(diffs.values()) < 1e-12


def test_torch_twin_holds_the_same_function(net_and_batch):
    import torch

    net, x, _ = net_and_batch
    y, _ = net.forward(x)
    np.testing.assert_allclose(torch_twin(net)(torch.from_numpy(x)).detach().numpy(), y, rtol=0, atol=1e-15)


def test_sgd_steps_lower_the_loss(net_and_batch):
    net, x, t = net_and_batch
    losses = [net.sgd_step(x, t, lr=5.0) for _ in range(500)]
    assert all(b <= a for a, b in zip(losses, losses[1:]))  # small batch, full-batch steps: monotone
    assert losses[-1] < 0.05 * losses[0]  # six samples, 31 weights: it memorises them


def test_gradcheck_command_passes_and_prints_every_difference():
    result = CliRunner().invoke(main, ["gradcheck", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    for name in ("loss", "w1", "b1", "w2", "b2"):
        assert f"  {name}" in result.output
    assert "all differences below 1e-06" in result.output


def test_gradcheck_exits_1_when_the_backward_pass_is_wrong(monkeypatch):
    honest = NumpyMLP.loss_and_gradients

    def off_by_a_bit(self, x, t, loss="mean"):
        loss, grads = honest(self, x, t, loss)
        return loss, {**grads, "b2": grads["b2"] + 1e-4}

    monkeypatch.setattr(NumpyMLP, "loss_and_gradients", off_by_a_bit)
    result = CliRunner().invoke(main, ["gradcheck"])
    assert result.exit_code == 1
    assert "b2" in result.output and "FAIL" in result.output and "gradient check failed: b2" in result.output


def test_gradcheck_rejects_a_zero_batch():
    assert CliRunner().invoke(main, ["gradcheck", "--batch-size", "0"]).exit_code == 2
