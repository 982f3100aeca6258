import numpy as np
import pytest
import torch
from torch import nn

import convvis
from convvis.saliency import (
    grad_cam,
    gradient_x_input,
    integrated_gradients,
    last_conv_layer,
    reduce_channels,
    saliency_map,
    smoothgrad,
)


def linear_rgb_classifier():
    """3 classes over (3,1,2) images: S = W flatten(I), hand-set W."""
    lin = nn.Linear(6, 3, bias=False)
    with torch.no_grad():
        # flatten order is (channel, y, x): [R(0,0), R(0,1), G(0,0), G(0,1), B(0,0), B(0,1)]
        lin.weight.copy_(torch.tensor([
            [1.0, -2.0, -3.0, 0.5, 0.0, 1.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [2.0, 2.0, 2.0, 2.0, 2.0, 2.0],
        ]))
    return nn.Sequential(nn.Flatten(), lin).eval()


def test_max_over_channels_is_the_paper_rule():
    model = linear_rgb_classifier()
    x = torch.zeros(1, 3, 1, 2)
    # class 0: pixel (0,0) has |w| = (1, 3, 0) over RGB -> max 3, sum 4;
    #          pixel (0,1) has |w| = (2, 0.5, 1)       -> max 2, sum 3.5
    assert saliency_map(model, x, 0).tolist() == [[[3.0, 2.0]]]
    assert saliency_map(model, x, 0, reduce="sum").tolist() == [[[4.0, 3.5]]]
    assert saliency_map(model, x, 0, reduce="abs").tolist() == [[[[1.0, 2.0]], [[3.0, 0.5]], [[0.0, 1.0]]]]


def test_default_target_is_the_top1_class_per_image():
    model = linear_rgb_classifier()
    # image a: all ones -> scores (-2.5, 0, 12): top-1 class 2 (map all 2s)
    # image b: R(0,0) = -10, rest 0 -> scores (-10, 0, -20): top-1 class 1 (map all 0s)
    a = torch.ones(1, 3, 1, 2)
    b = torch.zeros(1, 3, 1, 2)
    b[0, 0, 0, 0] = -10
    maps = saliency_map(model, torch.cat([a, b]))
    assert maps[0].tolist() == [[2.0, 2.0]] and maps[1].tolist() == [[0.0, 0.0]]


def test_reduce_is_validated():
    with pytest.raises(ValueError, match="reduce must be one of"):
        saliency_map(linear_rgb_classifier(), torch.zeros(1, 3, 1, 2), reduce="mean")
    with pytest.raises(ValueError, match=r"\(N,C,H,W\)"):
        reduce_channels(torch.zeros(3, 4, 4))


def test_matches_captum_saliency_on_the_sample_photos(net):
    captum_attr = pytest.importorskip("captum.attr")
    image = convvis.load_images(["cat", "fruits", "messi", "cameraman"], net)
    targets = [281, 951, 805, 872]
    ours = saliency_map(net, image, targets, reduce="abs")
    theirs = captum_attr.Saliency(net.model).attribute(image.clone(), target=targets, abs=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(saliency_map(net, image, targets), theirs.amax(dim=1), rtol=1e-5, atol=1e-7)


def test_integrated_gradients_completeness_and_linear_case():
    model = linear_rgb_classifier()
    x = torch.randn(2, 3, 1, 2)
    attr = integrated_gradients(model, x, 0, reduce="signed", steps=4)
    # for a linear model IG is exactly (x - 0) * w, whatever the number of steps
    torch.testing.assert_close(attr, x * model[1].weight[0].view(1, 3, 1, 2))
    # completeness on a non-linear model: attributions sum to S(x) - S(baseline), approximately
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    ).eval()
    img = torch.randn(1, 3, 6, 6)
    a = integrated_gradients(net, img, 1, reduce="signed", steps=256)
    gap = (net(img)[0, 1] - net(torch.zeros_like(img))[0, 1]).item()
    assert a.sum().item() == pytest.approx(gap, rel=1e-2, abs=1e-3)


def test_gradient_x_input_and_smoothgrad_on_a_linear_model():
    model = linear_rgb_classifier()
    x = torch.randn(1, 3, 1, 2)
    w = model[1].weight[0].view(1, 3, 1, 2)
    torch.testing.assert_close(gradient_x_input(model, x, 0), (w * x).abs().sum(1))
    # a linear model's gradient is the same at every noisy copy, so SmoothGrad = the plain map
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(smoothgrad(model, x, 0, samples=5, generator=g), saliency_map(model, x, 0))


def test_smoothgrad_keeps_the_clean_images_target():
    model = linear_rgb_classifier()
    x = torch.ones(1, 3, 1, 2) * 0.01  # top-1 class 2, barely: noise would flip it
    g = torch.Generator().manual_seed(0)
    sg = smoothgrad(model, x, samples=8, noise=5.0, generator=g)
    assert sg.tolist() == [[[2.0, 2.0]]]


def test_grad_cam_by_hand():
    # features A = identity conv on a (1,2,2) input, score = sum(A) for class 0, -sum(A) for class 1
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[4.0], [-4.0]]))
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    x = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]]]])
    # dS_0/dA = 4 / 4 = 1 everywhere -> alpha = 1, cam = relu(A) = [[1, 0], [3, 0]]
    assert grad_cam(model, x, 0, layer="0").tolist() == [[[1.0, 0.0], [3.0, 0.0]]]
    # class 1: alpha = -1 -> relu(-A) = [[0, 2], [0, 0]]
    assert grad_cam(model, x, 1, layer="0").tolist() == [[[0.0, 2.0], [0.0, 0.0]]]
    assert not conv._forward_hooks
    with pytest.raises(ValueError, match="no module named 'nope'"):
        grad_cam(model, x, 0, layer="nope")


