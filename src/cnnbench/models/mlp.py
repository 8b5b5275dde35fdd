"""``mlp``: flatten, hidden Linear+ReLU layers, output (the Fashion-MNIST assignment's baseline)."""

from __future__ import annotations

from torch import nn

from cnnbench.models.base import mark
from cnnbench.registry import ModelPlugin, Option


class MLPClassifier(nn.Module):
    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.classifier(self.hidden(self.flatten(x)))


def build(*, num_classes: int, in_channels: int, image_size: tuple[int, int], hidden: tuple[int, ...], dropout: float) -> nn.Module:
    h, w = image_size
    model = MLPClassifier(in_channels * h * w, tuple(hidden), num_classes, dropout)
    intermediate = "hidden.0" if hidden else "flatten"
    return mark(model, classifier="classifier", intermediate=intermediate)


MLP = ModelPlugin(
    build=build,
    description="multi-layer perceptron: flatten, hidden Linear+ReLU layers, output",
    natural_input=(1, 28, 28), natural_classes=10,
    options=(
        Option("hidden", "ints", (128, 64), "hidden layer sizes, comma-separated (each 1 to 65536)", low=1, high=65536),
        Option("dropout", "float", 0.0, "dropout probability after each hidden layer", low=0.0, high=0.99),
    ),
)
