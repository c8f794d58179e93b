import pytest
import torch

from weightsep.fisher import ESTIMATORS, FisherConfig, compute_fisher, draw_samples, minmax_normalize
from weightsep.model import Conv, TemplateNet

K = 24


def conv_net(classes: int = 3) -> TemplateNet:
    torch.manual_seed(0)
    return TemplateNet((2, 9, 9), [Conv(3, 3, 4), Conv(2, 2, 5)], dense=[7], classes=classes)


def dense_net(classes: int = 4) -> TemplateNet:
    torch.manual_seed(1)
    return TemplateNet((6,), [], dense=[5, 5], classes=classes, hidden_act="sigmoid")


def data(net: TemplateNet, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(n, *net.input_shape, generator=g), torch.randint(0, net.classes, (n,), generator=g)


def fisher(net, x, y, estimator, k=K, **kw):
    return compute_fisher(net, net.theta.detach(), x, y, FisherConfig(estimator, k, normalize=False, **kw))


def reference(net: TemplateNet, x: torch.Tensor, y: torch.Tensor, kind: str, k: int = K, seed: int = 0) -> torch.Tensor:
    """Plain autograd, one sample and one class at a time, on the same K draws."""
    theta = net.theta.detach().clone().requires_grad_(True)
    total = torch.zeros_like(theta, dtype=torch.float64)
    for i in draw_samples(len(x), k, seed):
        log_p = torch.log_softmax(net(x[i : i + 1], theta), dim=1)[0]
        p = log_p.detach().exp()
        classes = {"predicted": [int(p.argmax())], "empirical": [int(y[i])], "true": range(net.classes)}[kind]
        for c in classes:
            (g,) = torch.autograd.grad(log_p[c], theta, retain_graph=True)
            total += (1.0 if kind == "empirical" else p[c]) * g.double().square()
    return (total / k).float()


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


@pytest.mark.parametrize("make", [conv_net, dense_net])
def test_batched_equals_loop_and_reference(make):
    net = make()
    x, y = data(net)
    loop = fisher(net, x, y, "paper")
    batched = fisher(net, x, y, "predicted", chunk=5)  # 24 = 4 full chunks + a partial one
    assert_close(batched, loop)
    assert_close(loop, reference(net, x, y, "predicted"))


@pytest.mark.parametrize("make", [conv_net, dense_net])
@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_empirical_and_true_equal_plain_loop(make, kind):
    net = make()
    x, y = data(net)
    assert_close(fisher(net, x, y, kind, chunk=8), reference(net, x, y, kind))


def test_true_fisher_bounds_the_predicted_one():
    net = conv_net()
    x, y = data(net)
    true, predicted = fisher(net, x, y, "true"), fisher(net, x, y, "predicted")
    assert (true >= 0).all()
    assert (true >= predicted * (1 - 1e-5)).all()  # true = predicted + the other classes' terms
    assert true.sum() > predicted.sum()


def test_predicted_is_confidence_weighted_empirical_at_predicted_labels():
    net = dense_net()
    x, _ = data(net)
    with torch.no_grad():
        probs = torch.softmax(net(x), dim=1)
    predicted_labels = probs.argmax(1)
    (i,) = draw_samples(len(x), 1, seed=3)
    empirical = fisher(net, x, predicted_labels, "empirical", k=1, seed=3)
    assert_close(fisher(net, x, predicted_labels, "predicted", k=1, seed=3), probs[i].max() * empirical)


def test_two_classes_true_is_predicted_over_other_probability():
    # With 2 classes g_0 = -(p_1 / p_0) g_1, so sum_c p_c g_c^2 = p(y^) g_y^^2 / p(other) for one sample.
    net = dense_net(classes=2)
    x, y = data(net)
    (i,) = draw_samples(len(x), 1, seed=4)
    with torch.no_grad():
        other = torch.softmax(net(x[i : i + 1]), dim=1).min()
    assert_close(fisher(net, x, y, "true", k=1, seed=4), fisher(net, x, y, "predicted", k=1, seed=4) / other)


def test_samples_drawn_with_replacement_and_seeded():
    index = draw_samples(5, 40, seed=7)
    assert index.min() >= 0 and index.max() < 5 and len(index.unique()) < len(index)
    assert torch.equal(index, draw_samples(5, 40, seed=7))
    net = conv_net()
    x, y = data(net)
    assert torch.equal(fisher(net, x, y, "predicted", seed=5), fisher(net, x, y, "predicted", seed=5))
    assert not torch.equal(fisher(net, x, y, "predicted", seed=5), fisher(net, x, y, "predicted", seed=6))


def test_numpy_inputs_and_normalized_default():
    net = dense_net()
    x, y = data(net)
    out = compute_fisher(net, net.theta.detach(), x.numpy(), y.numpy(), FisherConfig(samples=16))
    assert out.shape == (net.n_weights,) and out.dtype == torch.float32
    assert out.min() == 0 and out.max() == 1


def test_minmax_normalize():
    out = minmax_normalize(torch.tensor([2.0, 3.0, 6.0]))
    torch.testing.assert_close(out, torch.tensor([0.0, 0.25, 1.0]))
    with pytest.raises(ValueError, match="constant"):
        minmax_normalize(torch.zeros(4))


def test_non_finite_fisher_is_an_error():
    net = dense_net()
    x, y = data(net)
    theta = net.theta.detach().clone()
    theta[0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        compute_fisher(net, theta, x, y, FisherConfig(samples=4))


def test_config_validation_and_defaults():
    with pytest.raises(ValueError, match="paper, predicted, empirical, true"):
        FisherConfig("fim")
    with pytest.raises(ValueError, match="samples"):
        FisherConfig(samples=0)
    with pytest.raises(ValueError, match="chunk"):
        FisherConfig(chunk=0)
    assert FisherConfig("paper").k == 50
    assert FisherConfig(samples=7).k == 7
    assert FisherConfig().k == ESTIMATORS[FisherConfig().estimator].default_samples
