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

Each checker is three pure pieces and a loop, so that the grader (:mod:`convvis.grade`) can use the
same pieces without running the student's code in its own process: :func:`fixture` (the inputs, as
plain data), :func:`reference` (the right answer and the named wrong ones, computed here) and
:func:`diagnose` (the message for an output, or ``None`` if it is right). Only two things are seen
while the function runs rather than in its output: that it left the model and its inputs as it
found them, and that it did not call convvis's own answer (:func:`kernel_problem`, :func:`_run`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
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
    "EXERCISES",
    "Fixture",
    "Returned",
    "fixture",
    "fixture_model",
    "arguments",
    "reference",
    "diagnose",
    "output_data",
    "kernel_snapshot",
    "kernel_problem",
    "watched_call",
    "handed_off",
]

# checker -> exercise key of fixture(), reference(), diagnose()
EXERCISES = {
    "check_saliency": "saliency",
    "check_class_model_step": "class_model_step",
    "check_seeds": "seeds",
    "check_graph_cut": "graph_cut",
    "check_relu_rule": "relu_rule",
}


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
    # this module's own answers (the references the grader compares with) are handed-off answers too
    own = [reference, _grad]
    return {f.__code__: f"{f.__module__}.{f.__qualname__}" for f in table[exercise] + own}


def watched_call(exercise: str, fn: Callable, *args) -> tuple:
    """``(output, entered, error)`` of ``fn(*args)``: ``entered`` names convvis's own implementation of
    ``exercise`` if the call entered it (else ``None``), ``error`` is the exception it raised (else
    ``None``, and then ``output`` is what it returned).

    A profile function (not a patched module attribute, which ``from convvis... import`` would
    escape) records every Python call; it is removed in ``finally``, and any profiler that was
    active before is put back. Autograd runs CPU backward functions on the calling thread, so
    they are seen too.
    """
    forbidden, entered = _library_solutions(exercise), []

    def profile(frame, event, arg):
        if event == "call" and not entered and frame.f_code in forbidden:
            entered.append(forbidden[frame.f_code])

    out, error = None, None
    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        out = fn(*args)
    except Exception as e:
        error = e
    finally:
        sys.setprofile(previous)
    return out, (entered[0] if entered else None), error


def handed_off(name: str) -> str:
    """The message for a function that entered ``name``, convvis's own answer to the exercise."""
    return (f"your function calls {name}, convvis's own answer to this exercise: the exercise is to write "
            "it yourself (torch.autograd, NumPy and PyMaxflow are fine to use)")


def _run(exercise: str, fn: Callable, *args):
    """``fn(*args)``, failing if it enters convvis's own implementation of ``exercise``."""
    out, entered, error = watched_call(exercise, fn, *args)
    if entered:
        raise CheckFailed(handed_off(entered)) from error
    if error is not None:
        raise error
    return out


def tiny_model(seed: int = 0) -> nn.Module:
    """A small eval-mode convnet with fixed random weights: (N,3,8,8) images -> (N,5) scores.

    The last layer is scaled down so that the scores stay within a few units of each other and the
    softmax is far from saturated: its gradient is then neither zero nor the score's gradient, so
    an answer of zeros and a softmax derivative cannot be told apart only by luck.
    """
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 5),
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
        model[-1].weight.mul_(0.1)
        model[-1].bias.mul_(0.1)
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


class Returned:
    """Stands for a returned object that is not data (not a tensor, array, tuple or list): its type."""

    def __init__(self, type_name: str):
        self.type_name = str(type_name)

    def __repr__(self) -> str:
        return f"Returned({self.type_name!r})"


def _type_name(out) -> str:
    return out.type_name if isinstance(out, Returned) else type(out).__name__


