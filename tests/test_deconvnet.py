import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convvis
from convvis.deconvnet import (
    FunctionalRectifierError,
    backprop_rule,
    reconstruct,
    relu_backward,
    rule_gradient,
)
from convvis.gradients import input_gradient

X = torch.tensor([-1.0, 2.0, 3.0, -4.0, 7.0])
G = torch.tensor([5.0, -6.0, 7.0, 8.0, 9.0])


def test_the_three_relu_rules_by_hand():
    assert relu_backward(X, G, "gradient").tolist() == [0, -6, 7, 0, 9]  # gate on X > 0
    assert relu_backward(X, G, "deconvnet").tolist() == [5, 0, 7, 8, 9]  # gate on G > 0
    assert relu_backward(X, G, "guided").tolist() == [0, 0, 7, 0, 9]  # both
    # ReLU6: the gradient is blocked where the input saturates (7 >= 6); DeconvNet ignores X
    assert relu_backward(X, G, "gradient", upper=6).tolist() == [0, -6, 7, 0, 0]
    assert relu_backward(X, G, "deconvnet", upper=6).tolist() == [5, 0, 7, 8, 9]
    with pytest.raises(ValueError, match="rule must be one of"):
        relu_backward(X, G, "lrp")


def test_guided_is_gradient_rule_after_deconvnet_rule():
    torch.manual_seed(0)
    x, g = torch.randn(100), torch.randn(100)
    composed = relu_backward(x, relu_backward(x, g, "deconvnet"), "gradient")
    assert torch.equal(composed, relu_backward(x, g, "guided"))


def test_conv_gradient_is_the_transposed_convolution():
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3)
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    r = torch.randn(2, 5, 4, 4)  # signal arriving from above
    y = F.conv2d(x, w, stride=2)
    (grad,) = torch.autograd.grad(y, x, r)
    deconv = F.conv_transpose2d(r, w, stride=2, output_padding=0)
    torch.testing.assert_close(grad, deconv)


def test_maxpool_gradient_is_unpooling_with_the_switches():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    y, switches = F.max_pool2d(x, 2, return_indices=True)
    r = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, r)
    torch.testing.assert_close(grad, F.max_unpool2d(r, switches, 2, output_size=x.shape[-2:]))


def small_net(inplace=True, relu6=False):
    torch.manual_seed(0)
    act = (lambda: nn.ReLU6(inplace=inplace)) if relu6 else (lambda: nn.ReLU(inplace=inplace))
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), act(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), act(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


def manual_rule_gradient(model, x, target, rule):
    """The same computation spelled out: tensor hooks on the rectifiers' outputs apply the rule."""
    def rule_hook(pre, upper):
        return lambda g: convvis.deconvnet.relu_backward(pre, g, rule, upper)

    layers = list(model)
    h = x.detach().requires_grad_(True)
    out = h
    for layer in layers:
        if isinstance(layer, (nn.ReLU, nn.ReLU6)):
            pre = out
            out = pre.clamp(0, 6) if isinstance(layer, nn.ReLU6) else pre.clamp(min=0)
            upper = 6.0 if isinstance(layer, nn.ReLU6) else None
            # replace the backward of this step: the rule's signal instead of clamp's own gate
            out = pre + (out - pre).detach()  # identity in backward, rectified value forward
            out.register_hook(rule_hook(pre.detach(), upper))
        else:
            out = layer(out)
    (g,) = torch.autograd.grad(out[:, target].sum(), h)
    return g


@pytest.mark.parametrize("rule", ["gradient", "deconvnet", "guided"])
@pytest.mark.parametrize("relu6", [False, True])
def test_rule_gradient_matches_a_hand_written_version(rule, relu6):
    model = small_net(inplace=True, relu6=relu6)
    x = torch.randn(2, 3, 8, 8) * 3
    torch.testing.assert_close(rule_gradient(model, x, 1, rule), manual_rule_gradient(model, x, 1, rule))


def test_gradient_rule_is_the_true_gradient(net):
    x = convvis.load_images(["cat", "espresso"], net)
    torch.testing.assert_close(rule_gradient(net, x, [281, 967], "gradient"),
                               input_gradient(net, x, [281, 967]), rtol=1e-4, atol=1e-7)


def test_rules_differ_on_the_real_model_and_forward_is_unchanged(net):
    x = convvis.load_image("cat", net)
    with torch.no_grad():
        before = net.model(x)
    g = {r: rule_gradient(net, x, 281, r) for r in ("gradient", "deconvnet", "guided")}
    assert not torch.allclose(g["gradient"], g["deconvnet"])
    assert not torch.allclose(g["gradient"], g["guided"])
    with backprop_rule(net, "deconvnet"), torch.no_grad():
        torch.testing.assert_close(net.model(x), before)


def test_model_restored_after_use_and_after_errors():
    model = small_net()
    model[7].weight.requires_grad_(True)
    assert all("forward" not in m.__dict__ for m in model.modules())
    with backprop_rule(model, "guided"):
        assert "forward" in model[1].__dict__
    assert all("forward" not in m.__dict__ for m in model.modules())
    with pytest.raises(RuntimeError, match="boom"), backprop_rule(model, "deconvnet"):
        raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in model.modules())
    # a failing forward inside rule_gradient (wrong input size)
    with pytest.raises(RuntimeError):
        rule_gradient(model, torch.zeros(1, 3, 1, 1), 0, "guided")
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert model[7].weight.requires_grad and model[7].weight.grad is None
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))


