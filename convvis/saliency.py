"""Image-specific class saliency maps (paper Sect. 3.1) and the later methods the book compares.

The paper's map: w = dS_c/dI at the image (one backward pass, chapter 1's ``input_gradient``), then

* grey image:   M_ij = |w_h(i,j)|
* colour image: M_ij = max_c |w_h(i,j,c)|                                   (paper, Sect. 3.1)

The maximum over channels is the paper's rule; several libraries' visualisers sum over channels
instead, which ``reduce="sum"`` reproduces for comparison.

Later methods, each a few lines on the same machinery: SmoothGrad (Smilkov et al. 2017), Integrated
Gradients (Sundararajan et al. 2017), gradient x input (Shrikumar et al. 2016), Grad-CAM (Selvaraju
et al. 2017).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .common import Target, as_module, check_eval_mode, check_image, score_gradient, scores_and_targets
from .gradients import input_gradient

__all__ = [
    "REDUCTIONS",
    "reduce_channels",
    "saliency_map",
    "smoothgrad",
    "integrated_gradients",
    "gradient_x_input",
    "grad_cam",
    "last_conv_layer",
    "fixed_targets",
]

#: How a method turns the (N,C,H,W) gradient-like tensor w into what it returns, everywhere in
#: convvis: ``"max"`` = max_c |w_c| (the paper's rule, (N,H,W)); ``"sum"`` = sum_c |w_c| ((N,H,W));
#: ``"abs"`` = |w| per channel ((N,C,H,W)); ``"signed"`` = w itself ((N,C,H,W)).
REDUCTIONS = ("max", "sum", "abs", "signed")


def _check_reduce(reduce) -> None:
    if reduce in REDUCTIONS:
        return
    if reduce is None or reduce == "none":
        raise ValueError(
            f"reduce={reduce!r} is not a reduction: use 'abs' for |w| per channel or 'signed' for w "
            f"itself (one of {REDUCTIONS})"
        )
    raise ValueError(f"reduce must be one of {REDUCTIONS}, not {reduce!r}")


def reduce_channels(w: torch.Tensor, reduce: str = "max") -> torch.Tensor:
    """Reduce an (N,C,H,W) gradient-like tensor ``w`` over its colour channels.

    ``"max"``: max_c |w_c|, (N,H,W), the paper's rule (Sect. 3.1); ``"sum"``: sum_c |w_c|, (N,H,W);
    ``"abs"``: |w|, (N,C,H,W); ``"signed"``: ``w`` unchanged. All but ``"signed"`` are >= 0.
    """
    _check_reduce(reduce)
    if w.ndim != 4:
        raise ValueError(f"expected (N,C,H,W), got {tuple(w.shape)}")
    if reduce == "signed":
        return w
    a = w.abs()
    if reduce == "max":
        return a.amax(dim=1)
    if reduce == "sum":
        return a.sum(dim=1)
    return a


def saliency_map(
    model: nn.Module,
    image: torch.Tensor,
    target: Target = None,
    reduce: str = "max",
) -> torch.Tensor:
    """The paper's image-specific class saliency map.

    Parameters
    ----------
    model:
        Eval-mode classifier giving unnormalised scores.
    image:
        (N,C,H,W) normalised batch.
    target:
        One class (index or name such as ``"tabby"``) for all, one per image, or ``None`` for
        each image's top-1 class.
    reduce:
        ``"max"`` over channels of |w| (the paper's rule, default), ``"sum"``, ``"abs"`` or
        ``"signed"`` (see :data:`REDUCTIONS`).

    Returns
    -------
    torch.Tensor
        (N,H,W) for ``"max"``/``"sum"``, (N,C,H,W) for ``"abs"``/``"signed"``; in the units of
        dS_c/dI (score per unit of normalised input), non-negative except for ``"signed"``. One
        forward and one backward pass.
    """
    _check_reduce(reduce)  # fail before the backward pass
    return reduce_channels(input_gradient(model, image, target), reduce)


def fixed_targets(model, image: torch.Tensor, target: Target) -> torch.Tensor:
    """``target`` resolved once on the clean image, (N,), so that noisy, scaled or randomised copies
    explain the same classes (``None``: each image's top-1 class on ``image``)."""
    with torch.no_grad():
        return scores_and_targets(model, image, target)[1]


def smoothgrad(
    model: nn.Module,
    image: torch.Tensor,
    target: Target = None,
    *,
    samples: int = 25,
    noise: float = 0.15,
    reduce: str = "max",
    batch_size: int = 8,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """SmoothGrad: the average of the gradient over noisy copies of the image, then reduced.

    ``noise`` is the Gaussian standard deviation as a fraction of the image's value range
    (max - min), Smilkov et al.'s recommendation being 0.1-0.2. Gradients are averaged *with* their
    sign, and the absolute value is taken afterwards by ``reduce`` (as for the paper's map).
    Returns (N,H,W) (or (N,C,H,W) for ``"abs"``/``"signed"``). ``progress`` shows a bar over the
    batches of noisy copies.
    """
    _check_reduce(reduce)
    t = fixed_targets(model, image, target)
    total = torch.zeros_like(image)
    span = (image.amax(dim=(1, 2, 3)) - image.amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)
    sigma = noise * span
    n = image.shape[0]
    # noisy copies of every image, processed in batches of about `batch_size`
    for start in tqdm(range(0, samples, max(1, batch_size // n)), desc="SmoothGrad", disable=not progress,
                      leave=False):
        k = min(max(1, batch_size // n), samples - start)
        eps = torch.randn((k, *image.shape), generator=generator, device="cpu").to(image.device, image.dtype)
        noisy = (image[None] + sigma[None] * eps).reshape(k * n, *image.shape[1:])
        g = input_gradient(model, noisy, t.repeat(k))
        total += g.reshape(k, *image.shape).sum(dim=0)
    return reduce_channels(total / samples, reduce)


def integrated_gradients(
    model: nn.Module,
    image: torch.Tensor,
    target: Target = None,
    *,
    baseline: torch.Tensor | float = 0.0,
    steps: int = 32,
    reduce: str = "sum",
    batch_size: int = 8,
    progress: bool = False,
) -> torch.Tensor:
    """Integrated Gradients along the straight path from ``baseline`` to ``image``.

    Attribution ``(x - x') * mean_k dS_c/dI (x' + alpha_k (x - x'))`` with the midpoint rule over
    ``steps`` values of alpha. The default baseline 0 is the zero of the model's normalised input
    space: the colour ``mean`` of its preprocessing in every pixel (mid-grey for mean = 0.5, as for
    the embedded models). Completeness: the attributions of an image sum to about S_c(x) - S_c(x').

    ``reduce="signed"`` returns the signed (N,C,H,W) attributions; otherwise their absolute values
    are reduced over channels (``"sum"`` by default, as IG is usually shown). ``progress`` shows a
    bar over the batches of path points.
    """
    _check_reduce(reduce)
    t = fixed_targets(model, image, target)
    base = torch.as_tensor(baseline, dtype=image.dtype, device=image.device).expand_as(image)
    alphas = (torch.arange(steps, dtype=image.dtype, device=image.device) + 0.5) / steps
    total = torch.zeros_like(image)
    n = image.shape[0]
    per = max(1, batch_size // n)
    for start in tqdm(range(0, steps, per), desc="Integrated Gradients", disable=not progress, leave=False):
        a = alphas[start : start + per].view(-1, 1, 1, 1, 1)
        path = (base[None] + a * (image - base)[None]).reshape(-1, *image.shape[1:])
        g = input_gradient(model, path, t.repeat(a.shape[0]))
        total += g.reshape(a.shape[0], *image.shape).sum(dim=0)
    attributions = (image - base) * total / steps
    return reduce_channels(attributions, reduce)


def gradient_x_input(
    model: nn.Module, image: torch.Tensor, target: Target = None, reduce: str = "sum"
) -> torch.Tensor:
    """w * I reduced over channels (default ``"sum"`` of |w * I|): the gradient weighted by the input."""
    _check_reduce(reduce)
    return reduce_channels(input_gradient(model, image, target) * image, reduce)


@torch.no_grad()
def last_conv_layer(model: nn.Module, image_size: int = 224) -> str:
    """Name of the last module whose output is a 4-D feature map (the usual Grad-CAM layer).

    Found by tracing one forward pass of a zero image with temporary forward hooks (removed on
    exit). For EfficientNet-Lite0 this is ``"bn2.act"``, the 1280 x 7 x 7 map after the head's
    ReLU6.
    """
    module = as_module(model)
    check_eval_mode(module)  # the tracing pass must not update batch-norm statistics
    seen: list[str] = []

    def record(name):
        def hook(mod, args, out):
            # a spatial map, not the 1x1 output of a global pool
            if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1:
                seen.append(name)

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in module.named_modules()
               if n and not list(m.children())]
    try:
        p = next(module.parameters())
        module(torch.zeros(1, 3, image_size, image_size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError("the model produces no 4-D feature map")
    return seen[-1]


def grad_cam(
    model: nn.Module,
    image: torch.Tensor,
    target: Target = None,
    layer: str | None = None,
) -> torch.Tensor:
    """Grad-CAM: ReLU(sum_k alpha_k A_k), alpha_k the spatial mean of dS_c/dA_k; upsampled.

    ``layer`` names a module of the model (default: :func:`last_conv_layer`). Returns (N,H,W)
    non-negative maps at the input resolution (bilinear upsampling). The forward hook that reads
    the feature map is removed on exit, also when the forward or backward pass raises.
    """
    module = as_module(model)
    check_eval_mode(module)
    check_image(image, module)
    name = layer or last_conv_layer(module, image.shape[-1])
    grads, _, _, feats = score_gradient(model, image, target, layer=name)
    if feats.ndim != 4:
        raise ValueError(f"layer {name!r} outputs shape {tuple(feats.shape)}, not a (N,K,h,w) feature map")
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((alpha * feats).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return cam[:, 0]