def output_data(out, _depth: int = 0):
    """A function's return value as plain data: detached CPU tensors, NumPy arrays, tuples or lists
    of them (one level), and :class:`Returned` for anything else. :func:`diagnose` takes this form;
    the grader rebuilds it from the ``.npz`` the sandbox writes."""
    if isinstance(out, torch.Tensor):
        t = out.detach().cpu().as_subclass(torch.Tensor)
        # a student's 2-byte float answer is widened to 4 bytes: NumPy's .npz cannot hold a bf16 array
        return t.float() if t.is_floating_point() and t.element_size() < 4 else t.clone()
    if isinstance(out, np.ndarray):
        return Returned("ndarray of objects") if out.dtype.hasobject else np.array(out)
    if type(out) in (tuple, list) and _depth == 0 and len(out) <= 8:
        return type(out)(output_data(o, 1) for o in out)
    if type(out) in (tuple, list):  # nested: as NumPy reads it (np.nonzero's tuple, a list of rows)
        try:
            a = np.asarray([o.detach().cpu().numpy() if isinstance(o, torch.Tensor) else o for o in out])
        except Exception:  # ragged, or objects NumPy cannot hold
            return Returned(type(out).__name__)
        return a if a.dtype == bool or np.issubdtype(a.dtype, np.number) else Returned(type(out).__name__)
    return Returned(type(out).__name__)


def _as_tensor(out, name: str) -> torch.Tensor:
    if isinstance(out, np.ndarray):
        if not (out.dtype == bool or np.issubdtype(out.dtype, np.number)) or np.iscomplexobj(out):
            raise CheckFailed(f"{name} returned an array of {out.dtype}; expected a tensor of real numbers")
        out = torch.from_numpy(out)
    if not isinstance(out, torch.Tensor):
        raise CheckFailed(f"{name} returned {_type_name(out)}; expected a tensor")
    if out.is_complex():
        raise CheckFailed(f"{name} returned complex values; expected real numbers")
    return out.detach().to(torch.float64).cpu()


# ---- degenerate answers: zeros, a constant, values that are not numbers, random values ------------


