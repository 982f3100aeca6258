import numpy as np
import pytest
import torch

import convvis


def test_show_images_grid_and_titles():
    imgs = [np.random.rand(8, 8, 3), np.random.rand(8, 8), torch.rand(8, 8)]
    fig = convvis.show_images(imgs, titles=["a", "b", "c"], ncols=2)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 3
    assert [ax.get_title() for ax in shown] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        convvis.show_images(imgs[:2], titles=["a"])
    with pytest.raises(ValueError, match="channels-first"):
        convvis.show_images([np.zeros((3, 8, 8))])


def test_overlay_checks_shapes():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    convvis.overlay(ax, np.random.rand(8, 8, 3), np.random.rand(8, 8))
    assert len(ax.images) == 2
    with pytest.raises(ValueError, match="does not match"):
        convvis.overlay(ax, np.random.rand(8, 8, 3), np.random.rand(4, 4))
    plt.close(fig)


def test_prediction_title():
    assert convvis.prediction_title("tabby", 12.345, 0.5) == "tabby\nS=12.3  p=0.50"
    assert len(convvis.prediction_title("x" * 40, width=10).splitlines()[0]) == 10


def test_signed_to_rgb_maps_zero_to_grey_and_sign_to_brightness():
    w = torch.zeros(3, 4, 4)
    w[0, 0, 0], w[1, 0, 0] = 1.0, -1.0
    rgb = convvis.signed_to_rgb(w, percentile=100)
    assert rgb.shape == (4, 4, 3)
    np.testing.assert_allclose(rgb[1, 1], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(rgb[0, 0], [1.0, 0.0, 0.5])
    with pytest.raises(ValueError, match=r"\(3,H,W\)"):
        convvis.signed_to_rgb(np.zeros((4, 4)))


def test_stretch_maps_percentiles_to_the_unit_interval():
    x = np.linspace(0.4, 0.6, 300).reshape(10, 10, 3)
    y = convvis.stretch(x, 0, 100)
    assert y.min() == 0 and y.max() == pytest.approx(1)
    assert convvis.stretch(np.stack([x, x])).shape == (2, 10, 10, 3)
    assert convvis.stretch(np.full((4, 4, 3), 0.5)).max() == 0
