"""The library's public face and its strict inputs (issue: convvis as a library)."""

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import convvis

ROOT = Path(__file__).resolve().parents[1]


# ---- one public face ----------------------------------------------------------------------------


def test_every_public_name_resolves_and_is_unique():
    assert len(convvis.__all__) == len(set(convvis.__all__))
    for name in convvis.__all__:
        assert hasattr(convvis, name), name


@pytest.mark.parametrize("name", [
    "saliency_map", "smoothgrad", "integrated_gradients", "grad_cam", "visualise", "paper_preset",
    "ClassScore", "FourierImage", "Jitter", "segment", "localise_images", "graph_cut", "graph_cut_energy",
    "seeds_from_saliency", "fit_colour_model", "threshold_box", "grabcut_mask", "backprop_rule",
    "rule_gradient", "reconstruct", "deletion_auc", "insertion_auc", "pointing_game", "rank_correlation",
    "input_gradient", "taylor_curve", "load_model", "load_image",
])
def test_each_chapters_entry_point_is_at_the_top_level(name):
    assert name in convvis.__all__


def _chapter_texts():
    for nb in sorted((ROOT / "chapters").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            yield nb.name, cell["cell_type"], "".join(cell["source"])


def test_every_convvis_name_the_chapters_mention_exists():
    """`convvis.x.y` in any chapter's prose or code must resolve: prose used to name functions
    that did not exist at that path."""
    import importlib

    missing = []
    for nb, _, text in _chapter_texts():
        for dotted in set(re.findall(r"\bconvvis(?:\.[A-Za-z_]\w*)+", text)):
            parts = dotted.split(".")
            obj = convvis
            for i, part in enumerate(parts[1:], start=1):
                if hasattr(obj, part):
                    obj = getattr(obj, part)
                    continue
                try:  # a submodule not yet imported
                    obj = importlib.import_module(".".join(parts[: i + 1]))
                except ImportError:
                    missing.append((nb, dotted))
                    break
    assert not missing, missing


def test_chapters_import_from_the_top_level_only():
    """The chapters use the public names, not module paths (convvis.checks is the course API)."""
    for nb, kind, text in _chapter_texts():
        if kind != "code":
            continue
        for line in text.splitlines():
            m = re.match(r"\s*from convvis\.(\w+) import", line)
            # checks: the course API; localise: the command-line program's module
            assert m is None or m.group(1) in ("checks", "localise"), (nb, line)


# ---- LoadedModel is a module ----------------------------------------------------------------------


def test_loaded_model_behaves_as_a_module(net):
    assert isinstance(net, nn.Module) and not net.training
    x = convvis.load_image("cat", net)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.model(x), rtol=0, atol=0)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in net.model.parameters())
    assert net.to("cpu") is net and net.eval() is net
    assert "efficientnet_lite0" in repr(net) and "blocks" not in repr(net)
    with pytest.raises(TypeError, match="nn.Module"):
        convvis.LoadedModel("not a module")


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


# ---- one reduce vocabulary ------------------------------------------------------------------------


def test_one_reduce_vocabulary():
    model = CountingLinear().eval()
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


# ---- 16-bit PNGs --------------------------------------------------------------------------------


def _png16(path, arr, filter_type):
    """Write a 16-bit PNG by hand with one row filter for every row (colour type 2 or 6)."""
    h, w, c = arr.shape
    raw = arr.astype(">u2").tobytes()
    stride, bpp = w * c * 2, c * 2
    rows = np.frombuffer(raw, np.uint8).reshape(h, stride).astype(np.int32)
    out = bytearray()
    prev = np.zeros(stride, np.int32)
    for y in range(h):
        cur = rows[y]
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if filter_type == 0:
            f = cur
        elif filter_type == 1:
            f = cur - left
        elif filter_type == 2:
            f = cur - prev
        elif filter_type == 3:
            f = cur - (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            f = cur - np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        out += bytes([filter_type]) + bytes((f & 0xFF).astype(np.uint8))
        prev = cur

    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([16, 2 if c == 3 else 6, 0, 0, 0])
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b"")
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + body)


@pytest.mark.parametrize("filter_type", range(5))
def test_16_bit_rgb_pngs_keep_their_precision(tmp_path, filter_type):
    rng = np.random.default_rng(filter_type)
    arr = rng.integers(0, 65536, (9, 11, 3)).astype(np.uint16)
    arr[0, 0] = (1, 2, 65535)  # values that 8 bits cannot tell apart
    path = tmp_path / "x.png"
    _png16(path, arr, filter_type)
    photo = convvis.to_photo(path)
    np.testing.assert_allclose(photo, arr / 65535.0, atol=1e-7)
    assert photo[0, 0, 0] != photo[0, 0, 1]


def test_16_bit_rgba_png_is_composited(tmp_path):
    arr = np.zeros((4, 5, 4), np.uint16)
    arr[..., 0], arr[..., 3] = 65535, 32768  # red at about half opacity over white
    _png16(tmp_path / "a.png", arr, 4)
    photo = convvis.to_photo(tmp_path / "a.png")
    a = 32768 / 65535
    np.testing.assert_allclose(photo[0, 0], [1.0, 1 - a, 1 - a], atol=1e-6)


# ---- seeds, baselines, rank correlation ---------------------------------------------------------


def test_seed_counts_are_exact_at_every_size():
    rng = np.random.default_rng(0)
    for h in range(1, 23):
        for w in range(2, 23, 3):
            s = rng.random((h, w))
            fg, bg = convvis.seeds_from_saliency(s, 0.95, 0.30)
            n = h * w
            # round half up of 5 % and 30 % of n, in integers
            assert fg.sum() == max(1, (5 * n + 50) // 100), (h, w)
            assert bg.sum() == max(1, (30 * n + 50) // 100), (h, w)
            assert s[fg].min() > s[~fg].max()  # the most salient ones


def test_grabcut_refuses_an_unknown_seed_mode():
    pytest.importorskip("cv2")
    photo = np.random.default_rng(0).random((16, 16, 3))
    with pytest.raises(ValueError, match="hard_seeds"):
        convvis.grabcut_mask(photo, np.random.default_rng(1).random((16, 16)), hard_seeds="foregound")


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


# ---- the embedded models ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_and_lite2_load_offline_and_classify(name):
    import timm

    from convvis.models import _stage_layout, _weights_file

    state = torch.load(_weights_file(name), map_location="cpu", weights_only=True)
    model = timm.create_model(f"tf_{name}", pretrained=False)
    mapping = convvis.efficientnet_lite_key_map(list(state), _stage_layout(model))
    assert set(mapping.values()) == set(model.state_dict()) and len(set(mapping.values())) == len(mapping)
    net = convvis.load_model(name)
    size = {"efficientnet_lite1": 240, "efficientnet_lite2": 260}[name]
    assert net.preprocessing.input_size == size
    x = convvis.load_images(["cat", "espresso"], net)
    assert x.shape == (2, 3, size, size)
    top = [row[0][1] for row in convvis.predict(net, x)]
    assert top[0] in ("tabby", "tiger cat", "Egyptian cat") and top[1] == "espresso"


def test_unknown_model_names_the_offline_ones():
    with pytest.raises(ValueError, match="efficientnet_lite0, efficientnet_lite1, efficientnet_lite2"):
        convvis.load_model("efficientnet_lite7")


# ---- the randomisation cascade ---------------------------------------------------------------------


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
        ref = convvis.saliency_map(convvis.randomized_copy(model, names, seed=3), x, [0, 1, 2])
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
