import numpy as np
import pytest
import torch
from torch import nn

import convvis
from convvis.common import resolve_targets
from convvis.gradients import (
    class_score,
    first_region_boundary,
    input_gradient,
    rectifier_states,
    taylor_curve,
)


def linear_classifier():
    """S(I) = W flatten(I) + b with hand-set weights: 3 classes over a (3,2,2) image."""
    lin = nn.Linear(12, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(36, dtype=torch.float32).view(3, 12) / 10 - 1.5)
        lin.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    return nn.Sequential(nn.Flatten(), lin).eval()


def one_layer_relu_net():
    """S = B relu(A x + a) + b on a 2-pixel, 1-channel image (shape (1,1,1,2))."""
    first, second = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
        first.bias.copy_(torch.tensor([0.0, -10.0]))
        second.weight.copy_(torch.tensor([[1.0, 1.0], [2.0, -1.0]]))
        second.bias.zero_()
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), second).eval()


def smooth_net(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 5 * 5, 6), nn.Softplus()
    ).to(dtype).eval()


def test_linear_classifier_gradient_is_its_weight_row():
    model = linear_classifier()
    image = torch.randn(2, 3, 2, 2)
    for c in range(3):
        grad = input_gradient(model, image, c)
        expected = model[1].weight[c].view(3, 2, 2)
        assert torch.equal(grad[0], expected) and torch.equal(grad[1], expected)


def test_one_layer_relu_gradient_is_the_masked_weight():
    model = one_layer_relu_net()
    x = torch.tensor([3.0, 1.0]).view(1, 1, 1, 2)
    # pre-activations A x + a = (3 - 1, 6 + 1 - 10) = (2, -3): only the first unit is on
    # dS_0/dx = A^T (B_0 * [1, 0]) = A^T [1, 0] = [1, -1];  dS_1/dx = A^T [2, 0] = [2, -2]
    assert input_gradient(model, x, 0).flatten().tolist() == [1.0, -1.0]
    assert input_gradient(model, x, 1).flatten().tolist() == [2.0, -2.0]
    # move into the region where both units are on: x = (5, 1): (4, 1) -> dS_0/dx = A^T [1, 1] = [3, 0]
    both_on = torch.tensor([5.0, 1.0]).view(1, 1, 1, 2)
    assert input_gradient(model, both_on, 0).flatten().tolist() == [3.0, 0.0]


def test_autograd_matches_finite_differences_on_a_smooth_model():
    model = smooth_net()
    image = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    grad = input_gradient(model, image, 2)
    h = 1e-6
    fd = torch.zeros_like(image)
    for idx in np.ndindex(*image.shape):
        e = torch.zeros_like(image)
        e[idx] = h
        fd[idx] = (class_score(model, image + e, 2) - class_score(model, image - e, 2))[0] / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)


def test_batched_gradient_equals_one_at_a_time(net):
    image = convvis.load_images(["cat", "espresso", "baboon"], net)
    targets = [281, 967, 372]
    batched = input_gradient(net, image, targets)
    for i, t in enumerate(targets):
        alone = input_gradient(net, image[i : i + 1], t)
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-4, atol=1e-6)


def test_default_target_is_top1_and_score_is_the_logit(net):
    image = convvis.load_images(["cat", "espresso"], net)
    grad, score, target = input_gradient(net, image, return_score=True)
    with torch.no_grad():
        logits = net.model(image)
    assert torch.equal(target, logits.argmax(1))
    torch.testing.assert_close(score, logits.max(1).values)
    torch.testing.assert_close(class_score(net, image), score)
    assert grad.shape == image.shape and grad.dtype == image.dtype


def test_targets_are_validated():
    scores = torch.zeros(2, 5)
    scores[0, 3] = scores[1, 1] = 1
    assert resolve_targets(None, scores).tolist() == [3, 1]
    assert resolve_targets(4, scores).tolist() == [4, 4]
    assert resolve_targets([0, 2], scores).tolist() == [0, 2]
    assert resolve_targets(torch.tensor([2]), scores).tolist() == [2, 2]
    assert resolve_targets(np.int64(1), scores).tolist() == [1, 1]
    with pytest.raises(IndexError, match="class 5 is out of range: the model has 5 classes"):
        resolve_targets(5, scores)
    with pytest.raises(IndexError, match="-1"):
        resolve_targets([0, -1], scores)
    with pytest.raises(ValueError, match="3 targets for a batch of 2"):
        resolve_targets([0, 1, 2], scores)
    with pytest.raises(TypeError, match="integer"):
        resolve_targets([0.5, 1.0], scores)
    with pytest.raises(TypeError, match="bool"):
        resolve_targets(True, scores)


