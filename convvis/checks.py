"""Checkers for the book's exercises: run a student's function on small fixed inputs and say what is wrong.

Each ``check_*`` takes the student's function, runs it on tiny deterministic problems whose
answers are known, and either prints how many checks passed or raises :class:`CheckFailed` with
a message that names the mistake (a shape, a sign, a sum where the paper takes a maximum, a
softmax where it uses the raw score, hooks or gradient flags left behind), not only that there is
one. The reference answers come from :mod:`convvis` itself, which the tests check independently.

A solution must do the work itself: while the student's function runs, the checker watches which
Python functions are entered, and fails if convvis's own implementation of that exercise is among
them (:func:`_library_solutions` lists them), however it was imported. The building blocks stay
allowed: ``torch.autograd``, NumPy, PyMaxflow, and this module's fixtures.

=============================  ====================================  ==========
checker                        the student's function                chapter
=============================  ====================================  ==========
:func:`check_class_model_step` ``step(model, image, target, lr, lam)``  2
:func:`check_saliency`         ``saliency(model, image, target)``       3
:func:`check_seeds`            ``seeds(saliency, fg_quantile, bg_quantile)``  4
:func:`check_graph_cut`        ``cut(cost_fg, cost_bg, weights, fg_seeds, bg_seeds)``  4
:func:`check_relu_rule`        ``relu_backward(x, grad, rule)``          5
=============================  ====================================  ==========
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import CodeType

import numpy as np
import torch
from torch import nn

from . import common, deconvnet, gradients, saliency, segmentation
from .segmentation import graph_cut, graph_cut_energy, pairwise_weights, seeds_from_saliency

__all__ = [
    "CheckFailed",
    "check_saliency",
    "check_class_model_step",
    "check_seeds",
    "check_graph_cut",
    "check_relu_rule",
    "tiny_model",
]


class CheckFailed(AssertionError):
    """A student's function gave a wrong answer; the message says which and, where it can, why."""


def _library_solutions(exercise: str) -> dict[CodeType, str]:
    """Code objects of convvis's own answer to ``exercise`` (and the helpers doing its core) -> name.

    The one table to update when these functions move between modules.
    """
    # common.score_gradient is the one recipe behind every gradient of the package (input_gradient,
    # rule_gradient, smoothgrad, ...): entering it means the library took the gradient
    table = {
        "saliency": [saliency.saliency_map, saliency.reduce_channels, gradients.input_gradient,
                     common.score_gradient],
        "class_model_step": [gradients.input_gradient, common.score_gradient],
        "seeds": [segmentation.seeds_from_saliency, segmentation._extreme],
        "graph_cut": [segmentation.graph_cut],
        "relu_rule": [deconvnet.relu_backward, deconvnet._Rectify.backward],
    }
    return {f.__code__: f"{f.__module__}.{f.__qualname__}" for f in table[exercise]}


def _run(exercise: str, fn: Callable, *args):
    """``fn(*args)``, failing if it enters convvis's own implementation of ``exercise``.

    A profile function (not a patched module attribute, which ``from convvis... import`` would
    escape) records every Python call; it is removed in ``finally``, and any profiler that was
    active before is put back. Autograd runs CPU backward functions on the calling thread, so
    they are seen too.
    """
    forbidden, entered = _library_solutions(exercise), []

    def profile(frame, event, arg):
        if event == "call" and not entered and frame.f_code in forbidden:
            entered.append(forbidden[frame.f_code])

    def handed_off():
        return CheckFailed(f"your function calls {entered[0]}, convvis's own answer to this exercise: "
                           "the exercise is to write it yourself (torch.autograd, NumPy and PyMaxflow "
                           "are fine to use)")

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        out = fn(*args)
    except Exception as e:
        if entered:
            raise handed_off() from e
        raise
    finally:
        sys.setprofile(previous)
    if entered:
        raise handed_off()
    return out


