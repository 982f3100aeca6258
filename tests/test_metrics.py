import pytest
import torch
from torch import nn

import convvis
from convvis.metrics import (
    PROTOCOLS,
    Protocol,
    auc,
    deletion_auc,
    gaussian_blur,
    insertion_auc,
    perturbation_curve,
    pointing_game,
    rank_correlation,
    with_steps,
)
from convvis.saliency import saliency_map


def naive_curve(model, image, saliency, target, mode, protocol):
    """The straightforward reference: one forward pass per step, nothing shared."""
    p = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    _, _, h, w = image.shape
    order = torch.argsort(-saliency.flatten(), stable=True)
    step = p.step_size(h * w)
    sub = torch.zeros_like(image) if (p.deletion if mode == "deletion" else p.insertion) == "zero" \
        else gaussian_blur(image, p.blur_size, p.blur_sigma)
    vals = []
    k = 0
    while True:
        n = min(k * step, h * w)
        mask = torch.zeros(h * w, dtype=torch.bool)
        mask[order[:n]] = True
        mask = mask.view(1, 1, h, w)
        img = torch.where(mask, sub, image) if mode == "deletion" else torch.where(mask, image, sub)
        with torch.no_grad():
            out = model(img)
        out = out.softmax(1) if p.score == "probability" else out
        vals.append(out[0, target].item())
        if n == h * w:
            return torch.tensor(vals, dtype=torch.float64)
        k += 1


def test_auc_trapezoid():
    assert auc(torch.tensor([1.0, 1.0, 1.0])).item() == pytest.approx(1.0)
    assert auc(torch.tensor([1.0, 0.0])).item() == pytest.approx(0.5)
    assert auc(torch.tensor([[0.0, 1.0, 0.0]])).tolist() == [pytest.approx(0.5)]
    with pytest.raises(ValueError, match="two points"):
        auc(torch.tensor([1.0]))


def test_batched_curves_equal_the_naive_loop_on_a_real_model(net):
    image = convvis.load_images(["cat", "espresso"], net)
    sal = saliency_map(net, image)
    targets = [282, 967]
    proto = with_steps("rise", pixels_per_step=224 * 16)  # 15 points: keeps the test quick
    for mode in ("deletion", "insertion"):
        batched = perturbation_curve(net, image, sal, targets, mode, proto, chunk=5)
        for i in range(2):
            ref = naive_curve(net.model, image[i : i + 1], sal[i], targets[i], mode, proto)
            torch.testing.assert_close(batched[i], ref, rtol=1e-5, atol=1e-6)
            assert auc(batched[i]).item() == pytest.approx(auc(ref).item(), abs=1e-6)


def test_rise_preset_has_225_points_on_224_inputs():
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)).eval()
    image = torch.randn(1, 3, 224, 224)
    curve = perturbation_curve(model, image, torch.rand(1, 224, 224), 0, "deletion", "rise", chunk=64)
    assert curve.shape == (1, 225)
    assert PROTOCOLS["constant"].step_size(224 * 224) * 10 >= 224 * 224


def test_deletion_by_hand_on_a_pixel_counting_model():
    # score of class 0 = mean of channel 0; a map ranking the bright half first deletes it first
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 0]]))
        model[2].bias.zero_()
    image = torch.zeros(1, 3, 2, 2)
    image[0, 0, 0] = 4.0  # top row bright: mean = 2
    good = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    bad = 1 - good
    proto = Protocol("test", pixels_per_step=1, deletion="zero", insertion="zero", score="logit")
    curve_good = perturbation_curve(model, image, good, 0, "deletion", proto)
    curve_bad = perturbation_curve(model, image, bad, 0, "deletion", proto)
    assert curve_good.tolist() == [[2.0, 1.0, 0.0, 0.0, 0.0]]
    assert curve_bad.tolist() == [[2.0, 2.0, 2.0, 1.0, 0.0]]
    assert deletion_auc(model, image, good, 0, proto) < deletion_auc(model, image, bad, 0, proto)
    assert insertion_auc(model, image, good, 0, proto) > insertion_auc(model, image, bad, 0, proto)


def test_bad_arguments():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    img = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="shape"):
        perturbation_curve(model, img, torch.zeros(1, 3, 3), 0)
    with pytest.raises(ValueError, match="NaN"):
        perturbation_curve(model, img, torch.full((1, 2, 2), float("nan")), 0)
    with pytest.raises(ValueError, match="unknown protocol"):
        perturbation_curve(model, img, torch.zeros(1, 2, 2), 0, protocol="mine")
    with pytest.raises(ValueError, match="mode"):
        perturbation_curve(model, img, torch.zeros(1, 2, 2), 0, mode="both")
    with pytest.raises(ValueError, match="exactly one"):
        Protocol("x", pixels_per_step=3, steps=3)


def test_pointing_game():
    s = torch.zeros(100, 100)
    s[50, 80] = 1.0  # maximum at x = 80, y = 50
    assert pointing_game(s, [[70, 40, 90, 60]])
    assert not pointing_game(s, [[0, 0, 40, 40]])
    assert pointing_game(s, [[0, 0, 70, 60]], tolerance=15)  # 10.5 px away
    assert not pointing_game(s, [[0, 0, 70, 60]], tolerance=5)
    assert pointing_game(s, [[0, 0, 10, 10], [79, 49, 81, 51]])  # any box counts
    with pytest.raises(ValueError, match="no ground-truth"):
        pointing_game(s, [])


def test_rank_correlation():
    a = torch.rand(2, 8, 8)
    assert rank_correlation(a, a).tolist() == pytest.approx([1.0, 1.0])
    assert rank_correlation(a, -a).tolist() == pytest.approx([-1.0, -1.0])
    assert rank_correlation(a, 2 * a).tolist() == pytest.approx([1.0, 1.0])  # exact monotone map -> 1
    with pytest.raises(ValueError, match="differ in shape"):
        rank_correlation(a, a[:1])
