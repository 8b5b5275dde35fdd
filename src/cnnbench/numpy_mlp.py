"""``numpy_mlp``: the Fashion-MNIST assignment's "from scratch" network, forward and backward by hand.

Two layers, sigmoid after each, mean squared error against one-hot (or any real) targets:
    h = sigmoid(x @ w1 + b1)        x: (N, inputs), w1: (inputs, hidden)
    y = sigmoid(h @ w2 + b2)        w2: (hidden, outputs)
    loss = mean((y - t) ** 2)       averaged over the N * outputs entries (loss="mean"), or
    loss = sum((y - t) ** 2) / (2N) the assignment's convention (loss="half-sum", R1-A)
The two differ by the factor outputs / 2 in the loss and in every gradient (x 1/2 for one output, as
the assignment's network has). The assignment's inputs and weights are not in its text, so its
printed L = 0.1332476222330792 cannot be recomputed; ``cnnbench gradcheck --loss half-sum`` checks
that convention's gradients against autograd instead (see :func:`report_shapes`).
Not a registered model (it is not an nn.Module); ``cnnbench gradcheck`` compares its gradients with
autograd's on :func:`torch_twin`, a torch module holding the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PARAMETER_NAMES = ("w1", "b1", "w2", "b2")
LOSSES = ("mean", "half-sum")


def report_shapes() -> dict[str, int]:
    """The assignment's network as far as its text shows it (R1-A): 3 hidden units (b1 has three
    entries), one output (dL/dZ2 is reshaped into a column); the input width is not printed."""
    return {"hidden": 3, "outputs": 1}


def loss_value(y: np.ndarray, t: np.ndarray, loss: str = "mean") -> float:
    if loss == "mean":
        return float(np.mean((y - t) ** 2))
    if loss == "half-sum":
        return float(np.sum((y - t) ** 2) / (2 * len(y)))
    raise ValueError(f"unknown loss {loss!r}; accepted: {', '.join(LOSSES)}")


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class NumpyMLP:
    """Weights as NumPy arrays; ``dtype`` follows the arrays (float64 for gradient checks)."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    @classmethod
    def random(cls, inputs: int, hidden: int, outputs: int, *, seed: int = 0, dtype=np.float64) -> "NumpyMLP":
        """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights and biases, as torch.nn.Linear draws them."""
        rng = np.random.default_rng(seed)

        def uniform(fan_in: int, *shape: int) -> np.ndarray:
            bound = 1.0 / np.sqrt(fan_in)
            return rng.uniform(-bound, bound, size=shape).astype(dtype)

        return cls(uniform(inputs, inputs, hidden), uniform(inputs, hidden), uniform(hidden, hidden, outputs), uniform(hidden, outputs))

    def parameters(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in PARAMETER_NAMES}

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Outputs (N, outputs) and the cache the backward pass needs."""
        h = sigmoid(x @ self.w1 + self.b1)
        y = sigmoid(h @ self.w2 + self.b2)
        return y, {"x": x, "h": h, "y": y}

    def loss_and_gradients(self, x: np.ndarray, t: np.ndarray, loss: str = "mean") -> tuple[float, dict[str, np.ndarray]]:
        """The loss (``mean`` or ``half-sum``, see the module doc) and d loss / d parameter for every
        parameter (same names and shapes)."""
        y, cache = self.forward(x)
        h = cache["h"]
        value = loss_value(y, t, loss)
        # d mean((y - t)^2) / dy, or d sum((y - t)^2) / (2N) / dy
        dy = 2.0 * (y - t) / y.size if loss == "mean" else (y - t) / len(y)
        dz2 = dy * y * (1.0 - y)  # sigmoid'(z) = s (1 - s)
        dh = dz2 @ self.w2.T
        dz1 = dh * h * (1.0 - h)
        grads = {"w1": x.T @ dz1, "b1": dz1.sum(axis=0), "w2": h.T @ dz2, "b2": dz2.sum(axis=0)}
        return value, grads

    def sgd_step(self, x: np.ndarray, t: np.ndarray, lr: float) -> float:
        """One gradient-descent step in place; returns the loss before the step."""
        loss, grads = self.loss_and_gradients(x, t)
        for name, grad in grads.items():
            getattr(self, name)[...] -= lr * grad
        return loss


def torch_twin(net: NumpyMLP):
    """An ``nn.Sequential(Linear, Sigmoid, Linear, Sigmoid)`` holding a copy of ``net``'s weights.

    nn.Linear stores weight as (out, in), the transpose of ``w1``/``w2``.
    """
    import torch
    from torch import nn

    dtype = torch.float64 if net.w1.dtype == np.float64 else torch.float32
    inputs, hidden = net.w1.shape
    outputs = net.w2.shape[1]
    model = nn.Sequential(nn.Linear(inputs, hidden), nn.Sigmoid(), nn.Linear(hidden, outputs), nn.Sigmoid()).to(dtype)
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(net.w1.T.copy()))
        model[0].bias.copy_(torch.from_numpy(net.b1))
        model[2].weight.copy_(torch.from_numpy(net.w2.T.copy()))
        model[2].bias.copy_(torch.from_numpy(net.b2))
    return model


def gradient_differences(net: NumpyMLP, x: np.ndarray, t: np.ndarray, loss_kind: str = "mean") -> dict[str, float]:
    """Max absolute difference between NumPy and autograd for the loss and every gradient."""
    import torch

    loss, grads = net.loss_and_gradients(x, t, loss_kind)
    model = torch_twin(net)
    out, target = model(torch.from_numpy(x)), torch.from_numpy(t)
    if loss_kind == "mean":
        torch_loss = torch.nn.functional.mse_loss(out, target)
    else:  # sum over every entry / (2N)
        torch_loss = torch.nn.functional.mse_loss(out, target, reduction="sum") / (2 * len(x))
    torch_loss.backward()
    torch_grads = {
        "w1": model[0].weight.grad.T, "b1": model[0].bias.grad,
        "w2": model[2].weight.grad.T, "b2": model[2].bias.grad,
    }
    diffs = {"loss": abs(loss - torch_loss.item())}
    for name in PARAMETER_NAMES:
        diffs[name] = float(np.max(np.abs(grads[name] - torch_grads[name].numpy())))
    return diffs


def random_batch(batch_size: int, inputs: int, outputs: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float64 inputs ~ N(0, 1) and one-hot targets, for a gradient check."""
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch_size, inputs))
    t = np.eye(outputs)[rng.integers(0, outputs, size=batch_size)]
    return x, t
