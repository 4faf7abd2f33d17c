"""Energy per image: MACs counted by hand, the papers' formula, and the tables' columns."""

import pytest
import torch

from _nets import tiny_vgg
from ftbc import energy


def test_macs_of_the_tiny_vgg_by_hand():
    m = energy.count_macs(tiny_vgg(), torch.randn(4, 3, 16, 16))
    conv1 = 8 * 16 * 16 * 3 * 3 * 3  # C_out H W x C_in k k
    conv2 = 12 * 8 * 8 * 8 * 3 * 3
    assert m.input_layer == conv1
    assert m.ann == conv1 + conv2 + 12 * 4 * 4 * 16 + 16 * 5


def test_energy_is_accumulates_plus_the_input_layer_macs_at_every_step():
    # 1e6 synaptic operations and a 1e5-MAC first layer over T = 4 steps
    assert energy.snn_energy_uj(1e6, 4, 1e5) == pytest.approx(0.9 + 4 * 0.46)
    assert energy.ann_energy_uj(1e6) == pytest.approx(4.6)
