"""Attention statistics and the recorder, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dyconv.attention import AttentionSummary, entropy
from dyconv.layers import DynamicConv2d
from dyconv.layers.recorder import AttentionRecorder


def test_attention_summary_hand_computed():
    s = AttentionSummary({"a": 2}, num_classes=2)
    s.set_labels(torch.tensor([0, 1]))
    s("a", torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    (row,) = s.rows()
    assert row["entropy"] == pytest.approx(math.log(2) / 2)
    assert row["mean_pi_0"] == pytest.approx(0.75) and row["win_rate_0"] == pytest.approx(1.0)
    torch.testing.assert_close(s.layers["a"].class_mean_pi, torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64))
    assert entropy(torch.tensor([[0.25] * 4]))[0] == pytest.approx(math.log(4))


def test_attention_recorder_sees_what_forward_uses():
    torch.manual_seed(0)
    layer = DynamicConv2d(4, 4, 3, temperature=2.0)
    x = torch.randn(3, 4, 8, 8)
    got = {}
    with AttentionRecorder(nn.Sequential(layer), lambda name, pi: got.setdefault(name, pi)):
        layer(x)
    torch.testing.assert_close(got["0"], layer.attention(x))
    assert not layer.attn_fc2._forward_hooks  # removed on exit
