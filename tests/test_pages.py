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


def plain_forward(net: TemplateNet, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The template written plainly (NCHW, activation then pooling), as it was before issue 25."""
    F, t = torch.nn.functional, net.tensors(theta)
    x, i = x.float(), 0
    for conv in net.convs:
        x = F.max_pool2d(F.leaky_relu(F.conv2d(x, t[f"weight_{i}"].permute(3, 2, 0, 1), t[f"bias_{i}"]), 0.2), conv.pool)
        i += 1
    x = x.permute(0, 2, 3, 1).reshape(len(x), -1) if net.convs else x.reshape(len(x), -1)
    for layer in range(len(net.dense) + 1):
        x = x @ t[f"weight_{i}"] + t[f"bias_{i}"]
        x = F.leaky_relu(x, 0.2) if layer < len(net.dense) else x
        i += 1
    return x


@pytest.mark.parametrize("shape, convs", [
    ((1, 28, 28), [Conv(3, 3, 8), Conv(3, 3, 16), Conv(3, 3, 32)]),  # one input channel: the kernel sets the layout
    ((3, 32, 32), [Conv(3, 3, 8), Conv(3, 3, 16)]),
    ((6, 1, 128), [Conv(1, 9, 8, pool=(1, 4)), Conv(1, 5, 16, pool=(1, 3))]),  # odd sizes: pooling drops the rest
    ((4, 3, 3), [Conv(2, 2, 16, pool=(1, 1))]),
    ((16,), []),
])
def test_the_channels_last_forward_equals_the_plain_one_in_values_and_gradients(shape, convs):
    """Pooling before the activation and channels-last memory change the order of float32 sums,
    nothing else: logits and weight gradients agree with the plain forward to rounding."""
    torch.manual_seed(0)
    net = TemplateNet(shape, convs, dense=[32], classes=5)
    x = torch.randn(20, *shape).half()  # stored data is float16
    x[:, ..., :2] = 0  # flat regions: ties inside pooling windows
    y = torch.randint(0, 5, (20,))
    fast, plain = net(x), plain_forward(net, x, net.theta)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    g_fast, = torch.autograd.grad(torch.nn.functional.cross_entropy(fast, y), net.theta)
    g_plain, = torch.autograd.grad(torch.nn.functional.cross_entropy(plain, y), net.theta)
    torch.testing.assert_close(g_fast, g_plain, rtol=1e-4, atol=1e-6)


def test_materialize_resolves_shared_and_exclusive_pages():
    shared = torch.arange(12.0).view(3, 4)
    exclusive = torch.full((2, 4), -1.0)
    page_table = torch.tensor([2, 3, 0, 4])  # shared 2, exclusive 0, shared 0, exclusive 1
    theta = materialize(shared, exclusive, page_table, 14)
    assert theta.tolist() == [8, 9, 10, 11, -1, -1, -1, -1, 0, 1, 2, 3, -1, -1]
    assert is_shared(page_table, 3).tolist() == [True, False, True, False]
    assert exclusive_slots(page_table[~is_shared(page_table, 3)], 3).tolist() == [0, 1]
    assert exclusive_entries(3, 1, 2).tolist() == [4, 5]
