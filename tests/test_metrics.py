import numpy as np
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
    parameter_layers,
    perturbation_curve,
    pointing_game,
    randomised_copy,
    randomized_copy,
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
    assert curve.shape == (1, 225) and PROTOCOLS["rise"].points(224 * 224) == 225
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
    for chunk in (0, -1, 2.5, True):  # a chunk of no images would run no pass and read no check
        with pytest.raises(ValueError, match="chunk must be a positive integer"):
            perturbation_curve(model, img, torch.zeros(1, 2, 2), 0, chunk=chunk)
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


# ---- rank correlation and the randomisation cascade ----------------------------------------------


def test_rank_correlation_is_spearmans_rho_with_ties():
    from scipy.stats import spearmanr

    a = torch.zeros(1, 8, 8)
    b = torch.zeros(1, 8, 8)
    a[0, :2] = torch.arange(16.0).view(2, 8)
    b[0, 6:] = torch.arange(16.0).view(2, 8)
    ours = float(convvis.rank_correlation(a, b)[0])
    ref = spearmanr(a.flatten(), b.flatten()).statistic
    assert ours == pytest.approx(ref, abs=1e-12)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 4, (3, 10, 10)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 4, (3, 10, 10)).astype(np.float32))
    for i in range(3):
        assert float(convvis.rank_correlation(x, y)[i]) == pytest.approx(
            spearmanr(x[i].flatten(), y[i].flatten()).statistic, abs=1e-12)


def test_randomisation_cascade_is_the_cumulative_loop_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 3, 8, 8)
    stages = [("top", ["6"]), ("middle", ["2"]), ("bottom", ["0"])]
    trained, maps, corr = convvis.randomisation_cascade(model, x, [0, 1, 2], stages, seed=3, progress=True)
    # by hand: re-initialise cumulatively, the same seed each time
    torch.testing.assert_close(trained, convvis.saliency_map(model, x, [0, 1, 2]))
    names = []
    for (_, group), m, c in zip(stages, maps, corr):
        names += group
        ref = convvis.saliency_map(convvis.randomised_copy(model, names, seed=3), x, [0, 1, 2])
        torch.testing.assert_close(m, ref)
        np.testing.assert_allclose(c, convvis.rank_correlation(trained, ref).numpy())
    assert corr.shape == (3, 3)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # another method, and targets resolved once on the trained model (None: its top-1)
    top1 = model(x).argmax(1)
    t2, _, _ = convvis.randomisation_cascade(model, x, None, stages[:1], method=convvis.grad_cam)
    torch.testing.assert_close(t2, convvis.grad_cam(model, x, top1))
    with pytest.raises(ValueError, match="no stages"):
        convvis.randomisation_cascade(model, x, 0, [])


def test_randomised_copy_leaves_the_original_alone(net):
    layers = parameter_layers(net)
    assert layers[-1] == "classifier" and layers[0] == "conv_stem"
    before = {k: v.clone() for k, v in net.model.state_dict().items()}
    rng = torch.random.get_rng_state()
    rand = randomised_copy(net, ["classifier", "conv_head"], seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global RNG is untouched
    assert all(torch.equal(before[k], v) for k, v in net.model.state_dict().items())
    assert not torch.equal(rand.classifier.weight, net.model.classifier.weight)
    assert torch.equal(rand.blocks[0][0].conv_dw.weight, net.model.blocks[0][0].conv_dw.weight)
    again = randomised_copy(net, ["classifier", "conv_head"], seed=1)
    assert torch.equal(again.classifier.weight, rand.classifier.weight)  # reproducible
    with pytest.raises(ValueError, match="reset_parameters"):
        randomised_copy(nn.Sequential(nn.Sequential(nn.Linear(2, 2))), ["0"])


def test_the_american_spelling_still_works_and_warns(net):
    with pytest.warns(DeprecationWarning, match="randomised_copy"):
        old = randomized_copy(net, ["classifier"], seed=2)
    assert torch.equal(old.classifier.weight, randomised_copy(net, ["classifier"], seed=2).classifier.weight)
    assert convvis.randomized_copy is randomized_copy