def _degenerate(values, want, what: str) -> None:
    """Raise a message saying what the answer *is* when it is all zeros, a constant or not finite.

    Run before any comparison with a named mistake, so that such an answer is never told it made
    one (the fixtures keep every named mistake away from these; a test holds them apart).
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    if v.size == 0:
        raise CheckFailed(f"{what} is empty")
    if not np.isfinite(v).all():
        raise CheckFailed(f"{what} contains NaN or infinite values ({int((~np.isfinite(v)).sum())} of "
                          f"{v.size})")
    if not v.any() and w.any():
        raise CheckFailed(f"{what} is all zeros (the expected values reach {np.abs(w).max():.3g})")
    if v.max() == v.min() and w.max() != w.min():
        raise CheckFailed(f"{what} is a constant: every value is {v.flat[0]:.4g}, where the expected "
                          f"values range from {w.min():.3g} to {w.max():.3g}")


# |correlation| below this: unrelated. For n independent values it has a standard deviation of about
# 1/sqrt(n): 0.125 for the smallest output here (an 8x8 map), so random values stay 4 of them away
_UNRELATED = 0.5


def _unrelated(values, want, what: str, expected: str) -> None:
    """Raise when ``values`` are uncorrelated with the right answer, as random values are."""
    v = np.asarray(values, dtype=np.float64).ravel()
    w = np.asarray(want, dtype=np.float64).ravel()
    if v.std() == 0 or w.std() == 0:
        return
    r = float(np.corrcoef(v, w)[0, 1])
    if abs(r) < _UNRELATED:
        raise CheckFailed(f"{what} is unrelated to {expected} (correlation {r:+.2f} with it), as random "
                          "values would be")


# ---- the fixtures: inputs as plain data --------------------------------------------------------------


@dataclass(frozen=True)
class Fixture:
    """The inputs of one exercise's checks, as plain data (NumPy arrays, numbers, strings).

    ``model`` holds :func:`tiny_model`'s weights (name -> array) for the exercises that take a
    model, else ``None``; ``cases`` one dict of argument name -> value per check, an argument that
    is a list of arrays (the graph cut's four weight maps) as a list.
    """

    exercise: str
    model: dict | None
    cases: list


def fixture(exercise: str) -> Fixture:
    """The deterministic inputs of ``exercise`` (a value of :data:`EXERCISES`)."""
    if exercise not in EXERCISES.values():
        raise ValueError(f"unknown exercise {exercise!r}; one of {sorted(EXERCISES.values())}")
    weights = {k: v.numpy().copy() for k, v in tiny_model().state_dict().items()}
    if exercise == "saliency":
        image = _image().numpy()
        return Fixture(exercise, weights, [{"image": image, "target": t} for t in (0, 2, 4)])
    if exercise == "class_model_step":
        return Fixture(exercise, weights, [
            {"image": _image(seed).numpy(), "target": t, "lr": lr, "lam": lam}
            for seed, t, lr, lam in ((1, 0, 0.5, 0.1), (2, 3, 0.1, 0.5), (3, 1, 1.0, 0.0))])
    if exercise == "seeds":
        rng = np.random.default_rng(0)
        # like a real map: non-negative and skewed, with values on both sides of the quantile levels,
        # so that a threshold on the values themselves (or on a percentage) selects sets that are
        # plainly wrong and neither empty nor everything
        return Fixture(exercise, None, [
            {"saliency": rng.exponential(0.3, (20, 30)) ** 2, "fg_quantile": fq, "bg_quantile": bq}
            for fq, bq in ((0.95, 0.30), (0.90, 0.20), (0.80, 0.50))])
    if exercise == "graph_cut":
        rng = np.random.default_rng(3)
        cases = []
        for gamma in (0.5, 2.0, 8.0):
            h, w = 10, 12
            cost_fg, cost_bg = rng.random((h, w)) * 3, rng.random((h, w)) * 3
            weights, _ = pairwise_weights(rng.random((h, w, 3)), gamma)
            r = rng.random((h, w))
            cases.append({"cost_fg": cost_fg, "cost_bg": cost_bg, "weights": [np.asarray(x) for x in weights],
                          "fg_seeds": r > 0.9, "bg_seeds": r < 0.1})
        return Fixture(exercise, None, cases)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g)
    x[x.abs() < 0.3] = 0.0  # exact zeros, as after an earlier rectifier: 1(x > 0) and 1(x >= 0) differ
    grad = torch.randn(2, 3, 4, 4, generator=g)
    return Fixture(exercise, None, [{"x": x.numpy(), "grad": grad.numpy(), "rule": rule}
                                    for rule in ("gradient", "deconvnet", "guided")])


def fixture_model(fix: Fixture) -> nn.Module | None:
    """:func:`tiny_model` carrying the fixture's weights, or ``None`` for an exercise without a model."""
    if fix.model is None:
        return None
    model = tiny_model()
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float64)) for k, v in fix.model.items()})
    return model.eval()


def arguments(fix: Fixture, case: dict, model: nn.Module | None) -> tuple:
    """Fresh argument objects for one call of the student's function (tensors where it takes them)."""
    c = {k: ([np.array(a) for a in v] if isinstance(v, list) else np.array(v) if isinstance(v, np.ndarray)
             else v) for k, v in case.items()}
    if fix.exercise == "saliency":
        return model, torch.from_numpy(c["image"]), int(c["target"])
    if fix.exercise == "class_model_step":
        return model, torch.from_numpy(c["image"]), int(c["target"]), float(c["lr"]), float(c["lam"])
    if fix.exercise == "seeds":
        return c["saliency"], float(c["fg_quantile"]), float(c["bg_quantile"])
    if fix.exercise == "graph_cut":
        return c["cost_fg"], c["cost_bg"], c["weights"], c["fg_seeds"], c["bg_seeds"]
    return torch.from_numpy(c["x"]), torch.from_numpy(c["grad"]), str(c["rule"])


