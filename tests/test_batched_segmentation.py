"""The batched graph cuts (convvis.batched_segmentation) against segment(), the one-photo reference.

A sample: 3 of the book's photos, each with its top-3 saliency maps, and one constant map. Both
engines are checked on the CPU: "auto" (the reference's NumPy steps where they are faster on a CPU)
and "torch" (every step in torch: the code a GPU runs). The 272-photo fixture comparison is
``benchmarks/localise.py --agreement``.
"""

import numpy as np
import pytest
import torch

import convvis
from convvis.batched_segmentation import prepare_cuts, segment_batch
from convvis.colour_model import (
    _kmeans_pp,
    fit_colour_model,
    fit_colour_model_groups,
    fit_colour_models,
    initial_assignments,
)
from convvis.segmentation import seeds_from_saliency, segment

K = 3


@pytest.fixture(scope="module")
def sample(net):
    x = convvis.load_images(["dog", "orange", "rocket"], net)
    with torch.no_grad():
        classes = net.model(x).topk(K, 1).indices
    maps = convvis.saliency_map(net, x.repeat_interleave(K, 0), classes.reshape(-1))
    maps = maps.reshape(len(x), K, 224, 224).float().numpy().copy()
    maps[2, 2] = 0.25  # a constant map: no seeds, for both paths
    return convvis.deprocess(x, net), maps


@pytest.mark.parametrize("engine", ["auto", "torch"])
def test_batched_cuts_agree_with_segment(sample, engine):
    photos, maps = sample
    prep = prepare_cuts(torch.as_tensor(photos), torch.as_tensor(maps), engine=engine)
    out = segment_batch(torch.as_tensor(photos), torch.as_tensor(maps), engine=engine)
    ious = []
    for i in range(len(photos)):
        for j in range(K):
            if i == 2 and j == 2:
                with pytest.raises(ValueError) as e:
                    segment(photos[i], maps[i, j])
                assert prep.notes[i][j] == out[i][j]["note"] == str(e.value)
                assert out[i][j]["box"] is None
                continue
            assert prep.notes[i][j] is None
            fg, bg = seeds_from_saliency(maps[i, j])
            # the same seeds, exactly
            assert np.array_equal(prep.labels[i, j] == 1, fg) and np.array_equal(prep.labels[i, j] == 2, bg)
            # the same colour models to rounding: mean log-likelihood per EM iteration within 1e-9
            for c, seeds in enumerate((fg, bg)):
                ref = np.array(fit_colour_model(photos[i].astype(np.float64)[seeds]).history)
                got = prep.history[i, j, c]
                assert np.isnan(got[len(ref):]).all()
                np.testing.assert_allclose(got[: len(ref)], ref, rtol=0, atol=1e-9)
            seg = segment(photos[i], maps[i, j])
            mask = out[i][j]["mask"]
            ious.append((mask & seg.mask).sum() / (mask | seg.mask).sum())
            # float32 capacities can move a cut only where two labellings tie to float32 rounding
            assert ious[-1] >= 0.98, (i, j, ious[-1])
    print(engine, "mask IoU with segment():", np.round(ious, 4))
    assert np.mean(ious) >= 0.995


def test_batched_path_refuses_what_it_does_not_reproduce(sample):
    photos, maps = sample
    args = torch.as_tensor(photos[:1]), torch.as_tensor(maps[:1])
    for bad in ({"hard_seeds": "foreground"}, {"smooth": 2.0}, {"iterations": 1}):
        with pytest.raises(ValueError, match="convvis.segment"):
            prepare_cuts(*args, **bad)
    with pytest.raises(TypeError, match="unknown"):
        prepare_cuts(*args, colour=1)
    with pytest.raises(ValueError, match="do not match"):
        prepare_cuts(args[0], args[1][:, :, :10])


def _loop_assignments(colours, k, state):
    """The reference's start, one set at a time: k-means++ (``_kmeans_pp``), then nearest centre."""
    out = np.empty(colours.shape[:2], np.int64)
    for i, x in enumerate(colours):
        g = np.random.default_rng()
        g.bit_generator.state = state
        centres = _kmeans_pp(x, k, g)
        out[i] = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    return out


@pytest.mark.parametrize("case", ["random", "ties", "constant sets", "few colours", "tiny sets", "float32"])
def test_initial_assignments_are_the_reference_loops(case):
    """The sets are seeded together; each must get exactly the indices its own loop would draw,
    also sets whose distances all vanish at the first step or a later one (where the loop takes
    the other branch of ``_kmeans_pp``), and float32 colours (the loop's draws are in float64)."""
    rng = np.random.default_rng(len(case))
    x = rng.random((40, 300, 3))
    if case == "ties":
        x = np.round(x * 3) / 3
    elif case == "constant sets":
        x[3] = 0.5
        x[7] = x[7, :1]
        x[9, :, 0] = 0.25  # constant in one channel only: still distances
    elif case == "few colours":  # two or three distinct colours: no distance left after them
        x[::2] = np.where(rng.random((20, 300, 1)) < 0.5, 0.2, 0.8)
        x[1::4] = np.round(x[1::4]) / 2  # at most 8 colours: the loop runs out at k = 5 for some
    elif case == "tiny sets":
        x = x[:, :3]  # fewer colours than centres for k = 5
    elif case == "float32":
        x = x.astype(np.float32)
    state = np.random.default_rng(7).bit_generator.state
    for k in (1, 2, 3, 5):
        ref = _loop_assignments(x.astype(np.float64), k, state)
        assert np.array_equal(initial_assignments(x, k, state), ref), k


def test_initial_assignments_refuse_what_the_loop_refuses():
    x = np.random.default_rng(0).random((4, 50, 3))
    x[2, 5] = np.inf
    state = np.random.default_rng(0).bit_generator.state
    with pytest.raises(ValueError) as loop:
        _loop_assignments(x, 3, state)
    with pytest.raises(ValueError) as ours:
        initial_assignments(x, 3, state)
    assert str(ours.value) == str(loop.value)


def test_grouped_em_fits_each_group_as_alone():
    """Foreground and background sets in one EM: each group's fit is what fitting it alone gives
    (the same operations per set), also for a group that cannot join (another subsample size)."""
    rng = np.random.default_rng(0)
    groups = [torch.as_tensor(rng.random((6, n, 3))) for n in (1500, 2400, 700)]
    together = fit_colour_model_groups(groups, seed=3)
    for g, fit in zip(groups, together):
        alone = fit_colour_models(g, seed=3)
        for key in ("weights", "means", "covariances"):
            assert torch.equal(fit[key], alone[key]), key
        np.testing.assert_array_equal(fit["history"], alone["history"])
    # a float32 group is not joined to float64 ones: it gets its own fit, in float32
    mixed = groups[:1] + [groups[1].float()]
    for g, fit in zip(mixed, fit_colour_model_groups(mixed, seed=3)):
        alone = fit_colour_models(g, seed=3)
        assert fit["means"].dtype == g.dtype
        assert all(torch.equal(fit[key], alone[key]) for key in ("weights", "means", "covariances"))
    assert fit_colour_model_groups([]) == []
    with pytest.raises(ValueError, match="NaN"):
        fit_colour_model_groups([groups[0], torch.full((2, 10, 3), float("nan"), dtype=torch.float64)])
