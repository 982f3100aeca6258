import numpy as np
import pytest
import torch
from torch import nn

import convvis
from convvis.class_model import (
    _RGB_SQRT_COV,
    L2,
    BlurEvery,
    ClassProbability,
    ClassScore,
    Context,
    FourierImage,
    Jitter,
    PixelImage,
    RandomRotate,
    RandomScale,
    TotalVariation,
    colour_sqrt_cov,
    paper_preset,
    visualise,
)


def linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()


def test_linear_model_reaches_the_closed_form_optimum():
    # maximise w_c.I + b_c - lam ||I||^2  =>  I* = w_c / (2 lam)
    model, lam = linear_model(), 0.5
    r = visualise(model, [1, 3], ClassScore() - lam * L2(), size=4, steps=300, lr=0.1, progress=False)
    for k, c in enumerate([1, 3]):
        expected = model[1].weight[c].view(3, 4, 4) / (2 * lam)
        torch.testing.assert_close(r.image[k], expected, rtol=1e-5, atol=1e-6)


def test_objective_increases_on_a_small_convnet():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(32, 4)).eval()
    param = PixelImage(2, 16, init_std=0.1, generator=torch.Generator().manual_seed(0))
    r = visualise(model, [0, 2], param=param, size=16, steps=50, lr=20.0, progress=False)
    obj = r.history["objective"]
    assert obj.shape == (50, 2)
    assert (obj[-1] > obj[0] + 0.05).all()
    assert (np.diff(obj, axis=0) > -1e-4).mean() > 0.9  # nearly monotone for a small enough step


def test_model_flags_and_weights_unchanged():
    model = linear_model()
    model[1].bias.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    visualise(model, [0], size=4, steps=5, progress=False)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_objectives_compose():
    scores = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    image = torch.ones(2, 3, 2, 2)
    ctx = Context(scores, image, torch.tensor([1, 0]))
    assert ClassScore()(ctx).tolist() == [3.0, 2.0]
    assert L2()(ctx).tolist() == [12.0, 12.0]
    combined = ClassScore() - 0.5 * L2()
    assert combined(ctx).tolist() == [-3.0, -4.0]
    assert (2 * ClassScore() + (-ClassScore()))(ctx).tolist() == [3.0, 2.0]
    p = ClassProbability()(ctx)
    torch.testing.assert_close(p, scores.softmax(1)[[0, 1], [1, 0]])
    assert TotalVariation()(ctx).tolist() == [0.0, 0.0]
    assert "S_c" in repr(combined) and "||I||^2" in repr(combined)


def test_softmax_objective_can_win_by_lowering_other_scores():
    # two classes sharing the input: raising P_0 works as well by lowering S_1 as by raising S_0
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, 0.0], [0.0, 1.0]]))  # S_0 is hard to raise, S_1 easy to lower
    model = nn.Sequential(nn.Flatten(), lin).eval()
    param = PixelImage(1, 1)
    param.pixels = nn.Parameter(torch.zeros(1, 2, 1, 1))
    r = visualise(model, [0], ClassProbability(), param=param, size=1, steps=100, lr=1.0, progress=False)
    h = r.history
    drop_other = h["other_scores"][0, 0] - h["other_scores"][-1, 0]
    rise_target = h["score"][-1, 0] - h["score"][0, 0]
    assert drop_other > 5 * rise_target > 0
    # log-odds bookkeeping: log(p / (1 - p)) = S_c - lse_others at every step
    logit_p = np.log(h["probability"][:, 0] / (1 - h["probability"][:, 0]))
    np.testing.assert_allclose(logit_p, h["score"][:, 0] - h["lse_others"][:, 0], rtol=1e-4, atol=1e-4)


def test_fourier_image_is_linear_and_starts_at_zero():
    f = FourierImage(2, 32)
    assert torch.equal(f(), torch.zeros(2, 3, 32, 32))
    with torch.no_grad():
        f.spectrum.normal_()
    a = f()
    with torch.no_grad():
        f.spectrum.mul_(3.0)
    torch.testing.assert_close(f(), 3 * a)


def test_colour_matrix_is_measured_on_the_sample_photos():
    photos = [convvis.to_photo(n) for n in convvis.sample_names()]
    np.testing.assert_allclose(_RGB_SQRT_COV.numpy(), colour_sqrt_cov(photos), atol=2e-4)


def test_transforms_keep_shape_and_blur_keeps_constants():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for tr in (Jitter(4), RandomScale((0.9, 1.1)), RandomRotate((-10, 10))):
        assert tr(x, g).shape == x.shape
    param = PixelImage(1, 16)
    with torch.no_grad():
        param.pixels.fill_(0.7)
    BlurEvery(1.0, every=1)(param, 0)
    torch.testing.assert_close(param.pixels, torch.full((1, 3, 16, 16), 0.7))


def test_bad_arguments():
    model = linear_model()
    with pytest.raises(IndexError, match="out of range: the model has 5 classes"):
        visualise(model, [7], size=4, steps=1, progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        visualise(model, [0], size=4, steps=1, optimizer="lbfgs", progress=False)
    with pytest.raises(TypeError, match="Objective"):
        visualise(model, [0], objective=lambda ctx: ctx.scores[:, 0], size=4, steps=1, progress=False)
    with pytest.raises(ValueError, match="no target"):
        visualise(model, [], size=4, steps=1, progress=False)
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        visualise(model, [0], size=4, steps=1, progress=False)


def test_paper_preset_is_the_papers_configuration():
    p = paper_preset()
    assert p["transforms"] == () and p["post_step"] == () and p["optimizer"] == "sgd"
    assert "S_c" in repr(p["objective"]) and "P_c" not in repr(p["objective"])