def reference(fix: Fixture, case: dict, model: nn.Module | None = None) -> dict:
    """The right answer to one case and the named wrong ones it is compared with (convvis's own code)."""
    model = model if model is not None else fixture_model(fix)
    if fix.exercise in ("saliency", "class_model_step"):
        image, target = torch.from_numpy(np.array(case["image"])), int(case["target"])
        ref = {"g": _grad(model, image, target), "gp": _grad(model, image, target, prob=True)}
        if fix.exercise == "saliency":
            ref["gl"] = _grad(model, image, target, prob="log")
            ref["others"] = [_grad(model, image, t).abs().amax(0) for t in range(5) if t != target]
        return ref
    if fix.exercise == "seeds":
        want_fg, want_bg = seeds_from_saliency(case["saliency"], case["fg_quantile"], case["bg_quantile"])
        return {"fg": want_fg, "bg": want_bg}
    if fix.exercise == "graph_cut":
        costs = case["cost_fg"], case["cost_bg"], case["weights"]
        best = graph_cut(*costs, case["fg_seeds"], case["bg_seeds"])
        return {"best": best, "e_best": graph_cut_energy(best, *costs)}
    x, grad = torch.from_numpy(case["x"]), torch.from_numpy(case["grad"])
    return {"want": {"gradient": grad * (x > 0), "deconvnet": grad.clamp(min=0),
                     "guided": grad.clamp(min=0) * (x > 0)}}


def kernel_snapshot(exercise: str, model: nn.Module | None, args: tuple) -> dict:
    """What :func:`kernel_problem` compares after the call: the model's state and copies of the inputs."""
    copies = [a.clone() if isinstance(a, torch.Tensor) else np.array(a) if isinstance(a, np.ndarray)
              else [np.array(x) for x in a] if isinstance(a, list) else a for a in args]
    return {"model": _state(model) if model is not None else None, "args": copies}


_NAMES = {"saliency": "your saliency function", "class_model_step": "your step", "seeds": "your function",
          "graph_cut": "your graph cut", "relu_rule": "your rule"}


def kernel_problem(exercise: str, model: nn.Module | None, args: tuple, before: dict) -> str | None:
    """What only the running kernel can see: the model or the inputs left changed. A message, or None."""
    name = _NAMES[exercise]
    if model is not None:
        try:
            _same_state(before["model"], model, name)
        except CheckFailed as e:
            return str(e)
    changed = []
    for a, b in zip(args, before["args"]):
        if isinstance(a, torch.Tensor):
            changed.append(not (isinstance(b, torch.Tensor) and torch.equal(a, b)))
        elif isinstance(a, np.ndarray):
            changed.append(not np.array_equal(a, b))
        elif isinstance(a, list):
            changed.append(len(a) != len(b) or not all(np.array_equal(x, y) for x, y in zip(a, b)))
    if any(changed):
        what = {"saliency": "the input image", "class_model_step": "the input image",
                "seeds": "the saliency map", "graph_cut": "its inputs", "relu_rule": "its inputs"}[exercise]
        return f"{name} modified {what} in place" + (": return a new tensor" if exercise == "class_model_step"
                                                     else "")
    return None


def diagnose(exercise: str, case: dict, ref: dict, out) -> str | None:
    """The message for ``out`` (as :func:`output_data` gives it) on one case, or ``None`` if right.

    A pure function of the case, its :func:`reference` and the output: the in-notebook checkers and
    the grader both call it.
    """
    try:
        _DIAGNOSE[exercise](case, ref, out)
    except CheckFailed as e:
        return str(e)
    return None


def _check(checker: str, fn: Callable) -> None:
    """The in-notebook checker: each case in turn, in this kernel; the first problem raises."""
    exercise = EXERCISES[checker]
    fix = fixture(exercise)
    model = fixture_model(fix)
    for case in fix.cases:
        ref = reference(fix, case, model)
        args = arguments(fix, case, model)
        before = kernel_snapshot(exercise, model, args)
        out = output_data(_run(exercise, fn, *args))
        problem = kernel_problem(exercise, model, args, before)
        if problem is None:
            problem = diagnose(exercise, case, ref, out)
        if problem is not None:
            raise CheckFailed(problem)
    _passed(checker, len(fix.cases))


# ---- chapter 3: the saliency map ------------------------------------------------------------------


def check_saliency(fn: Callable) -> None:
    """``fn(model, image, target) -> (H,W)``: the paper's map max_c |dS_c/dI| for one (1,3,H,W) image.

    Run on :func:`tiny_model` (float64) and three classes.
    """
    _check("check_saliency", fn)