def test_functional_rectifiers_are_detected_not_silently_wrong():
    model = FunctionalNet().eval()
    x = torch.randn(1, 3, 6, 6)
    msg = r"1 rectifier\(s\) or activation\(s\) as functions \(relu\)"
    with pytest.raises(FunctionalRectifierError, match=msg):
        rule_gradient(model, x, 0, "deconvnet")
    assert "forward" not in model.__dict__
    rule_gradient(model, x, 0, "gradient")  # the gradient rule is right anyway


def test_reconstruct_a_unit():
    model = small_net()
    x = torch.randn(2, 3, 8, 8)
    r = reconstruct(model, x, "3", channel=2, rule="deconvnet")
    assert r.shape == x.shape
    # "max" selects each image's strongest activation; position (i, j) and "all" also work
    with torch.no_grad():
        a = model[:4](x)[:, 2]
    pos = divmod(int(a[0].flatten().argmax()), a.shape[-1])
    torch.testing.assert_close(reconstruct(model, x[:1], "3", 2, "deconvnet", unit=pos), r[:1])
    assert reconstruct(model, x, "3", 2, "gradient", unit="all").shape == x.shape
    with pytest.raises(IndexError, match="channel 9"):
        reconstruct(model, x, "3", channel=9)
    with pytest.raises(ValueError, match="no module named"):
        reconstruct(model, x, "nope", channel=0)
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("rule", ["gradient", "deconvnet", "guided"])
def test_rule_on_a_bare_rectifier_module(rule):
    act = nn.ReLU6(inplace=True)
    x = X.clone().requires_grad_(True)
    with backprop_rule(act, rule):
        (g,) = torch.autograd.grad(act(x), x, G)
    assert torch.equal(g, relu_backward(X, G, rule, upper=6.0))
    assert "forward" not in act.__dict__
    assert torch.equal(x.detach(), X)  # the in-place module did not overwrite its input


# ---- one recipe ---------------------------------------------------------------------------------


class SoftmaxNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3))).softmax(1)


def test_every_rule_goes_through_the_softmax_check():
    x = torch.rand(1, 3, 6, 6)
    for rule in convvis.RULES:
        with pytest.raises(ValueError, match="softmax"):
            convvis.rule_gradient(SoftmaxNet().eval(), x, 0, rule)
    with pytest.raises(ValueError, match="softmax"):
        convvis.grad_cam(SoftmaxNet().eval(), x, 0, layer="relu")


def test_the_gradient_rule_is_the_gradient_and_grad_cam_is_its_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 5)).eval()
    x = torch.rand(2, 3, 6, 6)
    torch.testing.assert_close(convvis.rule_gradient(model, x, [1, 3], "gradient"),
                               convvis.input_gradient(model, x, [1, 3]))
    # Grad-CAM by hand on the ReLU's output
    feats = model[1](model[0](x)).detach().requires_grad_(True)
    scores = model[4](model[3](model[2](feats)))
    (g,) = torch.autograd.grad(scores.gather(1, torch.tensor([[1], [3]])).sum(), feats)
    cam = torch.relu((g.mean((2, 3), keepdim=True) * feats.detach()).sum(1))
    torch.testing.assert_close(convvis.grad_cam(model, x, [1, 3], layer="1"), cam)


# ---- rectifiers the rules cannot see ----------------------------------------------------------------


class Rectified(nn.Module):
    def __init__(self, rectify):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.rectify = rectify
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        h = self.conv(x)
        h = self.rectify(h) if not isinstance(self.rectify, nn.Module) else self.rectify(h)
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("rectify", [
    lambda h: h.clamp(min=0), lambda h: torch.clamp(h, 0, 6), lambda h: h.clip(0),
    lambda h: torch.clip(h, min=0.0), lambda h: torch.nn.functional.threshold(h, 0.0, 0.0),
    nn.Threshold(0.0, 0.0), nn.Hardtanh(0.0, 6.0), lambda h: torch.maximum(h, torch.zeros_like(h)),
    nn.LeakyReLU(), nn.SiLU(), nn.GELU(), lambda h: h.clamp_min(0),
], ids=["clamp_min0", "clamp06", "clip0", "torch_clip", "F.threshold", "nn.Threshold", "nn.Hardtanh",
        "maximum0", "LeakyReLU", "SiLU", "GELU", "clamp_min"])
def test_rectifiers_the_swap_cannot_reach_are_refused(rectify):
    torch.manual_seed(0)
    model = Rectified(rectify).eval()
    x = torch.rand(1, 3, 6, 6)
    for rule in ("deconvnet", "guided"):
        with pytest.raises(convvis.FunctionalRectifierError):
            convvis.rule_gradient(model, x, 0, rule)
    # the plain gradient needs no swap: allowed, and the model is as it was
    plain = convvis.input_gradient(model, x, 0)
    torch.testing.assert_close(convvis.rule_gradient(model, x, 0, "gradient"), plain)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_a_clamp_that_is_not_a_rectifier_is_allowed():
    model = Rectified(lambda h: h.clamp(-1, 1)).eval()
    convvis.rule_gradient(model, torch.rand(1, 3, 6, 6), 0, "deconvnet")
