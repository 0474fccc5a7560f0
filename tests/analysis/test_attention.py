"""Attention statistics and the recorder, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dyconv.analysis import AttentionRecorder, AttentionSummary, LayerSpec, entropy
from dyconv.layers import DynamicConv2d, DynamicConvNd, dynamic_layers, set_temperature
from dyconv.layers.routing import OmniAttention


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
    """The recorded tensor is the one forward mixes the kernels with (float64, T = 3.7): equal
    bit for bit, same dtype, same storage, for every layer of a two-layer model.
    (``_forward_mixed`` is where every routing's attention enters the convolution.)"""
    torch.manual_seed(0)
    model = nn.Sequential(
        DynamicConv2d(3, 4, 3, padding=1, temperature=3.7, path=path, dtype=torch.float64),
        DynamicConv2d(4, 2, 1, num_kernels=3, temperature=0.6, path=path, dtype=torch.float64),
    )
    used: list[torch.Tensor] = []
    original = DynamicConvNd._forward_mixed

    def capture(self, x, pi, a_in, a_out, a_sp):
        used.append(pi)
        return original(self, x, pi, a_in, a_out, a_sp)

    monkeypatch.setattr(DynamicConvNd, "_forward_mixed", capture)
    recorded: list[tuple[str, torch.Tensor]] = []
    with AttentionRecorder(model, lambda name, pi: recorded.append((name, pi))):
        model(torch.randn(5, 3, 8, 8, dtype=torch.float64))
    assert [name for name, _ in recorded] == ["0", "1"] and len(used) == 2
    for (_, pi), ref in zip(recorded, used):
        assert pi.dtype == ref.dtype == torch.float64
        assert torch.equal(pi, ref) and pi.data_ptr() == ref.data_ptr() and not pi.requires_grad
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


# ---------------------------------------------------------------- every routing


def _spread_attention(model: nn.Module, seed: int = 0) -> None:
    """Random attention heads (std 1 weights and biases), so gates and attentions spread over
    (0, 1) instead of sitting near their neutral start."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in dynamic_layers(model):
            for head in layer.attention_heads():
                head.weight.copy_(torch.randn(head.weight.shape, generator=g))
                head.bias.copy_(torch.randn(head.bias.shape, generator=g))


def _routing_model(routing: str) -> nn.Module:
    """dy_resnet10 at width 1/8 (its 3x3 and 1x1 layers); for omni a stem and three layers:
    depthwise 3x3 (no output attention), K = 1 pointwise (kernel weights are ones, no spatial
    attention) and a full 3x3 with K = 3."""
    from dyconv.models import create_model

    if routing != "omni":
        model = create_model("dy_resnet10", routing=routing, width_mult=0.125, num_classes=5, in_channels=3)
    else:
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            DynamicConv2d(8, 8, 3, padding=1, groups=8, routing="omni", temperature=2.0, reduction=1),
            DynamicConv2d(8, 6, 1, num_kernels=1, routing="omni", temperature=2.0, reduction=1),
            DynamicConv2d(6, 6, 3, padding=1, num_kernels=3, routing="omni", temperature=2.0, reduction=1),
        )
    _spread_attention(model)
    if routing == "softmax":
        set_temperature(model, 1.0)  # not the flat start of T = 30
    return model.eval()


def _record(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], summary: AttentionSummary):
    """Run the batches with the summary and a plain list recorder; also check that what was
    recorded is what ``layer.attention(layer input)`` gives (an independent recomputation)."""
    recorded: dict[str, list] = {}
    inputs: dict[str, list[torch.Tensor]] = {}
    handles = [layer.register_forward_pre_hook(lambda m, a, n=name: inputs.setdefault(n, []).append(a[0]))
               for name, layer in dynamic_layers(model)]

    def sink(name, attention):
        recorded.setdefault(name, []).append(attention)
        summary(name, attention)

    with torch.no_grad(), AttentionRecorder(model, sink):
        for x, y in batches:
            summary.set_labels(y)
            model(x)
    for h in handles:
        h.remove()
    layers = dict(dynamic_layers(model))
    with torch.no_grad():
        for name, got in recorded.items():
            for attention, x in zip(got, inputs[name], strict=True):
                ref = layers[name].attention(x)
                if isinstance(ref, OmniAttention):
                    for part, r in zip(attention, ref, strict=True):
                        assert (part is None) == (r is None)
                        assert part is None or torch.equal(part, r)
                else:
                    assert torch.equal(attention, ref)
    return recorded


def _cat(parts: list) -> torch.Tensor:
    return torch.cat(parts).to(torch.float64)


def _batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    # A per-image offset per channel: pooled features (the attention's input) differ between images.
    return [
        (torch.randn(6, 3, 16, 16, generator=g) + 2 * torch.randn(6, 3, 1, 1, generator=g), torch.tensor(labels))
        for labels in [[0, 1, 2, 0, 1, 4]] * n
    ]


def _check_kernel_softmax(la, row, pi: torch.Tensor, labels: torch.Tensor) -> None:
    """The softmax columns of one layer against plain torch on the recorded (B, K) pi."""
    k = pi.shape[1]
    ent = -(pi * pi.log()).sum(1)  # softmax weights are > 0 here
    assert row["entropy"] == pytest.approx(float(ent.mean()), rel=1e-6)
    ratio = float(ent.mean()) / math.log(k) if k > 1 else 1.0
    assert row["entropy_ratio"] == pytest.approx(ratio, rel=1e-6)
    for i in range(k):
        assert row[f"mean_pi_{i}"] == pytest.approx(float(pi[:, i].mean()), rel=1e-6)
        assert row[f"win_rate_{i}"] == float((pi.argmax(1) == i).double().mean())
    # One-pass sums of squares: about 1e-9 of noise on a constant attention.
    assert row["pi_sample_std"] == pytest.approx(float(pi.std(0, unbiased=False).mean()), rel=1e-5, abs=1e-8)
    for c in range(5):
        if (labels == c).any():
            torch.testing.assert_close(la.class_mean_pi[c], pi[labels == c].mean(0), rtol=1e-6, atol=1e-9)


def test_softmax_summary_against_hand_computation():
    model, batches = _routing_model("softmax"), _batches()
    summary = AttentionSummary.for_model(model, num_classes=5)
    recorded = _record(model, batches, summary)
    labels = torch.cat([y for _, y in batches])
    assert len(recorded) == 11 and set(summary.routings.values()) == {"softmax"}
    for row in summary.rows():
        pi = _cat(recorded[row["layer"]])
        assert row["routing"] == "softmax" and row["samples"] == 12
        _check_kernel_softmax(summary.layers[row["layer"]], row, pi, labels)
        assert "gate_sum" not in row and "in_mean" not in row
    assert max(row["pi_sample_std"] for row in summary.rows()) > 1e-3  # some layers depend on the input


def test_sigmoid_summary_reports_gates_without_renormalising():
    model, batches = _routing_model("sigmoid"), _batches()
    summary = AttentionSummary.for_model(model, num_classes=5)
    recorded = _record(model, batches, summary)
    labels = torch.cat([y for _, y in batches])
    sums = []
    for row in summary.rows():
        name, la = row["layer"], summary.layers[row["layer"]]
        g = _cat(recorded[name])
        assert row["routing"] == "sigmoid" and row["samples"] == 12
        # No entropy over K and no pi: the gates are not a distribution.
        assert not {"entropy", "entropy_ratio", "max_entropy", "mean_pi_0"} & set(row)
        with pytest.raises(TypeError, match="sigmoid"):
            la.mean_entropy  # noqa: B018
        with pytest.raises(TypeError, match="sigmoid"):
            la.mean_pi  # noqa: B018
        assert row["gate_sum"] == pytest.approx(float(g.sum(1).mean()), rel=1e-6)
        for i in range(4):
            assert row[f"mean_gate_{i}"] == pytest.approx(float(g[:, i].mean()), rel=1e-6)
            assert row[f"gate_on_{i}"] == float((g[:, i] > 0.5).double().mean())
            assert row[f"win_rate_{i}"] == float((g.argmax(1) == i).double().mean())
        q = g / g.sum(1, keepdim=True)
        assert row["normalised_gate_entropy"] == pytest.approx(float(-(q * q.log()).sum(1).mean()), rel=1e-6)
        assert row["gate_sample_std"] == pytest.approx(float(g.std(0, unbiased=False).mean()), rel=1e-5)
        for c in (0, 1, 2, 4):  # class means of the raw gates, not renormalised
            torch.testing.assert_close(la.class_mean_weight[c], g[labels == c].mean(0), rtol=1e-6, atol=1e-9)
        sums.append(row["gate_sum"])
    assert max(abs(s - 1) for s in sums) > 0.2  # the gates really do not sum to 1 here
    assert max(row["gate_sample_std"] for row in summary.rows()) > 1e-3


def test_sigmoid_rows_are_never_renormalised():
    s = AttentionSummary({"a": LayerSpec(2, "sigmoid")})
    s("a", torch.tensor([[0.9, 0.8], [0.1, 0.3]]))
    (row,) = s.rows()
    assert row["mean_gate_0"] == pytest.approx(0.5) and row["mean_gate_1"] == pytest.approx(0.55)
    assert row["gate_sum"] == pytest.approx(1.05) and row["gate_on_0"] == 0.5 and row["gate_on_1"] == 0.5
    q1, q2 = [0.9 / 1.7, 0.8 / 1.7], [0.25, 0.75]
    expected = -sum(p * math.log(p) for p in q1 + q2) / 2
    assert row["normalised_gate_entropy"] == pytest.approx(expected)
    with pytest.raises(TypeError, match="a 'sigmoid' layer's summary got a OmniAttention"):
        s("a", OmniAttention(torch.ones(1, 2), torch.ones(1, 3), None, None))


def test_omni_summary_kernel_softmax_and_sigmoid_attentions():
    model, batches = _routing_model("omni"), _batches()
    summary = AttentionSummary.for_model(model, num_classes=5)
    recorded = _record(model, batches, summary)
    labels = torch.cat([y for _, y in batches])
    rows = {r["layer"]: r for r in summary.rows()}
    assert list(rows) == ["1", "2", "3"] and {r["routing"] for r in rows.values()} == {"omni"}
    # Depthwise: no output attention; 1x1 with K = 1: kernel weights are ones, no spatial one.
    assert {k for k in rows["1"] if k.startswith(("in_", "out_", "spatial_"))} == {
        "in_mean", "in_channel_std", "in_sample_std", "spatial_mean", "spatial_position_std", "spatial_sample_std"}
    assert "spatial_mean" not in rows["2"] and "out_mean" in rows["2"]
    assert rows["2"]["mean_pi_0"] == 1.0 and rows["2"]["entropy"] == 0.0 and rows["2"]["entropy_ratio"] == 1.0
    for name, row in rows.items():
        attentions = recorded[name]
        assert all(isinstance(a, OmniAttention) for a in attentions)
        _check_kernel_softmax(summary.layers[name], row, _cat([a.kernel for a in attentions]), labels)
        for part, short in (("in_channel", "in"), ("out_channel", "out"), ("spatial", "spatial")):
            if getattr(attentions[0], part) is None:
                continue
            a = _cat([getattr(x, part) for x in attentions]).flatten(1)  # (N, channels or taps)
            spread = f"{short}_position_std" if part == "spatial" else f"{short}_channel_std"
            assert row[f"{short}_mean"] == pytest.approx(float(a.mean()), rel=1e-6)
            assert row[spread] == pytest.approx(float(a.mean(0).std(unbiased=False)), rel=1e-5)
            assert row[f"{short}_sample_std"] == pytest.approx(float(a.std(0, unbiased=False).mean()), rel=1e-5)
            assert row[f"{short}_sample_std"] > 1e-3  # input-dependent with the random heads
    assert rows["3"]["spatial_mean"] != rows["3"]["in_mean"]


def test_recorder_passes_omni_attention_detached_and_kernel_only_on_request():
    torch.manual_seed(0)
    layer = DynamicConv2d(4, 6, 3, padding=1, routing="omni", temperature=2.0, reduction=1)
    model, x = nn.Sequential(layer).train(), torch.randn(3, 4, 8, 8)
    used: list[OmniAttention] = []
    original = DynamicConvNd._forward_mixed

    def capture(self, x, pi, a_in, a_out, a_sp):
        used.append(OmniAttention(pi, a_in, a_out, a_sp))
        return original(self, x, pi, a_in, a_out, a_sp)

    full, kernel = [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DynamicConvNd, "_forward_mixed", capture)
        with AttentionRecorder(model, lambda n, a: full.append(a)), AttentionRecorder(
            model, lambda n, a: kernel.append(a), kernel_only=True
        ):
            model(x)
    (got,), (ref,), (k,) = full, used, kernel
    assert isinstance(got, OmniAttention) and ref.in_channel.requires_grad
    for part, r in zip(got, ref, strict=True):
        assert not part.requires_grad and torch.equal(part, r) and part.data_ptr() == r.data_ptr()
    assert isinstance(k, torch.Tensor) and torch.equal(k, ref.kernel) and k.shape == (3, 4)
