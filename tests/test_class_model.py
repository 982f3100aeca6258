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
from convvis.models import Preprocessing


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


# ---- the legible preset and the legibility measure (issue #18) -----------------------------------


def test_presets_by_name_and_explicit_arguments_override_them():
    assert convvis.class_model_presets() == ["paper", "legible"]
    assert convvis.class_model_preset("paper")["steps"] == paper_preset()["steps"]
    legible = convvis.class_model_preset("legible", steps=7)
    assert legible["steps"] == 7 and legible["optimizer"] == "adam"
    assert any(isinstance(t, convvis.RandomAffine) for t in legible["transforms"])
    with pytest.raises(ValueError, match=r"no class-model preset 'lucent'.*'paper', 'legible'"):
        convvis.class_model_preset("lucent")
    with pytest.raises(ValueError, match="'paper', 'legible'"):
        visualise(linear_model(), [0], preset="Legible", size=4, steps=1, progress=False)
    with pytest.raises(TypeError, match="no setting"):
        convvis.class_model_preset("paper", stpes=3)
    # the default is the paper's preset; steps given explicitly win
    r = visualise(linear_model(), [0], size=4, steps=3, progress=False)
    assert r.history["score"].shape == (3, 1)


def test_legible_preset_runs_on_a_small_convnet_and_keeps_colours_displayable():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(32, 4)).eval()
    affine = convvis.RandomAffine(pad=2, jitter=2, scales=(0.9, 1.1), degrees=10)
    r = visualise(model, [0, 3], preset="legible", transforms=(affine,), size=32, steps=40, lr=0.1,
                  progress=False)
    assert (r.history["score"][-1] > r.history["score"][0]).all()
    # bounded Fourier image: (sigmoid - 0.5) / 0.5 lies in (-1, 1), i.e. colours in (0, 1)
    assert r.image.abs().max() < 1


def test_bounded_fourier_image_starts_at_mid_grey_and_stays_in_range():
    f = FourierImage(2, 32, bounded=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert torch.equal(f(), torch.zeros(2, 3, 32, 32))
    with torch.no_grad():
        f.spectrum.normal_(std=100.0)
    x = f()
    assert x.abs().max() <= 1 and x.std() > 0.1
    make = convvis.fourier_image(decay=1.0)
    built = make(3, 16, "cpu", Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3))
    assert isinstance(built, FourierImage) and built().shape == (3, 3, 16, 16)


@pytest.mark.parametrize("mean, std", [
    ((0.5,) * 3, (0.5,) * 3),  # the embedded models: tanh alone
    ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision's: shifted and rescaled
    ((0.5,) * 3, (0.229, 0.224, 0.225)),  # rescaled only
])
def test_bounded_fourier_image_is_the_sigmoid_of_the_mixed_spectrum(mean, std):
    """The forward pass computes it through tanh (one pass fewer); it must equal the definition,
    (sigmoid(mix @ irfft2(scale * spectrum) + logit(mean)) - mean) / std, to float32 rounding."""
    torch.manual_seed(0)
    f = FourierImage(2, 32, std=std, mean=mean, decay=1.5, bounded=True)
    with torch.no_grad():
        f.spectrum.normal_(std=3.0)
        spec = torch.view_as_complex(f.spectrum) * f.scale
        x = torch.fft.irfft2(spec, s=(32, 32), norm="ortho") * 32 / 8
        mixed = torch.einsum("ij,njhw->nihw", f.mix, x)
        want = (torch.sigmoid(mixed + torch.logit(f.mean)) - f.mean) / f.std
        torch.testing.assert_close(f(), want, atol=2e-6, rtol=0)
        f.spectrum.zero_()
        torch.testing.assert_close(f(), torch.zeros(2, 3, 32, 32), atol=1e-6, rtol=0)  # the mean colour


