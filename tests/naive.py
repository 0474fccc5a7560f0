"""The independent reference every dynamic-layer test compares with: for each sample, build that
sample's kernel by hand from the layer's K kernels and its attention, then run F.conv1d/2d/3d
with nn.ConvNd's own padding recipe."""

import torch
import torch.nn.functional as F

from dyconv.layers import OmniAttention

CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def sample_kernel(layer, att, i):
    """Sample ``i``'s kernel and bias from the layer's K kernels and an attention, by hand."""
    omni = isinstance(att, OmniAttention)
    pi = att.kernel[i] if omni else att[i]
    nd = layer.weight.dim() - 3
    w = (pi.reshape((-1,) + (1,) * (nd + 2)) * layer.weight).sum(0)
    b = None if layer.bias is None else (pi.reshape(-1, 1) * layer.bias).sum(0)
    if omni:
        cout, cin_g = w.shape[0], w.shape[1]
        g = layer.groups
        if att.spatial is not None:
            w = w * att.spatial[i]
        if att.out_channel is not None:
            w = w * att.out_channel[i].reshape((cout,) + (1,) * (nd + 1))
            b = None if b is None else b * att.out_channel[i]
        # Output channel o belongs to group o // (cout / g), which reads inputs g*cin_g ... +cin_g.
        per_out = att.in_channel[i].reshape(g, cin_g).repeat_interleave(cout // g, dim=0)
        w = w * per_out.reshape((cout, cin_g) + (1,) * nd)
    return w, b


def naive_forward(layer, x, att=None):
    att = layer.attention(x) if att is None else att
    nd = x.dim() - 2
    outs = []
    for i in range(x.shape[0]):
        w, b = sample_kernel(layer, att, i)
        xi, padding = x[i : i + 1], layer.padding
        if layer.padding_mode != "zeros":  # nn.ConvNd's own recipe
            xi = F.pad(xi, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
            padding = 0
        outs.append(CONV_FN[nd](xi, w, b, layer.stride, padding, layer.dilation, layer.groups))
    return torch.cat(outs)
