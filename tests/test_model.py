"""The network the audit builds is torchvision's ResNet-18, without importing torchvision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from audit.model import build_network


def test_the_network_is_torchvisions_resnet18_key_for_key_and_output_for_output():
    ours = build_network("resnet18", num_classes=2).eval()
    theirs = resnet18(weights=None, num_classes=2).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in theirs.state_dict().items()]
    theirs.load_state_dict(ours.state_dict())
    torch.manual_seed(0)
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), theirs(images))

    s1_stem = build_network("resnet18-s1stem").eval()
    assert s1_stem.conv1.kernel_size == (3, 3) and s1_stem.conv1.stride == (1, 1)
    theirs.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    theirs.load_state_dict(s1_stem.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(s1_stem(images[:, :, :32, :32]), theirs(images[:, :, :32, :32]))


@pytest.mark.slow
@pytest.mark.subprocess
def test_building_a_network_does_not_import_torchvision():
    code = "import sys; from audit.model._card import build_network; build_network('resnet18-s1stem'); print('torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.slow
def test_the_gradcam_grid_known_from_the_card_is_the_one_the_network_gives():
    from audit.model import LoadedModel, ModelCard, Preprocessing, gradcam_grid_of
    from audit.report import gradcam_grid

    for variant in ("resnet18", "resnet18-s1stem"):
        network = build_network(variant).eval()
        for size in (32, 48, 65, 224):
            for layer in ("layer1", "layer2", "layer3", "layer4"):
                card = ModelCard(name="m", variant=variant, gradcam_layer=layer, preprocessing=Preprocessing(input_size=size))
                assert gradcam_grid_of(card) == gradcam_grid(LoadedModel(network, card, Path("unused"))), (variant, size, layer)
    assert gradcam_grid_of(ModelCard(name="m", gradcam_layer="layer3.1")) is None  # measured on the network instead
