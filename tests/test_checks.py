"""Exercise checkers: the chapters' solutions pass; typical wrong answers fail with the right message."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from convvis import checks
from convvis.assignments import BEGIN, teacher_source
from convvis.checks import CheckFailed

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"


def solution(name):
    """The reference solution ``name`` as written in a chapter's marked cell."""
    for nb in sorted(CHAPTERS.glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "code" and BEGIN in src and f"def {name}(" in src:
                ns = {"np": np, "torch": torch}
                exec(teacher_source(src), ns)
                return ns[name]
    raise LookupError(f"no chapter defines {name}")


# ---- the references pass ---------------------------------------------------------------------------


@pytest.mark.parametrize("checker, name", [
    (checks.check_saliency, "my_saliency"),
    (checks.check_class_model_step, "class_model_step"),
    (checks.check_seeds, "my_seeds"),
    (checks.check_graph_cut, "my_graph_cut"),
    (checks.check_relu_rule, "my_relu_backward"),
])
def test_the_chapters_solutions_pass(checker, name, capsys):
    checker(solution(name))
    assert "checks passed" in capsys.readouterr().out


def test_the_library_passes_its_own_checks(monkeypatch):
    from convvis.deconvnet import relu_backward
    from convvis.saliency import saliency_map
    from convvis.segmentation import graph_cut, seeds_from_saliency

    monkeypatch.setattr(checks, "_library_solutions", lambda exercise: {})  # allow the hand-off
    checks.check_saliency(lambda m, x, t: saliency_map(m, x, t)[0])
    checks.check_seeds(seeds_from_saliency)
    checks.check_graph_cut(graph_cut)
    checks.check_relu_rule(lambda x, g, rule: relu_backward(x, g, rule))


# ---- calling the library is not a solution ---------------------------------------------------------


def _handoffs():
    from convvis import deconvnet, saliency, segmentation
    from convvis.deconvnet import backprop_rule, relu_backward
    from convvis.gradients import input_gradient
    from convvis.saliency import saliency_map

    def relu_through_the_rule_context(x, g, rule):  # reaches relu_backward inside autograd
        act = torch.nn.ReLU()
        with backprop_rule(act, rule):
            xi = x.clone().requires_grad_(True)
            return torch.autograd.grad(act(xi), xi, g)[0]

    def seeds_after_a_copy(s, fq, bq):  # an exception inside the library still names the hand-off
        return segmentation.seeds_from_saliency(np.zeros_like(s), fq, bq)

    return [
        (checks.check_saliency, lambda m, x, t: saliency_map(m, x, t)[0], "saliency.saliency_map"),
        (checks.check_saliency, lambda m, x, t: saliency.saliency_map(m, x, t)[0], "saliency_map"),
        (checks.check_saliency, lambda m, x, t: input_gradient(m, x, t)[0].abs().amax(0), "input_gradient"),
        (checks.check_saliency, lambda m, x, t: saliency.reduce_channels(input_gradient(m, x, t))[0],
         "input_gradient"),
        (checks.check_class_model_step,
         lambda m, x, t, lr, lam: x + lr * (input_gradient(m, x, t) - 2 * lam * x), "input_gradient"),
        (checks.check_seeds, segmentation.seeds_from_saliency, "seeds_from_saliency"),
        (checks.check_seeds, lambda s, fq, bq: tuple(
            segmentation._extreme(s.ravel(), k, big).reshape(s.shape)
            for k, big in ((round((1 - fq) * s.size), True), (round(bq * s.size), False))), "_extreme"),
        (checks.check_seeds, seeds_after_a_copy, "seeds_from_saliency"),
        (checks.check_graph_cut, segmentation.graph_cut, "segmentation.graph_cut"),
        (checks.check_graph_cut, lambda *a: ~segmentation.graph_cut(*a), "segmentation.graph_cut"),
        (checks.check_relu_rule, lambda x, g, rule: relu_backward(x, g, rule), "relu_backward"),
        (checks.check_relu_rule, lambda x, g, rule: deconvnet.relu_backward(x, g, rule), "relu_backward"),
        (checks.check_relu_rule, relu_through_the_rule_context, "_Rectify.backward"),
    ]


@pytest.mark.parametrize("k", range(13))
def test_handing_the_exercise_to_the_library_fails(k):
    import sys

    checker, fn, name = _handoffs()[k]
    with pytest.raises(CheckFailed, match=rf"calls convvis\.\S*{name}, convvis's own answer"):
        checker(fn)
    assert sys.getprofile() is None  # the watcher is removed


def test_the_table_of_library_solutions_names_real_functions():
    for exercise in ("saliency", "class_model_step", "seeds", "graph_cut", "relu_rule"):
        names = checks._library_solutions(exercise).values()
        assert names and all(n.startswith("convvis.") for n in names)


def test_a_profiler_already_running_is_put_back(capsys):
    import sys

    def mine(frame, event, arg):
        pass

    sys.setprofile(mine)
    try:
        checks.check_relu_rule(solution("my_relu_backward"))
        assert sys.getprofile() is mine
    finally:
        sys.setprofile(None)


# ---- typical wrong answers -------------------------------------------------------------------------


def _grad(model, image, target, prob=False):
    x = image.detach().clone().requires_grad_(True)
    out = model(x)
    if prob == "log":
        s = out.log_softmax(1)[0, target]
    else:
        s = out.softmax(1)[0, target] if prob else out[0, target]
    return torch.autograd.grad(s, x)[0][0]


def sal_per_channel(model, image, target):
    return _grad(model, image, target).abs()


def sal_sum(model, image, target):
    return _grad(model, image, target).abs().sum(0)


def sal_no_abs(model, image, target):
    return _grad(model, image, target).amax(0)


def sal_softmax(model, image, target):
    return _grad(model, image, target, prob=True).abs().amax(0)


def sal_wrong_class(model, image, target):
    return _grad(model, image, (target + 1) % 5).abs().amax(0)


def sal_backward_on_params(model, image, target):
    x = image.detach().clone().requires_grad_(True)
    model(x)[0, target].backward()  # leaves .grad on every parameter
    return x.grad[0].abs().amax(0)


def sal_leaves_a_hook(model, image, target):
    model[0].register_forward_hook(lambda m, i, o: None)
    return _grad(model, image, target).abs().amax(0)


def sal_freezes_params(model, image, target):
    for p in model.parameters():
        p.requires_grad_(False)
    return _grad(model, image, target).abs().amax(0)


def sal_in_place(model, image, target):
    image.requires_grad_(True)
    g = torch.autograd.grad(model(image)[0, target], image)[0][0]
    image.requires_grad_(False)
    image.mul_(1.0001)
    return g.abs().amax(0)


@pytest.mark.parametrize("wrong, message", [
    (sal_per_channel, "one value per colour channel"),
    (sal_sum, "summed"),
    (sal_no_abs, "absolute value"),
    (lambda m, i, t: _grad(m, i, t).amax(0).abs(), "absolute value after the maximum"),
    (lambda m, i, t: _grad(m, i, t).sum(0).abs(), "signed gradient"),
    (lambda m, i, t: _grad(m, i, t).abs().mean(0), "averaged"),
    (lambda m, i, t: _grad(m, i, t).mean(0).abs(), "averaged"),
    (lambda m, i, t: _grad(m, i, t).abs().amax(0) / _grad(m, i, t).abs().amax(), r"rescaled to \[0, 1\]"),
    (lambda m, i, t: (lambda a: (a - a.min()) / (a.max() - a.min()))(_grad(m, i, t).abs().amax(0)),
     r"rescaled to \[0, 1\]"),
    (lambda m, i, t: _grad(m, i, t, prob="log").abs().amax(0), "log-softmax"),
    (lambda m, i, t: _grad(m, i, t).abs().amax(1), "spatial axis"),
    (lambda m, i, t: (_grad(m, i, t) ** 2).amax(0), "squared"),
    (lambda m, i, t: (_grad(m, i, t) * i[0]).abs().amax(0), "gradient x input"),
    (sal_softmax, "softmax probability"),
    (sal_wrong_class, "another class"),
    (sal_backward_on_params, r"accumulated \.grad"),
    (sal_leaves_a_hook, "hook"),
    (sal_freezes_params, "requires_grad"),
    (sal_in_place, "in place"),
])
def test_saliency_mistakes_are_named(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checks.check_saliency(wrong)


def _step(model, image, target, lr, lam, sign=1, reg=2.0, prob=False):
    g = _grad(model, image, target, prob)[None]
    return image + sign * lr * (g - reg * lam * image)


@pytest.mark.parametrize("wrong, message", [
    (lambda m, i, t, lr, lam: _step(m, i, t, lr, lam, sign=-1), "downhill"),
    (lambda m, i, t, lr, lam: _step(m, i, t, lr, lam, reg=0.0), "regulariser is missing"),
    (lambda m, i, t, lr, lam: _step(m, i, t, lr, lam, reg=1.0), "2 lam I, not lam I"),
    (lambda m, i, t, lr, lam: _step(m, i, t, lr, lam, reg=-2.0), "wrong sign"),
    (lambda m, i, t, lr, lam: _step(m, i, t, lr, lam, prob=True), "softmax probability"),
    (lambda m, i, t, lr, lam: _step(m, i, t, lr, lam)[0], "shape"),
])
def test_class_model_step_mistakes_are_named(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checks.check_class_model_step(wrong)


@pytest.mark.parametrize("wrong, message", [
    (lambda s, fq, bq: (s < np.quantile(s, bq), s > np.quantile(s, fq)), "swapped"),
    (lambda s, fq, bq: (s < np.quantile(s, fq), s < np.quantile(s, bq)), r"\*above\*"),
    (lambda s, fq, bq: (s > np.quantile(s, fq), s > np.quantile(s, bq)), "swapped|below"),
    (lambda s, fq, bq: ((s > np.quantile(s, fq)).astype(int), s < np.quantile(s, bq)), "boolean"),
    (lambda s, fq, bq: s > np.quantile(s, fq), r"pair \(fg, bg\)"),
    (lambda s, fq, bq: (s > np.percentile(s, fq), s < np.percentile(s, bq)), "takes a percentage"),
    (lambda s, fq, bq: (s > np.quantile(s, fq), s < np.percentile(s, bq)), "takes a percentage"),
    (lambda s, fq, bq: (s > fq, s < bq), "quantile level itself"),
    (lambda s, fq, bq: (s > np.quantile(s, fq), s < bq), "quantile level itself"),
    (lambda s, fq, bq: (np.nonzero(s > np.quantile(s, fq)), np.nonzero(s < np.quantile(s, bq))), "indices"),
])
def test_seed_mistakes_are_named(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checks.check_seeds(wrong)


def _cut(cost_fg, cost_bg, weights, fg, bg):
    """A student's graph cut with PyMaxflow (the chapter's solution), for building wrong ones."""
    return solution("my_graph_cut")(cost_fg, cost_bg, weights, fg, bg)


def cut_inverted(cost_fg, cost_bg, weights, fg, bg):
    return ~_cut(cost_fg, cost_bg, weights, fg, bg)


def cut_unary_only(cost_fg, cost_bg, weights, fg, bg):
    return np.where(fg, True, np.where(bg, False, cost_fg < cost_bg))


def cut_ignores_seeds(cost_fg, cost_bg, weights, fg, bg):
    return _cut(cost_fg, cost_bg, weights, np.zeros_like(fg), np.zeros_like(bg))


def cut_two_directions_only(cost_fg, cost_bg, weights, fg, bg):
    return _cut(cost_fg, cost_bg, [weights[0], weights[1], 0 * weights[2], 0 * weights[3]], fg, bg)


@pytest.mark.parametrize("wrong, message", [
    (cut_inverted, "inverted"),
    (cut_unary_only, "ignores the pairwise term"),
    (cut_ignores_seeds, "seeds not respected"),
    (cut_two_directions_only, "not a minimum"),
])
def test_graph_cut_mistakes_are_named(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checks.check_graph_cut(wrong)


RULES = {
    "gradient": lambda x, g: g * (x > 0),
    "deconvnet": lambda x, g: g.clamp(min=0),
    "guided": lambda x, g: g.clamp(min=0) * (x > 0),
}


def rule_with(**override):
    table = {**RULES, **override}
    return lambda x, g, rule: table[rule](x, g)


@pytest.mark.parametrize("wrong, message", [
    (rule_with(deconvnet=RULES["gradient"]), "you computed the 'gradient' rule"),
    (rule_with(guided=RULES["deconvnet"]), "you computed the 'deconvnet' rule"),
    (rule_with(gradient=lambda x, g: x.clamp(min=0)), "forward signal"),
    (rule_with(gradient=lambda x, g: g * (x < 0)), "inverted"),
    (rule_with(guided=lambda x, g: g.clamp(min=0) * (x > 0.5)), "differs"),
    (rule_with(gradient=lambda x, g: g * (x >= 0)), r"1\(x > 0\), strictly"),
    (rule_with(guided=lambda x, g: g.clamp(min=0) * (x >= 0)), r"1\(x > 0\), strictly"),
    (rule_with(gradient=lambda x, g: (x > 0).float()), "returned the gate"),
    (rule_with(deconvnet=lambda x, g: g), "unchanged"),
])
def test_relu_rule_mistakes_are_named(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        checks.check_relu_rule(wrong)


# ---- degenerate answers say what they are, and name no mistake they did not make ------------------

_NAMED = ("softmax", "summed", "averaged", "squared", "rescaled", "gradient x input", "another class",
          "downhill", "regulariser", "swapped", "inverted", "quantile level", "percentage", "pairwise",
          "forward signal", "the gate", "computed the", "indices", "absolute value")


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


_H, _W = 10, 12  # the graph cut fixture's size
DEGENERATE = [
    # (checker, answer, what the message must say it is)
    (checks.check_saliency, lambda m, x, t: torch.zeros(8, 8), "all zeros"),
    (checks.check_saliency, lambda m, x, t: torch.full((8, 8), 0.3), "constant"),
    (checks.check_saliency, lambda m, x, t: _rand(8, 8), "random"),
    (checks.check_saliency, lambda m, x, t: _randn(8, 8), "random"),
    (checks.check_saliency, lambda m, x, t: torch.zeros(5, 7), r"shape \(5, 7\)"),
    (checks.check_class_model_step, lambda m, x, t, lr, lam: torch.zeros_like(x), "all zeros"),
    (checks.check_class_model_step, lambda m, x, t, lr, lam: torch.full_like(x, 0.5), "constant"),
    (checks.check_class_model_step, lambda m, x, t, lr, lam: _randn(*x.shape), "random"),
    (checks.check_class_model_step, lambda m, x, t, lr, lam: torch.zeros(3, 8), r"shape \(3, 8\)"),
    (checks.check_seeds, lambda s, fq, bq: (np.zeros(s.shape, bool),) * 2, "False everywhere"),
    (checks.check_seeds, lambda s, fq, bq: (np.zeros(s.shape), np.zeros(s.shape)), "all zeros"),
    (checks.check_seeds, lambda s, fq, bq: (np.full(s.shape, 2.0), np.full(s.shape, 2.0)), "constant"),
    (checks.check_seeds, lambda s, fq, bq: (np.ones(s.shape, bool), s < 0), "True everywhere"),
    (checks.check_seeds, lambda s, fq, bq: tuple(np.random.default_rng(k).random(s.shape) > 0.5
                                                 for k in (1, 2)), "random"),
    (checks.check_seeds, lambda s, fq, bq: tuple(np.random.default_rng(k).random(s.shape) for k in (1, 2)),
     "random"),
    (checks.check_seeds, lambda s, fq, bq: (np.zeros((4, 4), bool), np.zeros((4, 4), bool)), "shapes"),
    (checks.check_graph_cut, lambda cf, cb, w, f, b: np.zeros(cf.shape, bool), "False everywhere"),
    (checks.check_graph_cut, lambda cf, cb, w, f, b: np.zeros(cf.shape), "all zeros"),
    (checks.check_graph_cut, lambda cf, cb, w, f, b: np.full(cf.shape, 0.5), "constant"),
    (checks.check_graph_cut, lambda cf, cb, w, f, b: np.ones(cf.shape, bool), "True everywhere"),
    (checks.check_graph_cut, lambda cf, cb, w, f, b: np.random.default_rng(5).random(cf.shape) > 0.5,
     "random"),
    (checks.check_graph_cut, lambda cf, cb, w, f, b: np.zeros((_W, _H), bool), "shape"),
    (checks.check_relu_rule, lambda x, g, rule: torch.zeros_like(g), "all zeros"),
    (checks.check_relu_rule, lambda x, g, rule: torch.full_like(g, 0.7), "constant"),
    (checks.check_relu_rule, lambda x, g, rule: _randn(*g.shape, dtype=torch.float32), "random"),
    (checks.check_relu_rule, lambda x, g, rule: (_rand(*g.shape, dtype=torch.float32) > 0.5).float(),
     "random"),
    (checks.check_relu_rule, lambda x, g, rule: g[0], "shape"),
    (checks.check_relu_rule, lambda x, g, rule: g.new_full(g.shape, float("nan")), "NaN"),
]


@pytest.mark.parametrize("k", range(len(DEGENERATE)))
def test_degenerate_answers_are_named_for_what_they_are(k):
    import re

    checker, answer, what = DEGENERATE[k]
    with pytest.raises(CheckFailed) as e:
        checker(answer)
    message = str(e.value)
    print(message)
    assert re.search(what, message), message
    assert not any(name in message for name in _NAMED), message  # no mistake it did not make


def test_named_mistakes_and_degenerate_answers_are_apart_on_the_fixtures():
    """The tiny model's softmax is far from saturated, so its derivative is neither zero nor the score's;
    thresholds on the seed map's values select sets that are neither empty nor everything."""
    for exercise in ("saliency", "class_model_step"):
        fix = checks.fixture(exercise)
        model = checks.fixture_model(fix)
        for case in fix.cases:
            ref = checks.reference(fix, case, model)
            probs = model(torch.from_numpy(case["image"])).softmax(1)
            assert probs.max() < 0.9 and probs.min() > 1e-3, probs
            for named in (ref["gp"].abs().amax(0), ref["gl"].abs().amax(0)) if exercise == "saliency" else \
                    (ref["gp"],):
                assert not checks._close(named, torch.zeros_like(named))
                assert named.max() != named.min()
                right = ref["g"].abs().amax(0) if exercise == "saliency" else ref["g"]
                assert not checks._close(named, right)
    for case in checks.fixture("seeds").cases:
        s, fq, bq = case["saliency"], case["fg_quantile"], case["bg_quantile"]
        for mask in (s > fq, s < bq, s > np.quantile(s, fq / 100), s < np.quantile(s, bq / 100)):
            assert mask.any() and not mask.all()
    for case in checks.fixture("graph_cut").cases:
        best = checks.reference(checks.fixture("graph_cut"), case)["best"]
        assert best.any() and not best.all()


def test_the_same_diagnosis_serves_the_grader():
    """diagnose() is a pure function of (case, reference, output): it gives the in-notebook message."""
    fix = checks.fixture("relu_rule")
    case = fix.cases[1]  # deconvnet
    ref = checks.reference(fix, case)
    x, g = torch.from_numpy(case["x"]), torch.from_numpy(case["grad"])
    assert checks.diagnose("relu_rule", case, ref, g.clamp(min=0)) is None
    assert checks.diagnose("relu_rule", case, ref, g * (x > 0)) == "for rule 'deconvnet' you computed the " \
        "'gradient' rule"
    assert "returned Returned" not in checks.diagnose("relu_rule", case, ref, checks.Returned("NoneType"))
    assert "returned NoneType" in checks.diagnose("relu_rule", case, ref, checks.Returned("NoneType"))


def test_the_checkers_own_references_are_a_hand_off_too():
    """checks.reference and checks._grad compute the answers the grader compares with: calling them is
    handing the exercise over, like calling convvis's implementation."""
    def via_reference(x, g, rule):
        fix = checks.fixture("relu_rule")
        case = {"x": x.numpy(), "grad": g.numpy(), "rule": rule}
        return checks.reference(fix, case)["want"][rule]

    with pytest.raises(CheckFailed, match=r"calls convvis\.checks\.reference, convvis's own answer"):
        checks.check_relu_rule(via_reference)
    with pytest.raises(CheckFailed, match=r"calls convvis\.checks\._grad, convvis's own answer"):
        checks.check_saliency(lambda m, x, t: checks._grad(m, x, t).abs().amax(0))