def test_grad_cam_on_the_real_model_removes_its_hook(net):
    assert last_conv_layer(net) == "bn2.act"
    x = convvis.load_images(["cat", "espresso"], net)
    cam = grad_cam(net, x, [281, 967])
    assert cam.shape == (2, 224, 224) and cam.min() >= 0 and cam.max() > 0
    assert all(not m._forward_hooks for m in net.model.modules())


def test_saliency_leaves_model_unchanged_even_on_error():
    model = linear_rgb_classifier()
    model[1].weight.requires_grad_(True)
    with pytest.raises(IndexError):
        saliency_map(model, torch.zeros(1, 3, 1, 2), target=7)
    assert model[1].weight.requires_grad and model[1].weight.grad is None
    np.testing.assert_array_equal(model[1].weight.detach().numpy()[2], np.full(6, 2.0))


# ---- one reduce vocabulary ------------------------------------------------------------------------


def test_one_reduce_vocabulary():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()
    x = torch.rand(1, 3, 4, 4)
    w = convvis.input_gradient(model, x, 2)
    torch.testing.assert_close(convvis.saliency_map(model, x, 2, reduce="signed"), w)
    torch.testing.assert_close(convvis.saliency_map(model, x, 2, reduce="abs"), w.abs())
    torch.testing.assert_close(convvis.saliency_map(model, x, 2), w.abs().amax(1))
    torch.testing.assert_close(convvis.gradient_x_input(model, x, 2, reduce="signed"), w * x)
    ig = convvis.integrated_gradients(model, x, 2, reduce="signed", steps=4)
    torch.testing.assert_close(ig, w * x)  # linear model: IG from 0 is exactly w * x
    methods = (convvis.saliency_map, convvis.integrated_gradients, convvis.smoothgrad,
               convvis.gradient_x_input)
    for fn in methods:
        for old in (None, "none"):
            with pytest.raises(ValueError, match="'abs' for |w| per channel or 'signed'"):
                fn(model, x, 2, reduce=old)