def test_random_affine_identity_and_shift_geometry():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 16, 16)
    same = convvis.RandomAffine(pad=0, jitter=0, scales=(1.0, 1.0), degrees=0)
    torch.testing.assert_close(same(x, g), x, atol=1e-5, rtol=0)
    # nearest sampling copies pixels: the identity is exact, and every output value is an input
    # value or the zero fill
    nearest = convvis.RandomAffine(pad=0, jitter=0, scales=(1.0, 1.0), degrees=0, mode="nearest")
    assert torch.equal(nearest(x, g), x)
    turned = convvis.RandomAffine(pad=2, jitter=1, scales=(0.9, 1.1), degrees=10, mode="nearest")(x, g)
    assert set(turned.unique().tolist()) <= set(x.unique().tolist()) | {0.0}
    # a pure shift of (pad + jitter) pixels at most: the image's centre of mass moves by at most that
    blob = torch.zeros(1, 1, 33, 33)
    blob[..., 14:19, 14:19] = 1
    shift = convvis.RandomAffine(pad=3, jitter=2, scales=(1.0, 1.0), degrees=0)
    ys, xs = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    moved = []
    for _ in range(50):
        y = shift(blob, g)[0, 0]
        moved.append(((y * ys).sum() / y.sum() - 16, (y * xs).sum() / y.sum() - 16))
    moved = torch.tensor(moved)
    assert moved.abs().max() <= 5 + 1e-4 and moved.abs().max() > 3  # uses the range, stays within it
    # what a shift uncovers is the zero image (mid-grey), not a wrapped copy
    big = convvis.RandomAffine(pad=8, jitter=0, scales=(1.0, 1.0), degrees=0)
    ones = big(torch.ones(8, 1, 16, 16), g)
    assert (ones == 0).any() and ones.max() <= 1 + 1e-6


def test_transforms_that_move_the_image_out_of_frame_are_refused():
    model = linear_model()
    with pytest.raises(ValueError, match="padding of 300 pixels is not smaller than the 224-pixel image"):
        convvis.RandomAffine(pad=300).check(224)
    with pytest.raises(ValueError, match="out of the frame entirely"):
        visualise(model, [0], preset="legible", transforms=(convvis.RandomAffine(pad=2, jitter=2),), size=4,
                  steps=1, progress=False)
    convvis.RandomAffine(pad=12, jitter=8).check(224)  # the preset's own values pass
    for bad in ({"pad": -1}, {"scales": (0.0, 1.0)}, {"scales": (1.2, 1.1)}, {"degrees": 270},
                {"mode": "bicubic"}):
        with pytest.raises(ValueError):
            convvis.RandomAffine(**bad)