def test_bad_images_and_models():
    model = linear_classifier()
    with pytest.raises(ValueError, match=r"\(N,C,H,W\).*image\[None\]"):
        input_gradient(model, torch.zeros(3, 2, 2))
    with pytest.raises(TypeError, match="floating-point"):
        input_gradient(model, torch.zeros(1, 3, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        input_gradient(model, np.zeros((1, 3, 2, 2)))
    with pytest.raises(TypeError, match="nn.Module"):
        input_gradient("vgg16", torch.zeros(1, 3, 2, 2))
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        input_gradient(model, torch.zeros(1, 3, 2, 2))
    assert model.training  # and the mode was not changed behind the caller's back


def test_softmax_outputs_are_refused():
    model = nn.Sequential(linear_classifier(), nn.Softmax(dim=1)).eval()
    with pytest.raises(ValueError, match="softmax"):
        input_gradient(model, torch.randn(2, 3, 2, 2))


def test_model_and_image_come_back_unchanged():
    model = smooth_net(torch.float32)
    model[0].weight.requires_grad_(False)  # a mix of flags, all of which must survive
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    image = torch.randn(2, 3, 5, 5)
    before = image.clone()
    input_gradient(model, image, [0, 1])
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient accumulated
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(image, before) and not image.requires_grad and image.grad is None


def test_flags_restored_when_forward_raises():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            raise RuntimeError("boom")

    model = Broken().eval()
    with pytest.raises(RuntimeError, match="boom"):
        input_gradient(model, torch.zeros(1, 1, 2, 2))
    assert all(p.requires_grad for p in model.parameters())


def test_taylor_curve_is_exact_for_a_linear_model():
    model = linear_classifier().double()
    image = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    d = torch.randn(3, 2, 2, dtype=torch.float64)
    curve = taylor_curve(model, image, d, [1e-3, 1, 1e3], target=1)
    assert curve.slope == pytest.approx(float(model[1].weight[1].detach() @ (d / d.norm()).flatten()))
    np.testing.assert_allclose(curve.true, curve.linear, rtol=1e-12)
    np.testing.assert_allclose(curve.rel_error, 0, atol=1e-9)


def test_taylor_curve_breaks_at_the_relu_boundary():
    model = one_layer_relu_net().double()
    x = torch.tensor([3.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    d = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 2)
    # along d: unit 1's pre-activation is 2 + eps (stays on), unit 2's is -3 + 2 eps (switches on
    # at eps = 1.5). The first-order model of S_0 has slope [1, -1].d = 1 and is exact up to 1.5;
    # beyond, the true score gains unit 2's output, so the error is 2 eps - 3.
    curve = taylor_curve(model, x, d, [0.5, 1.4, 2.0, 3.0], target=0)
    assert curve.slope == 1.0
    np.testing.assert_allclose(curve.abs_error, [0.0, 0.0, 1.0, 3.0], atol=1e-12)


def test_the_american_spelling_normalize_still_works_and_warns():
    model = one_layer_relu_net().double()
    x = torch.tensor([3.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    d = torch.tensor([2.0, 0.0], dtype=torch.float64).view(1, 1, 2)
    for normalise in (True, False):
        want = taylor_curve(model, x, d, [0.5, 2.0], target=0, normalise=normalise)
        with pytest.warns(DeprecationWarning, match="normalise"):
            old = taylor_curve(model, x, d, [0.5, 2.0], target=0, normalize=normalise)
        np.testing.assert_array_equal(old.true, want.true)
        assert old.slope == want.slope
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="both"):
        taylor_curve(model, x, d, [0.5], target=0, normalise=False, normalize=False)
    want = first_region_boundary(model, x, d, 4.0, normalise=False, iters=8)
    with pytest.warns(DeprecationWarning, match="normalise"):
        assert first_region_boundary(model, x, d, 4.0, normalize=False, iters=8) == want


def test_rectifier_states_and_hook_removal():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3), nn.ReLU6(inplace=True), nn.Linear(3, 1)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 0.0]]))
        model[1].bias.zero_()
    (states,) = rectifier_states(model, torch.tensor([[-1.0, 2.0]]).view(1, 1, 1, 2))
    assert states.tolist() == [[0, 1, 0]]  # -1 -> off, 2 -> linear, -10 -> off
    (states,) = rectifier_states(model, torch.tensor([[1.0, 2.0]]).view(1, 1, 1, 2))
    assert states.tolist() == [[1, 1, 2]]  # 10 >= 6 -> saturated
    assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError, match="no nn.ReLU"):
        rectifier_states(linear_classifier(), torch.zeros(1, 3, 2, 2))


def test_rectifier_hooks_removed_when_forward_raises():
    model = nn.Sequential(nn.ReLU(), nn.Linear(3, 2)).eval()  # wrong input size -> raises
    with pytest.raises(RuntimeError):
        rectifier_states(model, torch.zeros(1, 1, 2, 2))
    assert not model[0]._forward_pre_hooks


def test_first_region_boundary_finds_the_hand_computed_switch():
    model = one_layer_relu_net().double()
    x = torch.tensor([3.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    d = torch.tensor([1.0, 0.0], dtype=torch.float64)
    lo, hi = first_region_boundary(model, x, d.view(1, 1, 2), max_eps=10.0)
    assert lo <= 1.5 <= hi and hi - lo < 1e-9  # unit 2: -3 + 2 eps = 0 at eps = 1.5
    with pytest.raises(ValueError, match="no rectifier unit changes state"):
        first_region_boundary(model, x, d.view(1, 1, 2), max_eps=1.0)
