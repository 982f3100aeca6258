import numpy as np
import pytest

import convvis
from convvis.baselines import centre_box, grabcut_mask, threshold_box
from convvis.colour_model import fit_colour_model, unaries
from convvis.ilsvrc import localisation_correct
from convvis.segmentation import (
    bounding_box,
    box_iou,
    graph_cut,
    graph_cut_energy,
    largest_component,
    pairwise_weights,
    seeds_from_saliency,
    segment,
)

# the four directions of the 8-neighbour grid, written out here so the tests do not share the
# package's own table: right, down, down-right, down-left
DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))


def disk_scene(size=64, centre=(30, 36), radius=14, seed=0):
    """A noisy red disk on a noisy green-grey background, and its true mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    photo = np.empty((size, size, 3))
    photo[...] = [0.35, 0.55, 0.35]
    photo[mask] = [0.8, 0.2, 0.15]
    photo += rng.normal(0, 0.04, photo.shape)
    return np.clip(photo, 0, 1), mask


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_seeds_from_quantiles_on_a_hand_made_map():
    s = np.arange(100, dtype=float).reshape(10, 10)
    fg, bg = seeds_from_saliency(s, 0.95, 0.30)
    assert fg.sum() == 5 and s[fg].min() == 95  # the top 5 %
    assert bg.sum() == 30 and s[bg].max() == 29  # the bottom 30 %
    assert not (fg & bg).any()
    # many ties (a map that is zero almost everywhere) still gives seed sets of the intended sizes
    t = np.zeros((10, 10))
    t[0, :3] = 1.0
    fg, bg = seeds_from_saliency(t, 0.95, 0.30)
    assert fg.sum() == 5 and t[fg].sum() == 3 and bg.sum() == 30 and t[bg].sum() == 0


def test_degenerate_saliency_is_refused():
    with pytest.raises(ValueError, match="constant"):
        seeds_from_saliency(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        seeds_from_saliency(np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="bg_quantile < fg_quantile"):
        seeds_from_saliency(np.random.rand(8, 8), 0.3, 0.5)
    with pytest.raises(ValueError, match=r"\(H,W\)"):
        seeds_from_saliency(np.random.rand(2, 8, 8))


def test_too_few_seed_pixels():
    with pytest.raises(ValueError, match="too few"):
        fit_colour_model(np.array([[0.1, 0.2, 0.3]]))
    # 6 pixels, 5 components asked: falls back to 3 components (documented)
    m = fit_colour_model(np.random.default_rng(0).random((6, 3)), components=5)
    assert len(m.weights) == 3


def test_colour_model_likelihood_matches_scipy():
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(0)
    colours = np.concatenate([rng.normal([0.2, 0.3, 0.4], 0.05, (300, 3)),
                              rng.normal([0.8, 0.1, 0.1], 0.05, (300, 3))])
    m = fit_colour_model(colours, components=2, max_samples=None, max_iter=100)
    x = rng.random((10, 3))
    parts = zip(m.weights, m.means, m.covariances)
    ref = -np.log(sum(w * multivariate_normal(mu, c).pdf(x) for w, mu, c in parts))
    np.testing.assert_allclose(m.neg_log_likelihood(x), ref, rtol=1e-8)
    # the unaries of the cut are the same numbers, computed only where asked
    photo = rng.random((4, 5, 3))
    where = rng.random((4, 5)) > 0.3
    fg_cost, bg_cost = unaries(photo, m, m, where)
    np.testing.assert_allclose(fg_cost[where], m.neg_log_likelihood(photo)[where], rtol=1e-8)
    assert (bg_cost[~where] == 0).all()


def test_em_never_lowers_the_likelihood_and_agrees_with_scikit_learn():
    sklearn = pytest.importorskip("sklearn.mixture")
    rng = np.random.default_rng(2)
    true_means = np.array([[0.2, 0.3, 0.4], [0.8, 0.1, 0.1], [0.5, 0.9, 0.6]])
    colours = np.concatenate([rng.normal(mu, 0.04, (400, 3)) for mu in true_means])
    m = fit_colour_model(colours, components=3, max_samples=None, max_iter=200, tol=1e-9)
    order = np.argsort(m.means[:, 0])
    np.testing.assert_allclose(m.means[order], true_means[np.argsort(true_means[:, 0])], atol=0.01)
    np.testing.assert_allclose(m.weights, 1 / 3, atol=1e-3)
    # overlapping clusters: EM needs many iterations, each of which must not lower the likelihood
    colours = np.concatenate([rng.normal(mu, 0.15, (400, 3)) for mu in true_means])
    m = fit_colour_model(colours, components=3, max_samples=None, max_iter=500, tol=1e-10)
    assert len(m.history) > 10 and np.all(np.diff(m.history) >= -1e-12)
    ref = sklearn.GaussianMixture(3, covariance_type="full", reg_covar=1e-4, max_iter=500, tol=1e-10,
                                  random_state=0)
    ref.fit(colours)
    ours_ll = -m.neg_log_likelihood(colours).mean()
    assert ours_ll == pytest.approx(ref.score(colours), abs=1e-4)
    # the default, hurried fit (1000 samples, 10 iterations) on a 5-component problem is close too
    quick = fit_colour_model(colours)
    assert -quick.neg_log_likelihood(colours).mean() > ours_ll - 0.05
    with pytest.raises(ValueError, match="NaN"):
        fit_colour_model(np.full((10, 3), np.nan))


def energy(labels, cost_fg, cost_bg, weights):
    """E(L) written out: unaries plus the weight of every 8-neighbour edge whose ends differ."""
    e = np.where(labels, cost_fg, cost_bg).sum()
    h, w = labels.shape
    for (dy, dx), wt in zip(DIRECTIONS, weights):
        for y in range(h):
            for x in range(w):
                if 0 <= y + dy < h and 0 <= x + dx < w and labels[y, x] != labels[y + dy, x + dx]:
                    e += wt[y, x]
    return e


def test_graph_cut_without_seed_nodes_is_the_minimum_of_the_full_graph():
    import maxflow

    rng = np.random.default_rng(5)
    for _ in range(5):
        h, w = 12, 15
        cost_fg, cost_bg = rng.random((h, w)) * 4, rng.random((h, w)) * 4
        weights, _ = pairwise_weights(rng.random((h, w, 3)), gamma=rng.uniform(0.5, 3))
        seeds = rng.random((h, w))
        fg, bg = seeds > 0.85, seeds < 0.2
        ours = graph_cut(cost_fg, cost_bg, weights, fg, bg)
        assert ours[fg].all() and not ours[bg].any()
        # reference: every pixel a node, seeds held by huge terminal capacities
        g = maxflow.Graph[float]()
        nodes = g.add_grid_nodes((h, w))
        for (dy, dx), wt in zip(DIRECTIONS, weights):
            st = np.zeros((3, 3))
            st[1 + dy, 1 + dx] = 1
            g.add_grid_edges(nodes, weights=wt, structure=st, symmetric=True)
        g.add_grid_tedges(nodes, np.where(bg, 1e9, cost_fg), np.where(fg, 1e9, cost_bg))
        g.maxflow()
        ref = g.get_grid_segments(nodes)
        e_ours, e_ref = (energy(m, cost_fg, cost_bg, weights) for m in (ours, ref))
        assert e_ours == pytest.approx(e_ref)
        # the package's public energy is the one written out above
        for labels in (ours, ref, rng.random((h, w)) > 0.5):
            assert graph_cut_energy(labels, cost_fg, cost_bg, weights) == pytest.approx(
                energy(labels, cost_fg, cost_bg, weights), rel=1e-12)
    with pytest.raises(ValueError, match="both foreground and background"):
        graph_cut(cost_fg, cost_bg, weights, fg, fg)


def test_graph_cut_by_hand_on_a_tiny_grid():
    # 1 x 3 pixels: unaries prefer [fg, bg, fg]; strong smoothing flips the middle one
    cost_fg = np.array([[0.0, 1.0, 0.0]])
    cost_bg = np.array([[5.0, 0.0, 5.0]])
    weak = [np.full((1, 3), 0.1)] + [np.zeros((1, 3))] * 3
    strong = [np.full((1, 3), 10.0)] + [np.zeros((1, 3))] * 3
    assert graph_cut(cost_fg, cost_bg, weak).tolist() == [[True, False, True]]
    assert graph_cut(cost_fg, cost_bg, strong).tolist() == [[True, True, True]]
    # a hard background seed wins over any unary
    seed_bg = np.array([[True, False, False]])
    assert graph_cut(cost_fg, cost_bg, weak, bg_seeds=seed_bg).tolist() == [[False, False, True]]


def test_pairwise_weights_beta_and_borders():
    photo = np.zeros((4, 5, 3))
    photo[:, 2:] = 1.0  # a vertical edge between columns 1 and 2
    (right, down, diag, anti), beta = pairwise_weights(photo, gamma=1.0)
    assert right[:, -1].sum() == 0 and down[-1].sum() == 0  # no edges out of the image
    assert anti[:, 0].sum() == 0 and diag[:, -1].sum() == 0
    assert right[0, 1] < right[0, 0] == pytest.approx(1.0)  # the edge crossing the boundary is cheap
    assert diag[0, 0] == pytest.approx(1 / np.sqrt(2))  # diagonal edges weigh 1/dist
    assert beta > 0


def test_segmentation_recovers_a_known_object_from_a_partial_seed():
    photo, truth = disk_scene()
    saliency = np.zeros(truth.shape)
    saliency[22:38, 28:44] = 1.0  # only the disk's centre is "salient" (6 % of the image)
    saliency += np.random.default_rng(1).random(truth.shape) * 1e-3
    seg = segment(photo, saliency, hard_seeds="foreground")
    assert iou(seg.object_mask, truth) > 0.9
    tb = bounding_box(truth)
    assert box_iou(seg.box, tb) > 0.85
    assert set(seg.timings) >= {"seeds", "colour_models", "energy", "graph_cut", "component_and_box"}
    # hard background seeds (the default): the bottom 30 % of this map includes random pixels
    # inside the disk, which then cannot be foreground -- the documented failure mode
    both = segment(photo, saliency)
    assert (both.bg_seeds & truth).sum() > 50 and iou(both.object_mask, truth) < 0.8
    with pytest.raises(ValueError, match="hard_seeds"):
        segment(photo, saliency, hard_seeds="all")


def test_iterating_does_not_hurt_on_the_easy_scene():
    photo, truth = disk_scene(seed=3)
    saliency = np.zeros(truth.shape)
    saliency[23:38, 29:44] = 1.0
    one = segment(photo, saliency, hard_seeds="foreground")
    three = segment(photo, saliency, hard_seeds="foreground", iterations=2)
    assert iou(three.object_mask, truth) >= iou(one.object_mask, truth) - 0.02


def test_largest_component_and_box_on_hand_made_masks():
    m = np.zeros((6, 8), dtype=bool)
    m[0:2, 0:2] = True  # 4 pixels
    m[3:6, 4:7] = True  # 9 pixels
    lcc = largest_component(m)
    assert lcc.sum() == 9 and lcc[3:6, 4:7].all()
    assert bounding_box(lcc) == (4, 3, 7, 6)
    assert bounding_box(np.zeros((3, 3), bool)) is None
    assert not largest_component(np.zeros((3, 3), bool)).any()
    diag = np.eye(4, dtype=bool)  # 8-connected: one component
    assert largest_component(diag).sum() == 4


def test_box_iou_and_the_localisation_criterion():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    gt = [([281, 282], [0, 0, 10, 10])]
    assert localisation_correct([(282, [0, 0, 9, 10])], gt)
    assert not localisation_correct([(999, [0, 0, 10, 10])], gt)  # wrong class
    assert not localisation_correct([(281, [5, 0, 15, 10])], gt)  # IoU 1/3 < 0.5
    assert localisation_correct([(1, [0, 0, 10, 10]), (281, [0, 0, 10, 10])], gt)  # top-5 style
    assert not localisation_correct([(281, None)], gt)


def test_localise_runs_the_batch_pipeline(net):
    x = convvis.load_images(["squirrel", "orange"], net)
    segs = convvis.localise_images(net, x, [335, 950])
    assert len(segs) == 2 and all(s.mask.shape == (224, 224) for s in segs)
    assert all(s.box is not None for s in segs)
    with pytest.warns(DeprecationWarning, match="target="):  # the old keyword: same result
        old = convvis.localise_images(net, x[:1], targets=[335])
    np.testing.assert_array_equal(old[0].mask, segs[0].mask)


def test_baselines_on_the_disk_scene():
    photo, truth = disk_scene()
    saliency = np.zeros(truth.shape)
    saliency[22:38, 28:44] = 1.0
    saliency += np.random.default_rng(1).random(truth.shape) * 1e-3
    assert centre_box(100, 0.8) == pytest.approx((10.0, 10.0, 90.0, 90.0))
    tb = threshold_box(saliency)
    assert tb is not None and box_iou(tb, (28, 22, 44, 38)) > 0.5  # the salient block, not the disk
    pytest.importorskip("cv2")
    assert iou(grabcut_mask(photo, saliency, hard_seeds="foreground"), truth) > 0.9


def test_smoothing_the_map_turns_scattered_seeds_into_a_blob():
    photo, truth = disk_scene()
    rng = np.random.default_rng(0)
    saliency = rng.random(truth.shape)
    saliency[truth] += rng.random(truth.sum()) * 0.4  # speckled, only slightly higher on the disk
    raw = seeds_from_saliency(saliency)[0]
    smooth = segment(photo, saliency, smooth=3.0).fg_seeds
    purity = lambda m: (m & truth).sum() / m.sum()  # noqa: E731
    assert purity(raw) < 0.7 and purity(smooth) > 0.95


# ---- seeds and baselines ------------------------------------------------------------------------


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