class _FixedJudge(nn.Module):
    """Scores class k as (k * 7919) % 1000 whatever the image, and records what it was shown."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().clone()
        order = (torch.arange(1000) * 7919 % 1000).float()
        return order.expand(x.shape[0], 1000) + 0 * self.conv(x).mean()


def test_legibility_ranks_resizes_and_renormalises_for_each_judge():
    source = convvis.load_model("efficientnet_lite0")  # mean = std = 0.5
    judge = convvis.LoadedModel(_FixedJudge().eval(), name="fixed",
                                preprocessing=Preprocessing(input_size=32, resize_size=32, mean=(0.4,) * 3,
                                                            std=(0.2,) * 3))
    order = torch.arange(1000) * 7919 % 1000
    rank_of = {int(c): int((order > order[c]).sum()) for c in range(1000)}
    targets = [int(order.argmax()), int(order.argsort()[-3]), int(order.argsort()[-6]), 17]
    images = torch.zeros(4, 3, 224, 224)  # the zero image: mid-grey, 0.5 in [0, 1]
    leg = convvis.legibility(images, targets, source, judges=[judge])["fixed"]
    assert leg.ranks.tolist() == [0, 2, 5, rank_of[17]] and rank_of[17] > 5
    assert leg.top1 == 0.25 and leg.topk == 0.5 and leg.k == 5
    assert leg.predicted.tolist() == [int(order.argmax())] * 4
    # the judge saw the images at its own size, normalised its own way: (0.5 - 0.4) / 0.2
    assert judge.model.seen.shape == (4, 3, 32, 32)
    torch.testing.assert_close(judge.model.seen, torch.full((4, 3, 32, 32), 0.5))
    assert convvis.legibility(images, targets, source, judges=[judge], k=1000)["fixed"].topk == 1.0
    with pytest.warns(DeprecationWarning, match="target="):
        old = convvis.legibility(images, targets=targets, source=source, judges=[judge])["fixed"]
    assert old.ranks.tolist() == leg.ranks.tolist()


def test_legibility_refuses_bad_input():
    net = convvis.load_model("efficientnet_lite0")
    judge = convvis.LoadedModel(_FixedJudge().eval(), name="fixed")
    images = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match="must not be the network"):
        convvis.legibility(images, [1, 2], net, judges=[net])
    with pytest.raises(TypeError, match="LoadedModel"):
        convvis.legibility(images, [1, 2], net.model, judges=[judge])
    with pytest.raises(IndexError):
        convvis.legibility(images, [1, 1000], net, judges=[judge])
    with pytest.raises(ValueError, match="at least one judge"):
        convvis.legibility(images, [1, 2], net, judges=[])
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        convvis.legibility(bad, [1, 2], net, judges=[judge])


def test_legibility_records_each_judges_probability_of_the_class():
    source = convvis.load_model("efficientnet_lite0")
    judge = convvis.LoadedModel(_FixedJudge().eval(), name="fixed")
    order = (torch.arange(1000) * 7919 % 1000).float()
    leg = convvis.legibility(torch.zeros(2, 3, 224, 224), [3, 17], source, judges=[judge])["fixed"]
    np.testing.assert_allclose(leg.probability, order.softmax(0)[[3, 17]].numpy(), rtol=1e-5)


def test_snapshots_keep_the_image_at_each_step_count():
    model = linear_model()
    objective = ClassScore() - 0.1 * L2()
    snap = convvis.Snapshots([5, 2, 2])
    assert snap.steps == (2, 5)
    full = visualise(model, [1, 3], objective, size=4, steps=5, lr=0.1, post_step=(snap,), progress=False)
    short = visualise(model, [1, 3], objective, size=4, steps=2, lr=0.1, progress=False)
    assert sorted(snap.images) == [2, 5]
    # separate runs: equal to float rounding (the same operations in the same order on a CPU)
    torch.testing.assert_close(snap.images[5], full.image, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(snap.images[2], short.image, rtol=1e-6, atol=1e-7)
    assert not torch.equal(snap.images[2], snap.images[5])  # a copy, not the live parameter
    for bad in ([], [0], [2.5], [True]):
        with pytest.raises(ValueError, match="positive integer"):
            convvis.Snapshots(bad)


def _tiny_source():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 10)).eval()
    return convvis.LoadedModel(net, name="tiny", class_names=[f"c{k}" for k in range(10)])


def test_paper_checkpoints_runs_the_paper_preset_and_judges_each_checkpoint():
    source, judge = _tiny_source(), convvis.LoadedModel(_FixedJudge().eval(), name="fixed")
    report, images = convvis.paper_checkpoints(source, [1, 7], [1e-3, 1e-1], [3, 1], judges=[judge])
    assert report["checkpoints"] == [1, 3] and report["judges"] == ["fixed"]
    assert report["class_names"] == ["c1", "c7"] and report["optimizer"] == "sgd"
    assert [(r["lambda"], r["step"]) for r in report["rows"]] == [(1e-3, 1), (1e-3, 3), (1e-1, 1), (1e-1, 3)]
    for lam in (1e-3, 1e-1):
        run = visualise(source, [1, 7], **{**paper_preset(lam), "steps": 3}, progress=False)
        torch.testing.assert_close(images[lam, 3], run.image, rtol=1e-5, atol=1e-6)
    for row in report["rows"]:
        x = images[row["lambda"], row["step"]]
        with torch.no_grad():
            scores = source.model(x)
        np.testing.assert_allclose(row["own"]["score"], scores[:, [1, 7]].diagonal().numpy(), rtol=1e-5)
        np.testing.assert_allclose(row["own"]["norm"], x.flatten(1).norm(dim=1).numpy(), rtol=1e-6)
        said = convvis.legibility(x, [1, 7], source, judges=[judge])["fixed"]
        assert row["judges"]["fixed"]["rank"] == said.ranks.tolist()
    fig = convvis.show_checkpoints(report, images, source)
    assert len(fig.axes) == 4 and fig.axes[0].get_title().startswith("c1\nrank fixed: ")
    with pytest.raises(ValueError, match="not one of the report's checkpoints"):
        convvis.show_checkpoints(report, images, source, step=2)
    with pytest.raises(ValueError, match="lambdas"):
        convvis.paper_checkpoints(source, [1], [-1.0], [2], judges=[judge])
    with pytest.raises(TypeError, match="LoadedModel"):
        convvis.paper_checkpoints(source.model, [1], [1e-3], [2], judges=[judge])
