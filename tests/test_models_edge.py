"""``init=edge`` on the edges homework's CNNs: the filter values and what they respond to."""

from __future__ import annotations

import pytest
import torch

from cnnbench.models import build_model
from cnnbench.models.edge_cnn import edge_filters

SOBEL_HORIZONTAL = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


def test_two_by_two_filters_are_the_homework_pair():
    horizontal, vertical, zero = edge_filters(2)
    assert torch.equal(horizontal, torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
    assert torch.equal(vertical, torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
    assert torch.equal(zero, torch.zeros(2, 2))


def test_odd_filters_are_sobel_like():
    horizontal, vertical, _ = edge_filters(3)
    assert torch.equal(horizontal, SOBEL_HORIZONTAL / 2)  # Sobel scaled to a largest entry of 1
    assert torch.equal(vertical, SOBEL_HORIZONTAL.T / 2)
    big, _, _ = edge_filters(7)
    assert big.abs().max() == 1.0 and torch.equal(big, -big.flip(0))  # antisymmetric top/bottom
    assert torch.all(big[3] == 0) and torch.all(big[:3] >= 0)
    assert big.sum(dim=1)[:3].tolist() == sorted(big.sum(dim=1)[:3].tolist())  # grows toward the centre row


@pytest.mark.parametrize("name,filters,convs", [("simple_cnn", 3, 2), ("wider_cnn", 6, 2), ("deeper_cnn", 3, 4)])
@pytest.mark.parametrize("kernel_size", [2, 3, 7])
def test_edge_init_sets_every_conv(name, filters, convs, kernel_size):
    model = build_model(name, num_classes=3, in_channels=1, image_size=(28, 28),
                        options={"init": "edge", "kernel_size": kernel_size})
    bank = edge_filters(kernel_size)
    conv_layers = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert len(conv_layers) == convs
    first, *rest = conv_layers
    for j in range(filters):
        assert torch.equal(first.weight[j, 0], bank[j % 3])
    for conv in rest:  # filter j = detector j on every input channel (the homework concatenates conv1's weights)
        for j in range(filters):
            for i in range(filters):
                assert torch.equal(conv.weight[j, i], bank[j % 3])
    assert all(torch.all(conv.bias == 0) for conv in conv_layers)
    # 'same' padding for every size, even ones: 28 -> pool -> 14 stays 14 through the later convs
    assert model.features(torch.zeros(1, 1, 28, 28)).shape == (1, filters, 14, 14)


def test_default_init_is_random_not_edges():
    model = build_model("simple_cnn", num_classes=3, in_channels=1, image_size=(28, 28))
    assert not torch.equal(model.features[0].weight[0, 0], edge_filters(7)[0])


def test_edge_filters_respond_to_their_own_orientation():
    model = build_model("simple_cnn", num_classes=3, in_channels=1, image_size=(28, 28),
                        options={"init": "edge", "kernel_size": 3})
    image = torch.zeros(1, 1, 28, 28)
    image[..., :14, :] = 1.0  # bright top half: one horizontal edge between rows 13 and 14
    with torch.no_grad():
        response = model.features[0](image)[0, :, 1:-1, 1:-1]  # away from the zero-padded border
        rotated = model.features[0](image.transpose(-1, -2))[0, :, 1:-1, 1:-1]
    assert response[0].max() == 2.0  # horizontal detector: 0.5 + 1 + 0.5 across the edge
    assert set(torch.nonzero(response[0])[:, 0].tolist()) == {12, 13}  # the rows beside the edge
    assert response[1].abs().max() == 0.0 and response[2].abs().max() == 0.0
    assert rotated[1].max() == 2.0 and rotated[0].abs().max() == 0.0
