"""Attention statistics and the recorder, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dyconv.analysis import AttentionRecorder, AttentionSummary, entropy
from dyconv.layers import DynamicConv2d


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
    assert not layer.routing._forward_hooks  # removed on exit


@pytest.mark.parametrize("path", ["grouped", "mixture", "bmm"])
def test_attention_recorder_records_the_exact_pi_forward_mixes_with(monkeypatch, path):
    """The recorded tensor is the one handed to forward_with_attention (float64, T = 3.7):
    equal bit for bit, same dtype, for every layer of a two-layer model."""
    torch.manual_seed(0)
    model = nn.Sequential(
        DynamicConv2d(3, 4, 3, padding=1, temperature=3.7, path=path, dtype=torch.float64),
        DynamicConv2d(4, 2, 1, num_kernels=3, temperature=0.6, path=path, dtype=torch.float64),
    )
    used: list[torch.Tensor] = []
    original = DynamicConv2d.forward_with_attention

    def capture(self, x, pi):
        used.append(pi)
        return original(self, x, pi)

    monkeypatch.setattr(DynamicConv2d, "forward_with_attention", capture)
    recorded: list[tuple[str, torch.Tensor]] = []
    with AttentionRecorder(model, lambda name, pi: recorded.append((name, pi))):
        model(torch.randn(5, 3, 8, 8, dtype=torch.float64))
    assert [name for name, _ in recorded] == ["0", "1"]
    for (_, pi), ref in zip(recorded, used):
        assert pi.dtype == ref.dtype == torch.float64
        assert torch.equal(pi, ref)
    # Independent check of the values: softmax(logits / T) by hand for the first layer.
    layer, x = model[0], torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with AttentionRecorder(model, lambda name, pi: recorded.append((name, pi))):
        model(x)
    z = layer.attn_fc2(torch.relu(layer.attn_fc1(x.mean((2, 3)))))
    torch.testing.assert_close(recorded[2][1], torch.softmax(z / 3.7, dim=1), rtol=0, atol=1e-15)


def test_summary_renormalises_low_precision_rows():
    """bf16 attention (what forward uses under autocast) need not sum to 1; the entropy stays
    at most log K: four equal weights are uniform whatever their rounded value."""
    s = AttentionSummary({"a": 4})
    s("a", torch.full((2, 4), 0.2510, dtype=torch.bfloat16))
    (row,) = s.rows()
    assert row["entropy"] == pytest.approx(math.log(4), rel=1e-12)
    assert row["mean_pi_0"] == pytest.approx(0.25, rel=1e-12)