def _diagnose_saliency(case: dict, ref: dict, out) -> None:
    out = _as_tensor(out, "your saliency function")
    image, target, g = torch.from_numpy(np.array(case["image"])), int(case["target"]), ref["g"]  # g: (3,H,W)
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
        return
    _degenerate(out, want, "the map")
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
    if _close(out, g.amax(0)):
        raise CheckFailed("the map should be max_c |w|: take the absolute value of the gradient before "
                          "the maximum (a negative derivative is as informative as a positive one)")
    if _close(out, ref["gp"].abs().amax(0)):
        raise CheckFailed("you differentiated the softmax probability; the paper differentiates the "
                          "unnormalised class score S_c (the logit), which does not depend on the "
                          "other classes")
    if _close(out, ref["gl"].abs().amax(0)):
        raise CheckFailed("you differentiated the log-softmax (the log-probability, or the cross-entropy "
                          "loss); the paper differentiates the unnormalised class score S_c (the "
                          "logit), which does not depend on the other classes")
    if any(_close(out, m) for m in ref["others"]):
        raise CheckFailed(f"the map is the one of another class than target={target}: select the "
                          "target's score, out[0, target]")
    _unrelated(out, want, "the map", f"max_c |dS_c/dI| for target={target}")
    if (out < 0).any():
        raise CheckFailed("the map has negative values; max_c |w| cannot: take the absolute value of the "
                          "gradient before the maximum")
    raise CheckFailed(f"the map differs from max_c |dS_c/dI| for target={target} "
                      f"(max abs difference {(out - want).abs().max():.3g})")


# ---- chapter 2: one class-model step --------------------------------------------------------------


def check_class_model_step(fn: Callable) -> None:
    """``fn(model, image, target, lr, lam) -> new image``: one gradient *ascent* step on the paper's
    objective S_c(I) - lam ||I||^2, i.e. I + lr (dS_c/dI - 2 lam I), for a (1,3,H,W) image.
    """
    _check("check_class_model_step", fn)


def _diagnose_class_model_step(case: dict, ref: dict, out) -> None:
    out = _as_tensor(out, "your step")
    image = torch.from_numpy(np.array(case["image"]))
    target, lr, lam = int(case["target"]), float(case["lr"]), float(case["lam"])
    if out.shape != image.shape:
        raise CheckFailed(f"the new image has shape {tuple(out.shape)}; expected {tuple(image.shape)}")
    g = ref["g"][None]
    want = image + lr * (g - 2 * lam * image)
    if _close(out, want):
        return
    _degenerate(out, want, "the new image")
    if torch.equal(out, image):
        raise CheckFailed("the new image is the input image unchanged: no step was taken")
    if _close(out, lr * (g - 2 * lam * image)) or _close(out, g - 2 * lam * image):
        raise CheckFailed("you returned the update (the step) alone; return the new image, "
                          "I + lr (dS_c/dI - 2 lam I)")
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
    if _close(out, image + lr * (ref["gp"][None] - 2 * lam * image)):
        raise CheckFailed("you ascended the softmax probability; the paper's objective uses the "
                          "unnormalised score S_c (see chapter 2 for why)")
    _unrelated(out, want, "the new image", f"I + lr (dS_c/dI - 2 lam I) for target={target}")
    raise CheckFailed(f"the new image differs from I + lr (dS_c/dI - 2 lam I) for target={target}, "
                      f"lr={lr}, lam={lam} (max abs difference {(out - want).abs().max():.3g})")


# ---- chapter 4: seeds and the graph cut -----------------------------------------------------------


def check_seeds(fn: Callable) -> None:
    """``fn(saliency, fg_quantile, bg_quantile) -> (fg, bg)``: (H,W) bool masks, fg the pixels above
    the map's ``fg_quantile`` quantile (the top 5 % for 0.95), bg those below ``bg_quantile``.
    """
    _check("check_seeds", fn)


