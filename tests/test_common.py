"""Shared plumbing (convvis.common): targets, image and model checks, the checked forward."""

import pytest
import torch
from torch import nn

import convvis

# ---- target means one thing everywhere -----------------------------------------------------------


class CountingLinear(nn.Module):
    """(N,3,H,W) -> (N,5) linear scores; counts forward passes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 5)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x.flatten(1))


def test_targets_by_class_name(net):
    x = convvis.load_image("cat", net)
    tabby = net.class_names.index("tabby")
    by_name = convvis.saliency_map(net, x, "tabby")
    torch.testing.assert_close(by_name, convvis.saliency_map(net, x, tabby), rtol=0, atol=0)
    by_index = float(convvis.class_score(net, x, tabby))
    assert float(convvis.class_score(net, x, "Tabby")) == pytest.approx(by_index)
    with pytest.raises(ValueError, match="unknown class name 'tabby cat'.*'tabby'"):
        convvis.saliency_map(net, x, "tabby cat")
    with pytest.raises(TypeError, match="no class names"):
        convvis.input_gradient(net.model, x, "tabby")


@pytest.mark.parametrize("bad, err, msg", [
    (1.7, TypeError, "not an integer class index"),
    ([0, 2.5], TypeError, "not an integer class index"),
    (torch.tensor([1.0]), TypeError, "integer class indices"),
    (True, TypeError, "bool"),
    (5, IndexError, "out of range"),
    (-1, IndexError, "out of range"),
    ([0, 1, 2], ValueError, "3 targets for a batch of 2"),
])
def test_bad_targets_are_refused_the_same_way_everywhere(bad, err, msg):
    model = CountingLinear().eval()
    x = torch.rand(2, 3, 4, 4)
    for fn in (convvis.input_gradient, convvis.saliency_map, convvis.class_score,
               lambda m, i, t: convvis.rule_gradient(m, i, t, "gradient")):
        with pytest.raises(err, match=msg):
            fn(model, x, bad)


def test_visualise_checks_targets_before_any_forward_pass():
    model = CountingLinear().eval()
    for bad, err in ((1.7, TypeError), ([9], IndexError), ("tabby", TypeError)):
        with pytest.raises(err):
            convvis.visualise(model, bad, size=4, steps=1, progress=False)
    assert model.calls == 0
    # a parametrisation with one image for two targets
    with pytest.raises(ValueError, match="one .* image per target"):
        convvis.visualise(model, [0, 1], param=convvis.PixelImage(1, 4), size=4, steps=1, progress=False)
    assert model.calls == 0
    r = convvis.visualise(model, 3, size=4, steps=2, progress=False)
    assert r.targets.tolist() == [3]
    # `target` everywhere; `targets=` still works for one release, with a warning
    with pytest.warns(DeprecationWarning, match="visualise\\(targets=...\\) is deprecated; use target="):
        old = convvis.visualise(model, targets=3, size=4, steps=2, progress=False)
    assert torch.equal(old.image, r.image)
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="both"):
        convvis.visualise(model, 3, targets=3, size=4, steps=1, progress=False)


# ---- bad images ---------------------------------------------------------------------------------


def test_nan_or_inf_pixels_are_refused(net):
    x = convvis.load_image("cat", net)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[0, 1, 5, 7] = bad
        for fn in (convvis.saliency_map, convvis.input_gradient, convvis.grad_cam,
                   lambda m, i: convvis.rule_gradient(m, i, None, "guided"), convvis.class_score):
            with pytest.raises(ValueError, match="NaN|infinite"):
                fn(net, y)
        with pytest.raises(ValueError, match="NaN|infinite"):
            convvis.predict(net, y)


def test_wrong_dtype_or_channels_say_what_is_expected(net):
    x = convvis.load_image("cat", net)
    with pytest.raises(TypeError, match="image is torch.float64 but the model's weights are torch.float32"):
        convvis.saliency_map(net, x.double())
    with pytest.raises(ValueError, match="1 channel.* the model reads 3"):
        convvis.saliency_map(net, x[:, :1])
    with pytest.raises(TypeError, match="floating-point"):
        convvis.saliency_map(net, (x * 100).to(torch.uint8))


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_training_mode_models_are_refused_and_untouched(net):
    model = BNNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 6, 6)
    calls = [
        lambda: convvis.rectifier_states(model, x),
        lambda: convvis.first_region_boundary(model, x[:1], torch.rand(1, 3, 6, 6), 1.0),
        lambda: convvis.last_conv_layer(model, 6),
        lambda: convvis.saliency_map(model, x),
        lambda: convvis.visualise(model, 0, size=6, steps=1, progress=False),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="training mode"):
            call()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # predict on a LoadedModel in training mode: refused, batch-norm statistics unchanged
    net.train()
    try:
        stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
        with pytest.raises(ValueError, match="training mode"):
            convvis.predict(net, convvis.load_image("cat", net))
        assert all(torch.equal(net.state_dict()[k], v) for k, v in stats.items())
    finally:
        net.eval()
