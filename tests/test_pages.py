import pytest
import torch

from weightsep.model import Conv, TemplateNet
from weightsep.pages import from_pages, materialize, n_pages, to_pages
from weightsep.state import exclusive_entries, exclusive_slots, is_shared


@pytest.mark.parametrize("n, page_size", [(1, 512), (511, 512), (512, 512), (513, 512), (65402, 512), (1000, 100)])
def test_round_trip_is_bit_exact(n, page_size):
    flat = torch.randn(n, generator=torch.Generator().manual_seed(n))
    pages = to_pages(flat, page_size)
    assert pages.shape == (n_pages(n, page_size), page_size)
    assert torch.equal(from_pages(pages, n), flat)
    assert torch.count_nonzero(pages.reshape(-1)[n:]) == 0  # the last page is zero-padded


def test_model_tensors_and_flatten_round_trip_in_tf_layout():
    net = TemplateNet((1, 28, 28), [Conv(3, 3, 16), Conv(3, 3, 32), Conv(3, 3, 48)], dense=[256, 128], classes=10)
    assert net.n_weights == 65402  # the WS paper's MNIST count
    tensors = net.tensors()
    assert tensors["weight_0"].shape == (3, 3, 1, 16)  # HWIO
    assert tensors["weight_3"].shape == (48, 256)  # dense [in, out]
    assert torch.equal(net.flatten({k: v.clone() for k, v in tensors.items()}), net.theta.detach())
    with pytest.raises(ValueError, match="weight_0: shape"):
        net.flatten({**tensors, "weight_0": torch.zeros(3, 3, 16, 1)})
    with pytest.raises(ValueError, match="missing"):
        net.flatten({k: v for k, v in tensors.items() if k != "bias_4"})


def test_flatten_order_is_nhwc_like_tensorflow():
    """The first dense layer sees (h, w, c) order: permuting its rows as TF would changes nothing."""
    torch.manual_seed(0)
    net = TemplateNet((2, 8, 6), [Conv(3, 3, 4)], dense=[], classes=3)
    x = torch.randn(5, 2, 8, 6)
    conv = torch.nn.functional.max_pool2d(torch.nn.functional.leaky_relu(torch.nn.functional.conv2d(
        x, net.tensors()["weight_0"].permute(3, 2, 0, 1), net.tensors()["bias_0"]), 0.2), 2)
    nhwc = conv.permute(0, 2, 3, 1).reshape(5, -1)
    expected = nhwc @ net.tensors()["weight_1"] + net.tensors()["bias_1"]
    torch.testing.assert_close(net(x), expected)


def test_materialize_resolves_shared_and_exclusive_pages():
    shared = torch.arange(12.0).view(3, 4)
    exclusive = torch.full((2, 4), -1.0)
    page_table = torch.tensor([2, 3, 0, 4])  # shared 2, exclusive 0, shared 0, exclusive 1
    theta = materialize(shared, exclusive, page_table, 14)
    assert theta.tolist() == [8, 9, 10, 11, -1, -1, -1, -1, 0, 1, 2, 3, -1, -1]
    assert is_shared(page_table, 3).tolist() == [True, False, True, False]
    assert exclusive_slots(page_table[~is_shared(page_table, 3)], 3).tolist() == [0, 1]
    assert exclusive_entries(3, 1, 2).tolist() == [4, 5]
