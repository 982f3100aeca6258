"""At most one host read per call on the hot paths (issue #23, item 3).

Reading a value of a device tensor on the host (``bool(t)``, ``t.item()``, ``t.tolist()``,
``t.cpu()``, ...) waits until the device has finished everything queued before it. These tests
count such reads with :func:`convvis.diagnostics.count_host_reads`, which patches ``torch.Tensor``;
on CPU tensors it counts the same calls, so they run anywhere.
"""

import pytest
import torch
from torch import nn

import convvis
from convvis.common import frozen_parameters
from convvis.diagnostics import count_host_reads


def reads(fn) -> list[str]:
    with count_host_reads() as counted:
        fn()
    return counted


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


TARGETS = [None, 3, "list", "tensor"]


def _target(kind):
    return {"list": [1, 2], "tensor": torch.tensor([4, 2])}.get(kind, kind)


def test_the_counter_counts_each_kind_of_read():
    t = torch.arange(4.0)
    assert reads(lambda: (bool(t.any()), t.sum().item(), t.tolist(), float(t[0]), int(t[1]), t.numpy())) == [
        "__bool__", "item", "tolist", "__float__", "__int__", "numpy"]
    assert reads(lambda: t.cpu().numpy()) == ["cpu"]  # one read: the copy is on the host
    assert reads(lambda: t + 1) == []


@pytest.mark.parametrize("kind", TARGETS)
def test_a_saliency_map_reads_the_device_once(kind):
    model, x = tiny(), torch.rand(2, 3, 16, 16)
    for fn in (convvis.saliency_map, convvis.input_gradient, convvis.class_score):
        assert len(reads(lambda fn=fn: fn(model, x, _target(kind)))) <= 1, fn.__name__


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_a_deletion_chunk_reads_nothing_and_a_curve_twice(mode):
    model, x = tiny(), torch.rand(2, 3, 16, 16)
    sal = convvis.saliency_map(model, x)
    protocol = convvis.Protocol("test", steps=3)  # 4 points per image: 8 (image, step) pairs
    one_chunk = reads(lambda: convvis.perturbation_curve(model, x, sal, None, mode, protocol, chunk=8))
    four_chunks = reads(lambda: convvis.perturbation_curve(model, x, sal, None, mode, protocol, chunk=2))
    # the checks before the first chunk, and the finished curve
    assert len(one_chunk) <= 2 and len(four_chunks) == len(one_chunk)


@pytest.mark.parametrize("preset", ["paper", "legible"])
def test_a_class_model_step_reads_nothing(preset):
    model = tiny()
    run = lambda steps: reads(lambda: convvis.visualise(model, [1, 2], preset=preset, steps=steps,  # noqa: E731
                                                        size=48, progress=False))
    one, three = run(1), run(3)
    assert len(three) == len(one) <= 2  # the history and the targets, once, after the last step


def test_checks_still_fail_with_one_read():
    model, x = tiny(), torch.rand(2, 3, 16, 16)
    y = x.clone()
    y[1, 0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="1 NaN and 0 infinite"):
        convvis.saliency_map(model, y, torch.tensor([1, 99]))  # the image is reported first
    with pytest.raises(IndexError, match="target class 99 is out of range: the model has 10 classes"):
        convvis.saliency_map(model, x, torch.tensor([1, 99]))
    with pytest.raises(IndexError, match="target class -1 is out of range"):
        convvis.class_score(model, x, torch.tensor([-1]))
    with pytest.raises(ValueError, match="softmax"):
        convvis.saliency_map(nn.Sequential(model, nn.Softmax(1)).eval(), x, torch.tensor([1, 2]))
    sal = convvis.saliency_map(model, x)
    with pytest.raises(ValueError, match="NaN"):
        convvis.deletion_auc(model, y, sal)
    bad = sal.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="saliency contains NaN or infinite"):
        convvis.deletion_auc(model, x, bad)
    with pytest.raises(ValueError, match="saliency must have shape"):
        convvis.deletion_auc(model, x, sal[:1])
    with pytest.raises(ValueError, match="softmax"):
        convvis.deletion_auc(nn.Sequential(model, nn.Softmax(1)).eval(), x, sal)


def test_frozen_parameters_leaves_frozen_weights_alone_and_restores_the_rest():
    model = tiny()
    model[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    switched = []
    original = torch.Tensor.requires_grad_

    def spy(self, flag=True):
        switched.append(flag)
        return original(self, flag)

    torch.Tensor.requires_grad_ = spy
    try:
        with pytest.raises(RuntimeError, match="boom"), frozen_parameters(model):
            assert not any(p.requires_grad for p in model.parameters())
            raise RuntimeError("boom")
    finally:
        torch.Tensor.requires_grad_ = original
    assert [p.requires_grad for p in model.parameters()] == flags
    assert switched == [False] * (len(flags) - 1) + [True] * (len(flags) - 1)  # weight 0 untouched
    for p in model.parameters():
        p.requires_grad_(False)
    switched.clear()
    torch.Tensor.requires_grad_ = spy
    try:
        with frozen_parameters(model):
            pass
    finally:
        torch.Tensor.requires_grad_ = original
    assert switched == []  # a frozen model (as load_model returns it) is not touched at all


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_a_curve_with_its_target_given_runs_only_its_own_passes(mode):
    """The curve's passes include the unperturbed image, so a given target needs no pass of its own:
    on a GPU at small batches that pass is a whole forward's host work. target=None needs the
    images' own scores, one pass more."""
    model, x = tiny(), torch.rand(2, 3, 16, 16)
    sal = convvis.saliency_map(model, x)
    protocol = convvis.Protocol("test", steps=3)  # 4 points per image: 8 (image, step) pairs
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    given = convvis.perturbation_curve(model, x, sal, [1, 2], mode, protocol, chunk=3)
    assert calls == [3, 3, 2]
    calls.clear()
    top1 = convvis.perturbation_curve(model, x, sal, None, mode, protocol, chunk=3)
    assert calls == [2, 3, 3, 2]
    with torch.no_grad():
        t = model(x).argmax(1)
    # both ways, the same chunks: the same curve for the same classes
    assert torch.equal(top1, convvis.perturbation_curve(model, x, sal, t, mode, protocol, chunk=3))
    assert given.shape == (2, 4)