def _diagnose_seeds(case: dict, ref: dict, out) -> None:
    sal, fq, bq = np.asarray(case["saliency"]), float(case["fg_quantile"]), float(case["bg_quantile"])
    if not (isinstance(out, tuple) and len(out) == 2):
        shape = f" of shape {tuple(out.shape)}" if hasattr(out, "shape") else ""
        raise CheckFailed(f"return a pair (fg, bg) of boolean masks; you returned {_type_name(out)}{shape}")
    fg, bg = (np.asarray(m.numpy() if isinstance(m, torch.Tensor) else m) for m in out)
    if fg.dtype.hasobject or bg.dtype.hasobject:
        raise CheckFailed(f"return a pair (fg, bg) of boolean masks; you returned a pair of "
                          f"{_type_name(out[0])} and {_type_name(out[1])}")
    if fg.ndim == 2 and fg.shape[0] == 2 and np.issubdtype(fg.dtype, np.integer):
        raise CheckFailed("you returned pixel indices (np.nonzero / np.where); return (H,W) boolean "
                          "masks")
    if fg.shape != sal.shape or bg.shape != sal.shape:
        raise CheckFailed(f"masks have shapes {fg.shape}, {bg.shape}; expected {sal.shape}")
    want_fg, want_bg = ref["fg"], ref["bg"]
    for m, want, what in ((fg, want_fg, "the foreground mask"), (bg, want_bg, "the background mask")):
        if m.dtype != bool:
            _degenerate(m, want, what)
        elif not m.any() or m.all():
            part = f"top {1 - fq:.0%}" if m is fg else f"bottom {bq:.0%}"
            raise CheckFailed(f"{what} is {m.flat[0]} everywhere (a constant): it should select the "
                              f"{part} of the pixels")
    if fg.dtype != bool or bg.dtype != bool:
        for m, want, what in ((fg, want_fg, "the foreground mask"), (bg, want_bg, "the background mask")):
            if not np.isin(m, (0, 1)).all():
                _unrelated(m, want, what, "the expected seeds")
        raise CheckFailed(f"masks must be boolean arrays, got {fg.dtype} and {bg.dtype}")
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
    if np.array_equal(fg, want_bg) or np.array_equal(bg, want_fg):
        raise CheckFailed("foreground and background are swapped: the foreground seeds are the *most* "
                          "salient pixels")
    if not (np.array_equal(fg, want_fg) or np.array_equal(bg, want_bg)):
        # both masks wrong: random masks are uncorrelated with the right ones
        r_fg = np.corrcoef(fg.ravel(), want_fg.ravel())[0, 1] if fg.std() else 0.0
        r_bg = np.corrcoef(bg.ravel(), want_bg.ravel())[0, 1] if bg.std() else 0.0
        if max(abs(r_fg), abs(r_bg)) < _UNRELATED:
            raise CheckFailed(f"both masks are unrelated to the expected seeds (correlations {r_fg:+.2f} "
                              f"and {r_bg:+.2f}), as random masks would be")
    if sal[fg].mean() < sal[bg].mean():
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


def check_graph_cut(fn: Callable) -> None:
    """``fn(cost_fg, cost_bg, weights, fg_seeds, bg_seeds) -> (H,W) bool``, True = foreground: the
    labelling of minimum energy sum_p U_p(L_p) + sum_{p~q} w_pq [L_p != L_q] with the seeds as hard
    constraints; ``weights`` as :func:`convvis.segmentation.pairwise_weights` returns them.
    """
    _check("check_graph_cut", fn)