def tiny_model(seed: int = 0) -> nn.Module:
    """A small eval-mode convnet with fixed random weights: (N,3,8,8) images -> (N,5) scores."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 5),
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return model.eval()


def _image(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64)


def _grad(model, image, target, prob=False) -> torch.Tensor:
    """dS/dI (3,H,W) of the score, or of the softmax (``prob=True``) or log-softmax (``"log"``)."""
    x = image.detach().clone().requires_grad_(True)
    out = model(x)
    if prob == "log":
        score = out.log_softmax(1)[0, target]
    else:
        score = out.softmax(1)[0, target] if prob else out[0, target]
    (g,) = torch.autograd.grad(score, x)
    return g[0]


def _state(model: nn.Module) -> dict:
    """What a function must leave as it found it: flags, mode, hooks, .grad, the weights."""
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())
    return {
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": hooks,
        "grads": [p.grad is not None for p in model.parameters()],
        "weights": [p.detach().clone() for p in model.parameters()],
    }


def _same_state(before: dict, model: nn.Module, name: str) -> None:
    after = _state(model)
    if after["hooks"] != before["hooks"]:
        raise CheckFailed(f"{name} left {after['hooks'] - before['hooks']} hook(s) on the model: "
                          "remove them (handle.remove()), ideally in a `finally:` block")
    if after["requires_grad"] != before["requires_grad"]:
        raise CheckFailed(f"{name} changed the parameters' requires_grad flags and did not restore them")
    if after["training"] != before["training"]:
        raise CheckFailed(f"{name} switched the model between train and eval mode")
    if after["grads"] != before["grads"]:
        raise CheckFailed(f"{name} accumulated .grad on the model's parameters: differentiate with respect "
                          "to the image only (torch.autograd.grad(score, image))")
    if any(not torch.equal(a, b) for a, b in zip(before["weights"], after["weights"])):
        raise CheckFailed(f"{name} changed the model's weights")


def _close(a, b) -> bool:
    return tuple(a.shape) == tuple(b.shape) and torch.allclose(a, b, rtol=1e-5, atol=1e-8)


def _passed(name: str, n: int) -> None:
    print(f"\N{CHECK MARK} {name}: all {n} checks passed")


def _as_tensor(out, name: str) -> torch.Tensor:
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if not isinstance(out, torch.Tensor):
        raise CheckFailed(f"{name} returned {type(out).__name__}; expected a tensor")
    return out.detach().to(torch.float64).cpu()


# ---- chapter 3: the saliency map ------------------------------------------------------------------


def check_saliency(fn: Callable) -> None:
    """``fn(model, image, target) -> (H,W)``: the paper's map max_c |dS_c/dI| for one (1,3,H,W) image.

    Run on :func:`tiny_model` (float64) and three classes.
    """
    model, image = tiny_model(), _image()
    n = 0
    for target in (0, 2, 4):
        before, img0 = _state(model), image.clone()
        out = _as_tensor(_run("saliency", fn, model, image, target), "your saliency function")
        _same_state(before, model, "your saliency function")
        if not torch.equal(image, img0):
            raise CheckFailed("your saliency function modified the input image in place")
        g = _grad(model, image, target)  # (3,H,W)
        want = g.abs().amax(0)
        if out.dim() == 4 and out.shape[0] == 1:
            out = out[0]
        if out.dim() == 3 and out.shape[0] == 1:
            out = out[0]
        if out.shape == g.shape:
            raise CheckFailed(f"the map has shape {tuple(out.shape)}, one value per colour channel; the "
                              "paper reduces the channels to one value per pixel: max over c of |w|")
        if out.shape in (g.shape[:2], g.shape[::2]) and out.shape != want.shape:  # (3,H) or (3,W)
            raise CheckFailed(f"the map has shape {tuple(out.shape)}: you reduced over a spatial axis; the "
                              "channels are dim 0 of the (3,H,W) gradient (dim 1 of the (1,3,H,W) batch)")
        if out.shape != want.shape:
            raise CheckFailed(f"the map has shape {tuple(out.shape)}; expected {tuple(want.shape)} (H,W)")
        if _close(out, want):
            n += 1
            continue
        if _close(out, g.abs().sum(0)):
            raise CheckFailed("you summed |w| over the colour channels; the paper takes the maximum "
                              "(max over c of |w_c|)")
        if _close(out, g.sum(0).abs()) or _close(out, g.sum(0)):
            raise CheckFailed("you summed the signed gradient over the channels, where opposite signs "
                              "cancel; the paper takes the maximum of the absolute values, max_c |w_c|")
        if any(_close(out, m) for m in (g.abs().mean(0), g.mean(0).abs(), g.mean(0))):
            raise CheckFailed("you averaged over the colour channels; the paper takes the maximum of the "
                              "absolute values, max_c |w_c|")
        if _close(out, g.amax(0).abs()):
            raise CheckFailed("you took the absolute value after the maximum: |max_c w_c| misses a large "
                              "negative derivative; the paper takes max_c |w_c|, abs first")
        if _close(out, want / want.max()) or _close(out, (want - want.min()) / (want.max() - want.min())):
            raise CheckFailed("the map is rescaled to [0, 1]; return max_c |dS_c/dI| in the gradient's own "
                              "units (rescale only to display it)")
        if _close(out, want**2) or _close(out, (g**2).sum(0)):
            raise CheckFailed("you squared the gradient; the paper's map is max_c |w_c|")
        if _close(out, (g * image[0]).abs().amax(0)) or _close(out, (g * image[0]).abs().sum(0)):
            raise CheckFailed("you multiplied the gradient by the image (gradient x input); the paper's map "
                              "is the gradient alone, max_c |w_c|")
        if _close(out, g.amax(0)) or (out < 0).any():
            raise CheckFailed("the map should be max_c |w|: take the absolute value of the gradient before "
                              "the maximum (a negative derivative is as informative as a positive one)")
        gp = _grad(model, image, target, prob=True)
        if _close(out, gp.abs().amax(0)):
            raise CheckFailed("you differentiated the softmax probability; the paper differentiates the "
                              "unnormalised class score S_c (the logit), which does not depend on the "
                              "other classes")
        gl = _grad(model, image, target, prob="log")
        if _close(out, gl.abs().amax(0)):
            raise CheckFailed("you differentiated the log-softmax (the log-probability, or the cross-entropy "
                              "loss); the paper differentiates the unnormalised class score S_c (the "
                              "logit), which does not depend on the other classes")
        others = [t for t in range(5) if t != target]
        if any(_close(out, _grad(model, image, t).abs().amax(0)) for t in others):
            raise CheckFailed(f"the map is the one of another class than target={target}: select the "
                              "target's score, out[0, target]")
        raise CheckFailed(f"the map differs from max_c |dS_c/dI| for target={target} "
                          f"(max abs difference {(out - want).abs().max():.3g})")
    _passed("check_saliency", n)


# ---- chapter 2: one class-model step --------------------------------------------------------------


def check_class_model_step(fn: Callable) -> None:
    """``fn(model, image, target, lr, lam) -> new image``: one gradient *ascent* step on the paper's
    objective S_c(I) - lam ||I||^2, i.e. I + lr (dS_c/dI - 2 lam I), for a (1,3,H,W) image.
    """
    model = tiny_model()
    n = 0
    for seed, target, lr, lam in ((1, 0, 0.5, 0.1), (2, 3, 0.1, 0.5), (3, 1, 1.0, 0.0)):
        image = _image(seed)
        before, img0 = _state(model), image.clone()
        out = _as_tensor(_run("class_model_step", fn, model, image, target, lr, lam), "your step")
        _same_state(before, model, "your step")
        if not torch.equal(image, img0):
            raise CheckFailed("your step modified the input image in place: return a new tensor")
        if out.shape != image.shape:
            raise CheckFailed(f"the new image has shape {tuple(out.shape)}; expected {tuple(image.shape)}")
        g = _grad(model, image, target)[None]
        want = image + lr * (g - 2 * lam * image)
        if _close(out, want):
            n += 1
            continue
        if _close(out, image - lr * (g - 2 * lam * image)) or _close(out, image - lr * (g + 2 * lam * image)):
            raise CheckFailed("the step goes downhill: the paper *maximises* S_c(I) - lam ||I||^2, so add "
                              "lr times its gradient")
        if lam and _close(out, image + lr * g):
            raise CheckFailed("the L2 regulariser is missing: the objective is S_c(I) - lam ||I||^2")
        if lam and _close(out, image + lr * (g - lam * image)):
            raise CheckFailed("the gradient of lam ||I||^2 is 2 lam I, not lam I")
        if lam and _close(out, image + lr * (g + 2 * lam * image)):
            raise CheckFailed("the regulariser has the wrong sign: it *penalises* the norm, "
                              "- 2 lam I in the gradient")
        gp = _grad(model, image, target, prob=True)[None]
        if _close(out, image + lr * (gp - 2 * lam * image)):
            raise CheckFailed("you ascended the softmax probability; the paper's objective uses the "
                              "unnormalised score S_c (see chapter 2 for why)")
        raise CheckFailed(f"the new image differs from I + lr (dS_c/dI - 2 lam I) for target={target}, "
                          f"lr={lr}, lam={lam} (max abs difference {(out - want).abs().max():.3g})")
    _passed("check_class_model_step", n)


# ---- chapter 4: seeds and the graph cut -----------------------------------------------------------


def check_seeds(fn: Callable) -> None:
    """``fn(saliency, fg_quantile, bg_quantile) -> (fg, bg)``: (H,W) bool masks, fg the pixels above
    the map's ``fg_quantile`` quantile (the top 5 % for 0.95), bg those below ``bg_quantile``.
    """
    rng = np.random.default_rng(0)
    n = 0
    for fq, bq in ((0.95, 0.30), (0.90, 0.20), (0.80, 0.50)):
        # like a real map: non-negative, skewed, in gradient units far below 1, so that a threshold
        # on the values themselves (or on a percentage) selects plainly wrong sets
        sal = rng.exponential(0.02, (20, 30)) ** 2
        sal0 = sal.copy()
        out = _run("seeds", fn, sal, fq, bq)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise CheckFailed("return a pair (fg, bg) of boolean masks")
        fg, bg = (np.asarray(m) for m in out)
        if not np.array_equal(sal, sal0):
            raise CheckFailed("your function modified the saliency map in place")
        if fg.ndim == 2 and fg.shape[0] == 2 and np.issubdtype(fg.dtype, np.integer):
            raise CheckFailed("you returned pixel indices (np.nonzero / np.where); return (H,W) boolean "
                              "masks")
        if fg.shape != sal.shape or bg.shape != sal.shape:
            raise CheckFailed(f"masks have shapes {fg.shape}, {bg.shape}; expected {sal.shape}")
        if fg.dtype != bool or bg.dtype != bool:
            raise CheckFailed(f"masks must be boolean arrays, got {fg.dtype} and {bg.dtype}")
        want_fg, want_bg = seeds_from_saliency(sal, fq, bq)
        if np.array_equal(fg, sal > fq) or np.array_equal(bg, sal < bq):
            raise CheckFailed(f"you compared the saliency values with the quantile level itself "
                              f"(saliency > {fq}); the seeds are defined by the map's quantiles: "
                              f"np.quantile(saliency, {fq}) is the value above which the top "
                              f"{1 - fq:.0%} of the pixels lie")
        if np.array_equal(fg, sal > np.quantile(sal, fq / 100)) or np.array_equal(
                bg, sal < np.quantile(sal, bq / 100)):
            raise CheckFailed(f"np.percentile takes a percentage, 0 to 100: np.percentile(saliency, {fq}) is "
                              f"the {fq} % point, not the {fq:.0%} one; use np.quantile(saliency, {fq}) "
                              f"or np.percentile(saliency, {100 * fq:g})")
        if np.array_equal(fg, want_bg) or np.array_equal(bg, want_fg) or sal[fg].mean() < sal[bg].mean():
            raise CheckFailed("foreground and background are swapped: the foreground seeds are the *most* "
                              "salient pixels")
        if abs(fg.mean() - fq) < 0.02:
            raise CheckFailed(f"{fg.mean():.0%} of the pixels are foreground seeds: the foreground is the "
                              f"pixels *above* the {fq:.0%} quantile, i.e. the top {1 - fq:.0%}")
        if abs(bg.mean() - (1 - bq)) < 0.02 and bq != 0.5:
            raise CheckFailed(f"{bg.mean():.0%} of the pixels are background seeds: the background is the "
                              f"pixels *below* the {bq:.0%} quantile")
        if (fg & bg).any():
            raise CheckFailed("some pixels are both foreground and background seeds")
        if not np.array_equal(fg, want_fg):
            raise CheckFailed(f"the foreground seeds differ from the top {1 - fq:.0%} of the map "
                              f"({int((fg != want_fg).sum())} pixels differ)")
        if not np.array_equal(bg, want_bg):
            raise CheckFailed(f"the background seeds differ from the bottom {bq:.0%} of the map "
                              f"({int((bg != want_bg).sum())} pixels differ)")
        n += 1
    _passed("check_seeds", n)


def check_graph_cut(fn: Callable) -> None:
    """``fn(cost_fg, cost_bg, weights, fg_seeds, bg_seeds) -> (H,W) bool``, True = foreground: the
    labelling of minimum energy sum_p U_p(L_p) + sum_{p~q} w_pq [L_p != L_q] with the seeds as hard
    constraints; ``weights`` as :func:`convvis.segmentation.pairwise_weights` returns them.
    """
    rng = np.random.default_rng(3)
    n = 0
    for gamma in (0.5, 2.0, 8.0):
        h, w = 10, 12
        cost_fg, cost_bg = rng.random((h, w)) * 3, rng.random((h, w)) * 3
        weights, _ = pairwise_weights(rng.random((h, w, 3)), gamma)
        r = rng.random((h, w))
        fg, bg = r > 0.9, r < 0.1
        args = (cost_fg.copy(), cost_bg.copy(), [x.copy() for x in weights], fg.copy(), bg.copy())
        mask = np.asarray(_run("graph_cut", fn, *args))
        if mask.shape != (h, w):
            raise CheckFailed(f"the mask has shape {mask.shape}; expected {(h, w)}")
        mask = mask.astype(bool)
        best = graph_cut(cost_fg, cost_bg, weights, fg, bg)
        e = graph_cut_energy(mask, cost_fg, cost_bg, weights)
        e_best = graph_cut_energy(best, cost_fg, cost_bg, weights)
        if np.array_equal(~mask, best) or (mask[bg].all() and not mask[fg].any()):
            raise CheckFailed("the labels are inverted: True must mean foreground (in PyMaxflow, "
                              "get_grid_segments is True on the sink side, so the sink capacity is the "
                              "cost of labelling a pixel background)")
        if not mask[fg].all() or mask[bg].any():
            raise CheckFailed(f"hard seeds not respected: {int((~mask[fg]).sum())} foreground seed(s) "
                              f"labelled background, {int(mask[bg].sum())} background seed(s) foreground")
        if e > e_best + 1e-6 * max(1.0, abs(e_best)):
            e_unary = graph_cut_energy(mask, cost_fg, cost_bg, [0 * x for x in weights])
            unary_only = np.where(fg, True, np.where(bg, False, cost_fg < cost_bg))
            if np.array_equal(mask, unary_only):
                raise CheckFailed("the mask ignores the pairwise term: each pixel takes its cheaper unary "
                                  "cost; add the neighbour edges with the given weights")
            raise CheckFailed(f"not a minimum: your labelling has energy {e:.4f}, the minimum is "
                              f"{e_best:.4f} (unary part {e_unary:.4f}); check which terminal pays which "
                              "cost and that all four neighbour directions are added, symmetrically")
        n += 1
    _passed("check_graph_cut", n)


# ---- chapter 5: the rectifier's backward rules ------------------------------------------------


def check_relu_rule(fn: Callable) -> None:
    """``fn(x, grad, rule) -> R_n``: the signal a ReLU passes backwards, for rule in
    "gradient" (grad * 1(x > 0)), "deconvnet" (grad * 1(grad > 0)), "guided" (both gates).
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g)
    x[x.abs() < 0.3] = 0.0  # exact zeros, as after an earlier rectifier: 1(x > 0) and 1(x >= 0) differ
    grad = torch.randn(2, 3, 4, 4, generator=g)
    want = {"gradient": grad * (x > 0), "deconvnet": grad.clamp(min=0), "guided": grad.clamp(min=0) * (x > 0)}
    n = 0
    for rule, expected in want.items():
        x0, g0 = x.clone(), grad.clone()
        out = _as_tensor(_run("relu_rule", fn, x, grad, rule), f"your rule {rule!r}").float()
        if not (torch.equal(x, x0) and torch.equal(grad, g0)):
            raise CheckFailed(f"rule {rule!r} modified its inputs in place")
        if out.shape != expected.shape:
            raise CheckFailed(f"rule {rule!r} returned shape {tuple(out.shape)}; "
                              f"expected {tuple(expected.shape)}")
        if torch.equal(out, expected):
            n += 1
            continue
        names = [k for k, v in want.items() if torch.equal(out, v)]
        if names:
            raise CheckFailed(f"for rule {rule!r} you computed the {names[0]!r} rule")
        if torch.equal(out, x.clamp(min=0)) or torch.equal(out, x * (grad > 0)):
            raise CheckFailed(f"rule {rule!r} returned the forward signal; the backward rule passes "
                              "(parts of) the signal `grad` arriving from above")
        if torch.equal(out, grad * (x >= 0)) or torch.equal(out, grad.clamp(min=0) * (x >= 0)):
            raise CheckFailed(f"rule {rule!r}: the forward gate is 1(x > 0), strictly; a unit with input "
                              "exactly 0 passes nothing back")
        if any(torch.equal(out, gate.float()) for gate in (x > 0, grad > 0, (x > 0) & (grad > 0))):
            raise CheckFailed(f"rule {rule!r} returned the gate (0s and 1s); return the signal `grad` "
                              "multiplied by it")
        if torch.equal(out, grad):
            raise CheckFailed(f"rule {rule!r} passes `grad` through unchanged; every rule gates it")
        if torch.equal(out, grad * (grad > 0) * (x < 0)) or torch.equal(out, grad * (x < 0)):
            raise CheckFailed(f"rule {rule!r}: the gate is inverted; a ReLU passes where x > 0")
        raise CheckFailed(f"rule {rule!r} differs from the expected signal at "
                          f"{int((out != expected).sum())} of {expected.numel()} units")
    _passed("check_relu_rule", n)