def _diagnose_graph_cut(case: dict, ref: dict, out) -> None:
    cost_fg, cost_bg, weights = case["cost_fg"], case["cost_bg"], case["weights"]
    fg, bg = np.asarray(case["fg_seeds"]), np.asarray(case["bg_seeds"])
    if isinstance(out, Returned) or isinstance(out, (tuple, list)) and not all(
            isinstance(o, (np.ndarray, torch.Tensor, bool, int, float)) for o in out):
        raise CheckFailed(f"your graph cut returned {_type_name(out)}; expected an (H,W) boolean mask")
    mask = np.asarray(out.numpy() if isinstance(out, torch.Tensor) else out)
    if mask.shape != cost_fg.shape:
        raise CheckFailed(f"the mask has shape {mask.shape}; expected {cost_fg.shape}")
    if mask.dtype.hasobject or not (mask.dtype == bool or np.issubdtype(mask.dtype, np.number)):
        raise CheckFailed(f"the mask has dtype {mask.dtype}; expected a boolean mask")
    best, e_best = ref["best"], ref["e_best"]
    if mask.dtype != bool:
        _degenerate(mask, best, "the mask")
    mask = mask.astype(bool)
    if not mask.any() or mask.all():
        raise CheckFailed(f"the mask is {bool(mask.flat[0])} everywhere (a constant): "
                          f"{'no pixel is' if not mask.any() else 'every pixel is'} foreground")
    if np.array_equal(mask, best):
        return
    e = graph_cut_energy(mask, cost_fg, cost_bg, weights)
    if np.array_equal(~mask, best) or (mask[bg].all() and not mask[fg].any()):
        raise CheckFailed("the labels are inverted: True must mean foreground (in PyMaxflow, "
                          "get_grid_segments is True on the sink side, so the sink capacity is the "
                          "cost of labelling a pixel background)")
    unary_only = np.where(fg, True, np.where(bg, False, cost_fg < cost_bg))
    free = ~(fg | bg)
    r = np.corrcoef(mask[free], best[free])[0, 1] if mask[free].std() and best[free].std() else 1.0
    if abs(r) < _UNRELATED and not np.array_equal(mask, unary_only):
        raise CheckFailed(f"the mask is unrelated to the minimum-energy labelling (correlation {r:+.2f} "
                          "with it away from the seeds), as a random mask would be")
    if not mask[fg].all() or mask[bg].any():
        raise CheckFailed(f"hard seeds not respected: {int((~mask[fg]).sum())} foreground seed(s) "
                          f"labelled background, {int(mask[bg].sum())} background seed(s) foreground")
    if e > e_best + 1e-6 * max(1.0, abs(e_best)):
        e_unary = graph_cut_energy(mask, cost_fg, cost_bg, [0 * x for x in weights])
        if np.array_equal(mask, unary_only):
            raise CheckFailed("the mask ignores the pairwise term: each pixel takes its cheaper unary "
                              "cost; add the neighbour edges with the given weights")
        raise CheckFailed(f"not a minimum: your labelling has energy {e:.4f}, the minimum is "
                          f"{e_best:.4f} (unary part {e_unary:.4f}); check which terminal pays which "
                          "cost and that all four neighbour directions are added, symmetrically")
    # another labelling of the same (minimum) energy: a tie, accepted


# ---- chapter 5: the rectifier's backward rules ------------------------------------------------


def check_relu_rule(fn: Callable) -> None:
    """``fn(x, grad, rule) -> R_n``: the signal a ReLU passes backwards, for rule in
    "gradient" (grad * 1(x > 0)), "deconvnet" (grad * 1(grad > 0)), "guided" (both gates).
    """
    _check("check_relu_rule", fn)


def _diagnose_relu_rule(case: dict, ref: dict, out) -> None:
    x, grad, rule = torch.from_numpy(np.asarray(case["x"])), torch.from_numpy(np.asarray(case["grad"])), \
        str(case["rule"])
    want = ref["want"]
    expected = want[rule]
    out = _as_tensor(out, f"your rule {rule!r}").float()
    if out.shape != expected.shape:
        raise CheckFailed(f"rule {rule!r} returned shape {tuple(out.shape)}; "
                          f"expected {tuple(expected.shape)}")
    if torch.equal(out, expected):
        return
    _degenerate(out, expected, f"the signal returned for rule {rule!r}")
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
    _unrelated(out, expected, f"the signal returned for rule {rule!r}", "the expected signal")
    raise CheckFailed(f"rule {rule!r} differs from the expected signal at "
                      f"{int((out != expected).sum())} of {expected.numel()} units")


_DIAGNOSE = {"saliency": _diagnose_saliency, "class_model_step": _diagnose_class_model_step,
             "seeds": _diagnose_seeds, "graph_cut": _diagnose_graph_cut, "relu_rule": _diagnose_relu_rule}
